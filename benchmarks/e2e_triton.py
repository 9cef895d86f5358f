"""Sluice router + Triton vs direct tritonserver, side by side in one run, on the same model and server.

    .venv/bin/python benchmarks/e2e_triton.py [--seconds 8] [--concurrency 16] [--rounds 2]

One tritonserver (the nvidia-pytriton wheel's, python backend running onnxruntime) serves a skl2onnx
LogisticRegression (4 float features). Scenarios, each driven by `--concurrency` closed-loop clients sending one
row per request:

* ``direct_http``   — v2 REST JSON straight to tritonserver;
* ``direct_grpc``   — tritonclient.grpc.aio straight to tritonserver;
* ``router_http``   — the same v2 REST JSON to the Sluice router (standalone host process, `--variant-backend triton`),
  which forwards over gRPC with `TritonBackend`;
* ``backend_inproc`` — `TritonBackend` called in-process (no HTTP hop; it coalesces requests that arrive in the same
  event-loop turn into one Triton call), the floor of the router's overhead.

Scenarios run in interleaved rounds (A B C D A B C D ...) so background load hits all alike; the best round of each
counts. The headline is ``router_http / direct_http`` (goal >= 0.8). Because the load generator, the router and
tritonserver share this machine's cores, each result also carries the CPU milliseconds every process spent per
answered request (from /proc): what a request costs where, independent of how busy the machine was.

A second layout then repeats ``direct_http`` and ``router_http`` with tritonserver and this load generator pinned to
one core and the router to the other (``*_router_own_core``; skip with ``--no-router-core``): on a cluster the
router runs in its own pod with its own CPU, and this is the nearest two cores come to that. Triton and the client
get the same single core in both scenarios, so the ratio shows whether the router, given its own CPU, keeps up.
Results go to benchmarks/results/e2e_triton.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import answers, free_port, wait_for
from tests.support.traffic import logistic_onnx

from results_io import machine_text, now_utc, rerun_command, write_results
from sluice.serving.backends.triton import TritonBackend
from sluice.serving.tensors import InferRequest, Tensor
from sluice.serving.triton.repository import Flavour, ModelVersion, RepositorySpec, write_model
from sluice.serving.triton.server import TritonServer

MODEL = "lr"
RESULTS = Path(__file__).parent / "results" / "e2e_triton.json"


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        return answers(url)

    wait_for(url, ready, timeout_s)


def _cpu_seconds(pids: Callable[[], list[int]]) -> float:
    """user+system CPU seconds of live processes, from /proc (clock ticks); 0 for ones that vanished."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _group(pgid: int) -> Callable[[], list[int]]:
    """The processes of one process group (tritonserver and its python-backend stubs)."""

    def pids() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == pgid:
                        found.append(int(entry))
                except ProcessLookupError:
                    continue
        return found

    return pids


def _pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these processes onto `cpus` (threads they start later inherit it)."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


