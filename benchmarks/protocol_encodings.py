"""What the wire encoding costs a client of the router: tritonclient over REST with JSON tensors, over REST with the
binary tensor extension (its default), and over gRPC (its default, raw contents), at 1 and 512 rows per request.

    .venv/bin/python benchmarks/protocol_encodings.py [--requests 400] [--rows 1,512]

One process: the router (its own HttpServer and GrpcServer, one event loop in a thread) over an in-process
onnxruntime model (a 16-feature logistic regression), and one sequential client per case, in turns, so every case
sees the same machine state. Reported: client-observed latency p50/p99 per request and the request body size.
On a shared 2-core VM the absolute numbers are noisy; compare the cases of one run with each other.
Results: benchmarks/results/protocol_encodings.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.traffic import logistic_onnx

from sluice.serving.backends.onnx_inprocess import InProcessOnnxBackend
from sluice.serving.config import ServingConfig
from sluice.serving.grpcserver import GrpcServer
from sluice.serving.httpserver import HttpServer
from sluice.serving.router import Router

RESULTS = Path(__file__).parent / "results" / "protocol_encodings.json"
WIDTH = 16


def _router(model: Path) -> Router:
    config = ServingConfig.model_validate(
        {
            "model_name": "m",
            "variants": [{"name": "stable", "version": "v1", "uri": model.as_uri(), "weight": 100}],
            "batching": {"enabled": False},
        }
    )
    backend = InProcessOnnxBackend.for_variant(config.variants[0], config, model.parent)
    return Router(config, {"stable": backend})


class Servers:
    """The router's HttpServer and GrpcServer on one loop in a thread, as `sluice serve` runs them."""

    def __init__(self, router: Router) -> None:
        self.http = HttpServer.for_router(router, "127.0.0.1", 0)
        self.grpc = GrpcServer(self.http.app.plane, "127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        await self.http.start()
        await self.grpc.start()
        self.started.set()
        await self.stop.wait()
        await self.grpc.shutdown()
        await self.http.shutdown()

    def __enter__(self) -> Servers:
        self.thread.start()
        if not self.started.wait(60):
            raise RuntimeError("router did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def _cases(servers: Servers, x: np.ndarray) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (one request, its request body bytes)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    http = httpclient.InferenceServerClient(f"127.0.0.1:{servers.http.port}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{servers.grpc.port}")
    out: dict[str, tuple[Callable[[], Any], int]] = {}
    for binary in (False, True):
        item = httpclient.InferInput("X", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        body, _ = _get_inference_request([item], "", outputs, 0, False, False, 0, None, None)

        def call(item: Any = item, outputs: Any = outputs) -> Any:
            return http.infer("m", [item], outputs=outputs)

        out["REST, binary tensors (default)" if binary else "REST, JSON tensors"] = (call, len(body))
    g_item = grpcclient.InferInput("X", list(x.shape), "FP32")
    g_item.set_data_from_numpy(x)
    request_bytes = len(
        grpcclient._utils._get_inference_request(
            "m", [g_item], "", "", None, 0, False, False, 0, None, None
        ).SerializeToString()
    )
    out["gRPC (default)"] = (lambda: grpc.infer("m", [g_item]), request_bytes)
    return out


def run(requests: int, rows: list[int]) -> dict[str, Any]:
    summary: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = logistic_onnx(Path(tmp) / "m.onnx", width=WIDTH)
        with Servers(_router(model)) as servers:
            for n in rows:
                x = np.random.default_rng(n).normal(size=(n, WIDTH)).astype(np.float32)
                cases = _cases(servers, x)
                for call, _ in cases.values():  # warm up connections and the model
                    for _ in range(20):
                        call()
                times: dict[str, list[float]] = {name: [] for name in cases}
                for _ in range(requests):  # in turns: drift of the machine hits every case alike
                    for name, (call, _) in cases.items():
                        t0 = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - t0)
                for name, (_, size) in cases.items():
                    ms = np.array(times[name]) * 1000
                    summary.append(
                        {
                            "rows": n,
                            "client": name,
                            "request_bytes": size,
                            "p50_ms": round(float(np.percentile(ms, 50)), 3),
                            "p99_ms": round(float(np.percentile(ms, 99)), 3),
                        }
                    )
    return {
        "benchmark": "protocol_encodings",
        "command": f"python benchmarks/protocol_encodings.py --requests {requests} --rows {','.join(map(str, rows))}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs (shared VM), Python {platform.python_version()}",
        "summary": summary,
        "detail": {"model": f"logistic regression, {WIDTH} FP32 features, onnxruntime in-process, batching off"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per case and row count")
    parser.add_argument("--rows", default="1,512", help="comma-separated rows per request")
    args = parser.parse_args()
    result = run(args.requests, [int(r) for r in args.rows.split(",")])
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["summary"]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
