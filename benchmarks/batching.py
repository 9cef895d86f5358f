"""Throughput at concurrency 16 with vs without dynamic batching, same model, same run, side by side.

    .venv/bin/python benchmarks/batching.py [--seconds 12] [--width 2048] [--layers 8,16,32]

Models: random-weight ONNX MLPs (4 -> width x layers Gemm+ReLU -> softmax 2, built by
manifests/examples/models/make_models.py:make_mlp), where one call on 16 rows costs far less than 16 calls on one
row; three depths by default, because on Ray the gain is capped by Ray's own per-request path (~100-130 req/s for
any Serve app on this 2-core machine, see e2e_ray.py) and shows fully only once the model is slower than that.
Two hosts: Sluice on a local Ray Serve (ingress + model deployment with Sluice's DynamicBatcher) and the
in-process backend (router + the same batcher). Writes benchmarks/results/batching.json.

Ray starts its workers at nice 15; here they would then lose the CPU to this load generator (nice 0) and to
anything else on a shared machine, so the benchmark starts Ray with RAY_worker_niceness=0 (see `fair_ray_priority`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "manifests" / "examples" / "models"))

import make_models  # noqa: E402
import traffic  # noqa: E402

from results_io import machine_text, rerun_command, write_results  # noqa: E402
from sluice.serving.config import ServingConfig  # noqa: E402
from sluice.serving.launch import start_data_plane  # noqa: E402

CONCURRENCY = 16


RAY_NICENESS_ENV = "RAY_worker_niceness"  # Ray's own spelling


def fair_ray_priority() -> None:
    """Ray workers at the load generator's priority (Ray's default nice 15 starves them on a shared 2-core box)."""
    os.environ.setdefault(RAY_NICENESS_ENV, "0")


async def load(
    url: str, body: dict[str, Any], *, seconds: float, concurrency: int = CONCURRENCY, warmup_s: float = 2.0
) -> dict[str, Any]:
    """Closed loop: `concurrency` keep-alive clients POST `body` for warm-up + `seconds`; only the latter counts."""
    import aiohttp

    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"content-type": "application/json"}, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def client() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=payload) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if ok:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
    }


def config(model_uri: str, batching: bool, max_batch_size: int = 16) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "model_name": "mlp",
            "variants": [{"name": "stable", "version": "v1", "uri": model_uri, "weight": 100}],
            "batching": {"enabled": batching, "max_batch_size": max_batch_size, "max_wait_ms": 2.0},
        }
    )


def body() -> dict[str, Any]:
    return traffic.v2_request(traffic.features(1, seed=7))


def measure(backend: str, model_uri: str, base_dir: Path, seconds: float) -> dict[str, Any]:
    """Batched, then unbatched. Ray: one Ray start, the app rebuilt in between (batching is in the app's args).
    In-process: a fresh data plane per mode (the router keeps a backend whose file did not change)."""
    out: dict[str, Any] = {}
    plane = start_data_plane(config(model_uri, True), backend, base_dir, ready_timeout_s=300)  # type: ignore[arg-type]
    try:
        for name, batching in (("batched", True), ("unbatched", False)):
            if name == "unbatched":
                if backend == "ray":
                    plane.update(config(model_uri, batching))
                else:
                    plane.stop()
                    plane = start_data_plane(config(model_uri, batching), backend, base_dir)  # type: ignore[arg-type]
            url = f"{plane.url}/v2/models/mlp/infer"
            s0, c0 = _batch_totals(plane.metrics_url)
            out[name] = asyncio.run(load(url, body(), seconds=seconds))
            s1, c1 = _batch_totals(plane.metrics_url)
            out[name]["mean_batch_size_reported"] = round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None
            print(backend, name, out[name], flush=True)
    finally:
        plane.stop()
    out["ratio_rps"] = round(out["batched"]["rps"] / max(out["unbatched"]["rps"], 1e-9), 2)
    return out


def _batch_totals(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of the router's batch-size histogram over all variants."""
    import httpx

    s = c = 0.0
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("sluice_batch_size_sum{"):
            s += float(line.rsplit(" ", 1)[1])
        elif line.startswith("sluice_batch_size_count{"):
            c += float(line.rsplit(" ", 1)[1])
    return s, c


PLANES = {"onnx": "in-process (onnx)", "ray": "Sluice on Ray"}


def summary_rows(models: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model and data plane: the table of the benchmarks page."""
    rows = []
    for name, m in models.items():
        for plane, label in PLANES.items():
            if plane not in m:
                continue
            p = m[plane]
            rows.append(
                {
                    "model": f"MLP {name}",
                    "data plane": label,
                    "batched req/s": p["batched"]["rps"],
                    "unbatched req/s": p["unbatched"]["rps"],
                    "ratio": p["ratio_rps"],
                    "mean batch": p["batched"]["mean_batch_size_reported"],
                    "p99 ms batched": p["batched"]["p99_ms"],
                    "p99 ms unbatched": p["unbatched"]["p99_ms"],
                    "meets goal (>= 2x)": p["ratio_rps"] >= 2.0,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument(
        "--layers", default="8,16,32", help="comma list: one MLP depth per measured model (each ~2x the previous cost)"
    )
    parser.add_argument("--backends", default="onnx,ray")
    args = parser.parse_args()
    fair_ray_priority()
    machine = f"{platform.machine()}, {machine_text()} (shared)"
    result: dict[str, Any] = {
        "title": "dynamic batching on vs off",
        "goal": "batched >= 2x unbatched throughput",
        "concurrency": CONCURRENCY,
        "seconds_per_point": args.seconds,
        "max_batch_size": 16,
        "max_wait_ms": 2.0,
        "load_avg_1m_at_start": os.getloadavg()[0],
        "ray_worker_niceness": os.environ.get(RAY_NICENESS_ENV),
        "models": {},
    }
    for layers in (int(n) for n in args.layers.split(",")):
        with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
            model = make_models.make_mlp(Path(tmp) / "mlp.onnx", width=args.width, layers=layers)
            entry: dict[str, Any] = {
                "model": f"ONNX MLP 4->{args.width}x{layers} (Gemm+ReLU)->2, {model.stat().st_size // 1024} KiB",
            }
            for backend in args.backends.split(","):
                print(f"-- {args.width}x{layers} {backend}", flush=True)
                entry[backend] = measure(backend, "file:mlp.onnx", Path(tmp), args.seconds)
            result["models"][f"{args.width}x{layers}"] = entry
    out = ROOT / "benchmarks" / "results" / "batching.json"
    report = write_results(
        out, "batching", rerun_command("batching.py"), machine, summary_rows(result["models"]), detail=result
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
