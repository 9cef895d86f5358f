"""What DriftPolicy feature binning adds to the router: 20 features + the prediction binned vs none, in one run.

    .venv/bin/python benchmarks/router_overhead.py --features [--seconds 4] [--rounds 3]

Two routers that differ only in `ServingConfig.drift` (none, or one profile of 20 numeric features with 9 edges each
plus the prediction's 9 edges) serve the same 20-feature ONNX LogisticRegression, measured side by side:

* in-process: `ProtocolEndpoints.infer` (JSON decode, routing, model, binning, encode) on one event loop with an in-loop
  onnxruntime backend, at batch 1 and 32, in interleaved blocks (none, features, none, ...); p50/p99 per side;
* beside them, a third router with outcomes on (each request records its request id and unit id in the store);
* binning alone: `FeatureCounts.observe` per request at batch 1 and 32;
* over HTTP: both routers as `sluice.serving.host_standalone` processes in front of one model server, open-loop
  load at `--rate`'s first rate, interleaved rounds; p50 per round (paired difference, median over rounds) and the
  router process's CPU ms per request from /proc.

On this shared 2-core VM HTTP latencies move by more than 0.1 ms between rounds, so the in-process and CPU figures
are the ones that resolve a 0.1 ms goal; the HTTP row shows the same thing end to end. Results:
benchmarks/results/router_overhead_features.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tests.support import free_port
from tests.support.traffic import logistic_onnx

from router_overhead import MODEL, cpu_s, wait_live

RESULTS = Path(__file__).parent / "results" / "router_overhead_features.json"
WIDTH = 20
EDGES = [
    round(float(e), 4) for e in np.quantile(np.random.default_rng(1).normal(size=10_000), np.linspace(0.1, 0.9, 9))
]
GOAL_MS = 0.1


def _config(drift: bool, endpoint: str | None = None, outcomes: bool = False) -> dict[str, Any]:
    variant: dict[str, Any] = {"name": "stable", "version": "1", "uri": "file://m.onnx", "weight": 100}
    if endpoint:
        variant["endpoint"] = endpoint
    cfg: dict[str, Any] = {"model_name": MODEL, "variants": [variant]}
    if outcomes:
        cfg.update(sticky_header="x-user", sticky_salt="bench", outcomes={"metrics": {"converted": "conversion"}})
    if drift:
        cfg["drift"] = [
            {
                "policy": "bench",
                "features": [{"input": "X", "column": c, "edges": EDGES} for c in range(WIDTH)],
                "prediction": {"edges": [round(0.1 * i, 1) for i in range(1, 10)]},
            }
        ]
    return cfg


def _body(batch: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(batch, WIDTH)).round(4)
    return json.dumps(
        {"inputs": [{"name": "X", "shape": [batch, WIDTH], "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()


class _OrtBackend:
    """onnxruntime called inline: the model's cost is the same on both sides and adds no thread-pool noise."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        from sluice.serving.tensors import ModelMetadata, TensorSpec

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.meta = ModelMetadata(
            MODEL,
            "1",
            "onnxruntime_onnx",
            (TensorSpec("X", "FP32", (-1, WIDTH)),),
            (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
        )

    async def infer(self, request: Any) -> Any:
        from sluice.serving.tensors import InferResponse, Tensor

        out = self.session.run(self.names, {t.name: t.data for t in request.inputs})
        return InferResponse(MODEL, "1", tuple(Tensor(n, np.asarray(v)) for n, v in zip(self.names, out, strict=True)))

    async def ready(self) -> bool:
        return True

    async def metadata(self) -> Any:
        return self.meta

    async def close(self) -> None:
        return None


def _stats(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


async def _in_process(path: Path, rounds: int, per_block: int) -> list[dict[str, Any]]:
    from sluice.serving.config import ServingConfig
    from sluice.serving.endpoints import ProtocolEndpoints
    from sluice.serving.router import Router
    from sluice.serving.scores import score_outputs
    from sluice.serving.tensors import InferRequest, Tensor

    planes = {
        name: ProtocolEndpoints(
            Router(ServingConfig.model_validate(_config(drift, outcomes=out)), {"stable": _OrtBackend(path)})
        )
        for name, drift, out in (("none", False, False), ("features", True, False), ("outcomes", False, True))
    }
    # Every request carries a unit id: with outcomes on, each one records its request id and its unit id.
    headers = {"content-type": "application/json", "x-user": "user-1"}
    rows: list[dict[str, Any]] = []
    for batch in (1, 32):
        raw = _body(batch)
        lat: dict[str, list[float]] = {k: [] for k in planes}
        for name, plane in planes.items():  # warm-up
            for _ in range(200):
                assert (await plane.infer(MODEL, None, raw, headers)).status == 200, name
        for rnd in range(rounds * 5):
            order = list(planes) if rnd % 2 == 0 else list(reversed(planes))  # no side always first
            for name in order:
                plane = planes[name]
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    await plane.infer(MODEL, None, raw, headers)
                    lat[name].append(time.perf_counter() - t0)
        none, feat = _stats(lat["none"]), _stats(lat["features"])
        rows.append(
            {
                "path": "in-process ProtocolEndpoints.infer",
                "batch": batch,
                "requests_per_side": len(lat["none"]),
                "p50_ms_none": none["p50_ms"],
                "p50_ms_features": feat["p50_ms"],
                "added_p50_ms": feat["p50_ms"] - none["p50_ms"],
                "added_p99_ms": feat["p99_ms"] - none["p99_ms"],
                "added_mean_ms": feat["mean_ms"] - none["mean_ms"],
            }
        )
        out = _stats(lat["outcomes"])
        rows.append(
            {
                "path": "in-process ProtocolEndpoints.infer, outcomes recorded (request + unit id)",
                "batch": batch,
                "requests_per_side": len(lat["outcomes"]),
                "p50_ms_none": none["p50_ms"],
                "p50_ms_outcomes": out["p50_ms"],
                "added_p50_ms_outcomes": out["p50_ms"] - none["p50_ms"],
                "added_mean_ms_outcomes": out["mean_ms"] - none["mean_ms"],
            }
        )
        # Binning alone, on the same request and the model's real outputs.
        counts = planes["features"].router.features
        x = np.asarray(json.loads(raw)["inputs"][0]["data"], dtype=np.float32).reshape(batch, WIDTH)
        backend = _OrtBackend(path)
        scored = score_outputs((await backend.infer(InferRequest(inputs=(Tensor("X", x),)))).outputs)
        inputs = (Tensor("X", x),)
        n = 5000
        t0 = time.perf_counter()
        for _ in range(n):
            counts.observe("1", "stable", inputs, scored)
        per_call = (time.perf_counter() - t0) / n * 1000
        rows.append({"path": "FeatureCounts.observe alone", "batch": batch, "mean_ms": per_call})
        print(json.dumps(rows[-3:]), flush=True)
    return rows


async def _rate(session: aiohttp.ClientSession, url: str, body: bytes, rate: float, seconds: float) -> list[float]:
    """Open loop at `rate` req/s; latency from the scheduled send time; fails on any non-200."""
    lat: list[float] = []

    async def one(scheduled: float) -> None:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}")
        lat.append(time.perf_counter() - scheduled)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return lat


async def _http_rounds(
    urls: dict[str, str], pids: dict[str, int], rate: float, seconds: float, rounds: int
) -> dict[str, Any]:
    body = _body(1)
    per_round: dict[str, list[float]] = {k: [] for k in urls}
    cpu = dict.fromkeys(urls, 0.0)
    served = dict.fromkeys(urls, 0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for url in urls.values():
            await _rate(session, url, body, rate, 1.0)  # warm-up
        for rnd in range(rounds):
            order = list(urls) if rnd % 2 == 0 else list(reversed(urls))
            for name in order:
                before = cpu_s(pids[name])
                lat = await _rate(session, urls[name], body, rate, seconds)
                cpu[name] += cpu_s(pids[name]) - before
                served[name] += len(lat)
                per_round[name].append(_stats(lat)["p50_ms"])
                print(f"round {rnd + 1} {name:9s} p50 {per_round[name][-1]:.3f} ms", flush=True)
    paired = [f - n for f, n in zip(per_round["features"], per_round["none"], strict=True)]
    return {
        "path": f"HTTP, router process, {rate:g} req/s",
        "batch": 1,
        "rounds": rounds,
        "p50_ms_none": float(np.median(per_round["none"])),
        "p50_ms_features": float(np.median(per_round["features"])),
        "added_p50_ms": float(np.median(paired)),
        "router_cpu_ms_per_request_none": cpu["none"] * 1000 / served["none"],
        "router_cpu_ms_per_request_features": cpu["features"] * 1000 / served["features"],
        "added_router_cpu_ms_per_request": cpu["features"] * 1000 / served["features"]
        - cpu["none"] * 1000 / served["none"],
    }


def _http(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    ports = {k: free_port() for k in ("model", "none", "features")}
    here = Path(__file__).with_name("router_overhead.py")
    try:
        procs.append(
            subprocess.Popen([sys.executable, str(here), "--model-server", str(ports["model"]), str(root / "m.onnx")])
        )
        endpoint = f"http://127.0.0.1:{ports['model']}"
        pids: dict[str, int] = {}
        for name in ("none", "features"):
            cfg = root / f"{name}.json"
            cfg.write_text(json.dumps(_config(name == "features", endpoint)))
            cmd = [
                sys.executable,
                "-m",
                "sluice.serving.host_standalone",
                "--config",
                str(cfg),
                "--port",
                str(ports[name]),
            ]
            procs.append(
                subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stderr=subprocess.DEVNULL)
            )
            pids[name] = procs[-1].pid
        for port in ports.values():
            wait_live(f"http://127.0.0.1:{port}/v2/health/live", procs)
        urls = {k: f"http://127.0.0.1:{ports[k]}/v2/models/{MODEL}/infer" for k in ("none", "features")}
        return asyncio.run(_http_rounds(urls, pids, args.rates[0], args.seconds, args.rounds))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def features_main(args: argparse.Namespace) -> int:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        logistic_onnx(root / "m.onnx", width=WIDTH)
        summary = asyncio.run(_in_process(root / "m.onnx", args.rounds, per_block=400))
        summary.append(_http(root, args))
    for row in summary:
        if row["path"] == "in-process ProtocolEndpoints.infer":
            row["goal_added_p50_ms"] = GOAL_MS
            row["goal_met"] = row["added_p50_ms"] <= GOAL_MS
        elif row["path"].startswith("HTTP"):
            row["note"] = (
                "end to end on a shared 2-core VM: round-to-round p50 moves by more than the 0.1 ms goal, so this "
                "row shows direction and CPU, the in-process rows decide the goal"
            )
    result = {
        "benchmark": "router_overhead_features",
        "command": "python benchmarks/router_overhead.py --features "
        f"--seconds {args.seconds:g} --rounds {args.rounds} --rate {args.rates[0]:g}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, shared VM, "
        f"load {os.getloadavg()[0]:.2f} at the end",
        "setup": {
            "features": WIDTH,
            "edges_per_feature": len(EDGES),
            "prediction_edges": 9,
            "model": f"LogisticRegression, {WIDTH} float inputs (onnxruntime, 1 thread)",
        },
        "summary": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0