async def _drive(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> dict[str, float]:
    """Closed loop: `concurrency` workers call back to back for `seconds`; latencies of successful calls."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


async def _measure(
    args: argparse.Namespace, triton: TritonServer, router_url: str, router_pid: int
) -> dict[str, list[dict[str, float]]]:
    """Drive every scenario in interleaved rounds against the already running servers."""
    import aiohttp
    import tritonclient.grpc.aio as grpcclient

    x = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    assert triton.pid is not None
    triton_pgid = triton.pid  # started in its own session: its pid is the group id
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        def http_call(base: str) -> Callable[[], Awaitable[None]]:
            url = f"http://{base}/v2/models/{MODEL}/infer"

            async def call() -> None:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise RuntimeError(payload[:200])

            return call

        grpc = grpcclient.InferenceServerClient(triton.grpc_url)

        async def grpc_call() -> None:
            item = grpcclient.InferInput("X", [1, 4], "FP32")
            item.set_data_from_numpy(x)
            result = await grpc.infer(MODEL, [item])
            result.as_numpy("label")  # parse the answer, as the backend does
            result.as_numpy("probabilities")

        backend = TritonBackend(triton.grpc_url, MODEL, version="v1")
        request = InferRequest(inputs=(Tensor("X", x),))

        async def backend_call() -> None:
            await backend.infer(request)

        scenarios: dict[str, Callable[[], Awaitable[None]]] = {
            "direct_http": http_call(triton.http_url),
            "router_http": http_call(router_url),
            "direct_grpc": grpc_call,
            "backend_inproc": backend_call,
        }
        rounds: dict[str, list[dict[str, float]]] = {}
        try:
            for call in scenarios.values():  # warm every path once
                await _drive(call, args.concurrency, 1.0)
            meters = {"triton": _group(triton_pgid), "router": lambda: [router_pid]}
            layouts: list[tuple[str, list[str]]] = [("", list(scenarios))]
            if args.router_core and len(os.sched_getaffinity(0)) >= 2:
                layouts.append(("_router_own_core", ["direct_http", "router_http"]))
            for suffix, names in layouts:
                if suffix:
                    # As deployed: the router in its own pod with its own CPU. tritonserver and this load generator
                    # share one core in both scenarios; the router gets the other.
                    all_cpus = os.sched_getaffinity(0)
                    first, second = sorted(all_cpus)[:2]
                    _pin([os.getpid(), *meters["triton"]()], {first})
                    _pin([router_pid], {second})
                for _ in range(args.rounds):
                    for name in names:
                        key = name + suffix
                        before = {k: _cpu_seconds(m) for k, m in meters.items()}
                        client_before = time.process_time()
                        result = await _drive(scenarios[name], args.concurrency, args.seconds)
                        used = {k: _cpu_seconds(m) - before[k] for k, m in meters.items()}
                        used["client"] = time.process_time() - client_before
                        for k, seconds in used.items():  # CPU milliseconds each process spent per answered request
                            result[f"cpu_ms_per_req_{k}"] = round(1000 * seconds / max(result["requests"], 1), 3)
                        print(key, result, flush=True)
                        rounds.setdefault(key, []).append(result)
                if suffix:
                    _pin([os.getpid(), *meters["triton"](), router_pid], all_cpus)
        finally:
            await grpc.close()
            await backend.close()
    return rounds


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Start tritonserver and the router (its own process, `--variant-backend triton`), measure, always stop both."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        spec = RepositorySpec(
            model_name=MODEL,
            versions=(ModelVersion("v1", "file:model.onnx"),),
            flavour=Flavour.PYTHON,
            max_batch_size=32,
            max_queue_delay_us=args.queue_delay_us,
        )
        write_model(spec, root / "repo", {"v1": logistic_onnx(root / "model.onnx")})
        with TritonServer(root / "repo") as triton:
            config = {
                "model_name": MODEL,
                "variants": [{"name": "stable", "version": "v1", "uri": "file:model.onnx", "weight": 100,
                              "endpoint": triton.grpc_url}],
            }  # fmt: skip
            (root / "serving.json").write_text(json.dumps(config))
            port = free_port()
            router = subprocess.Popen(
                [sys.executable, "-m", "sluice.serving.host_standalone", "--config", str(root / "serving.json"),
                 "--port", str(port), "--variant-backend", "triton"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                _wait_http(f"http://127.0.0.1:{port}/v2/health/ready", router)
                rounds = asyncio.run(_measure(args, triton, f"127.0.0.1:{port}", router.pid))
            finally:
                router.terminate()
                try:
                    router.wait(10)
                except subprocess.TimeoutExpired:
                    router.kill()
                    router.wait(5)
    best = {name: max(results, key=lambda r: r["rps"]) for name, results in rounds.items()}
    return {
        "measured_at": now_utc(),
        "machine": machine_text(),
        "setup": {
            "model": "skl2onnx LogisticRegression, 4 float features, 1 row per request",
            "server": "tritonserver 2.51 (nvidia-pytriton wheel), python backend running onnxruntime, 1 CPU instance",
            "max_batch_size": 32,
            "max_queue_delay_us": args.queue_delay_us,
            "concurrency": args.concurrency,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "client": "aiohttp (v2 REST JSON) / tritonclient.grpc.aio, closed loop, one process",
        },
        "best": best,
        "rounds": rounds,
        "ratios": {
            "router_http_vs_direct_http": round(best["router_http"]["rps"] / best["direct_http"]["rps"], 3),
            **(
                {
                    "router_http_vs_direct_http_router_own_core": round(
                        best["router_http_router_own_core"]["rps"] / best["direct_http_router_own_core"]["rps"], 3
                    )
                }
                if "router_http_router_own_core" in best
                else {}
            ),
            "router_http_vs_direct_grpc": round(best["router_http"]["rps"] / best["direct_grpc"]["rps"], 3),
            "backend_inproc_vs_direct_grpc": round(best["backend_inproc"]["rps"] / best["direct_grpc"]["rps"], 3),
        },
        "cpu_ms_per_request": {
            "triton_direct_http": best["direct_http"]["cpu_ms_per_req_triton"],
            "triton_via_router": best["router_http"]["cpu_ms_per_req_triton"],
            "router": best["router_http"]["cpu_ms_per_req_router"],
            "client_http": best["direct_http"]["cpu_ms_per_req_client"],
        },
        "goal": "router_http_vs_direct_http >= 0.8",
    }


LABELS = {
    "direct_http": "v2 REST → tritonserver (shared cores)",
    "router_http": "v2 REST → Sluice router → gRPC → tritonserver (shared cores)",
    "direct_http_router_own_core": "v2 REST → tritonserver (Triton + client on one core)",
    "router_http_router_own_core": "v2 REST → Sluice router (own core) → tritonserver",
    "direct_grpc": "tritonclient.grpc.aio → tritonserver",
    "backend_inproc": "TritonBackend in-process (coalescing) → tritonserver",
}


def summary_rows(best: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per path (best round of each): the table of the benchmarks page."""
    return [
        {
            "path": LABELS.get(name, name),
            "req/s": r["rps"],
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "CPU ms/req triton": r["cpu_ms_per_req_triton"],
            "CPU ms/req router": r["cpu_ms_per_req_router"],
            "CPU ms/req client": r["cpu_ms_per_req_client"],
        }
        for name, r in best.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument(
        "--no-router-core",
        dest="router_core",
        action="store_false",
        help="skip the second layout (tritonserver and the load generator on one core, the router on another)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = _run(args)
    measured_at, machine = report.pop("measured_at"), report.pop("machine")
    command = rerun_command("e2e_triton.py")
    write_results(args.out, "e2e_triton", command, machine, summary_rows(report["best"]), report, measured_at)
    print(json.dumps({k: report[k] for k in ("best", "ratios", "cpu_ms_per_request")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
