"""What the Sluice router adds: the same ONNX model server called straight vs through the router, in one run.

    .venv/bin/python benchmarks/router_overhead.py [--seconds 4] [--rounds 2] [--rate 100,200] [--concurrency 16]

Processes (all on 127.0.0.1): two minimal v2 model servers (Starlette + uvicorn + one onnxruntime session of a
skl2onnx LogisticRegression, 4 float features; the second one only answers shadows), a Sluice router
(`python -m sluice.serving.host_standalone --backend http`, pooled keep-alive client to the model server), and this
load generator (aiohttp, keep-alive). Targets:

* ``straight``      - v2 REST JSON to the model server;
* ``router``        - the same body to the router (100% stable, no mirror);
* ``router_shadow`` - the router with 100% of requests mirrored to the shadow server.

Each target is measured at fixed open-loop rates (``--rate`` req/s) and at saturation (``--concurrency`` closed-loop
clients). Because load generator, router and model servers share this machine's cores, each target also reports
the CPU milliseconds each server process spent per answered request (from /proc), which does not depend on how
busy the machine was. Targets run in interleaved rounds (straight, router, router_shadow, straight, ...) so
background load hits all alike. The added latency and the shadow ratio are the median over rounds of each round's
back-to-back difference (a stall on this shared VM then spoils one pair, not the figure); pooled-sample
percentiles are kept beside them. Results: benchmarks/results/router_overhead.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import answers, free_port, wait_for

MODEL = "lr"
RESULTS = Path(__file__).parent / "results" / "router_overhead.json"
BODY = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0.1, -0.2, 0.3, 0.4]}]}
).encode()
HEADERS = {"content-type": "application/json"}


# ---- the model server (runs in its own process: `router_overhead.py --model-server PORT MODEL`) -------------------


def model_server(port: int, model_path: str) -> None:
    """A deliberately minimal v2 server: what a backend costs without any routing."""
    import onnxruntime as ort
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    meta = {
        "name": MODEL,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }

    async def infer(request: Request) -> Response:
        body = json.loads(await request.body())
        inp = body["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        label, probs = session.run(names, {"X": x})
        return JSONResponse(
            {
                "model_name": MODEL,
                "model_version": "1",
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": list(label.shape), "data": label.tolist()},
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": list(probs.shape),
                        "data": probs.reshape(-1).tolist(),
                    },
                ],
            }
        )

    async def metadata(_: Request) -> Response:
        return JSONResponse(meta)

    async def ready(_: Request) -> Response:
        return JSONResponse({"ready": True})

    app = Starlette(
        routes=[
            Route(f"/v2/models/{MODEL}/infer", infer, methods=["POST"]),
            Route(f"/v2/models/{MODEL}", metadata),
            Route(f"/v2/models/{MODEL}/ready", ready),
            Route("/v2/health/live", ready),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- orchestration --------------------------------------------------------------------------------------------


def _model(path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1], options={"zipmap": False}, target_opset=17)
    path.write_bytes(onx.SerializeToString())


def _wait_live(url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    def live() -> bool:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a benchmark process exited during start-up")
        return answers(url)

    wait_for(url, live, 60)


def _router_config(model_ep: str, shadow_ep: str, mirror: int) -> dict[str, Any]:
    return {
        "model_name": MODEL,
        "variants": [
            {"name": "stable", "version": "1", "uri": "file://m.onnx", "weight": 100, "endpoint": model_ep},
            {"name": "shadow", "version": "2", "uri": "file://m.onnx", "weight": 0, "endpoint": shadow_ep},
        ],
        "mirror": {"variant": "shadow", "percent": mirror},
    }


# ---- load ---------------------------------------------------------------------------------------------------


async def _fixed_rate(session: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: one request every 1/rate s regardless of answers; latency from the scheduled send time."""
    lat: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            await r.read()
            if r.status != 200:
                errors += 1
        lat.append(time.perf_counter() - scheduled)

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return lat, errors


async def _saturate(
    session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, errors, len(lat) / (time.perf_counter() - t0)


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(lat) * 1000, q))


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, from /proc (what a request costs there, however busy the machine is)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(urls: dict[str, str], pids: dict[str, list[int]], args: argparse.Namespace) -> dict[str, Any]:
    fixed: dict[str, dict[float, list[float]]] = {k: {r: [] for r in args.rates} for k in urls}
    per_round: dict[str, dict[float, list[dict[str, float]]]] = {k: {r: [] for r in args.rates} for k in urls}
    sat: dict[str, list[float]] = {k: [] for k in urls}
    tput: dict[str, list[float]] = {k: [] for k in urls}
    cpu: dict[str, dict[str, float]] = {k: {} for k in urls}
    served: dict[str, int] = dict.fromkeys(urls, 0)
    errors: dict[str, int] = dict.fromkeys(urls, 0)
    connector = aiohttp.TCPConnector(limit=max(64, args.concurrency * 2))
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # warm-up: connections, metadata caches
            await _saturate(session, url, 4, 1.0)
        for rnd in range(args.rounds):
            for name, url in urls.items():
                before = {str(p): _cpu_s(p) for p in pids[name]}
                for rate in args.rates:
                    lat, err = await _fixed_rate(session, url, rate, args.seconds)
                    fixed[name][rate] += lat
                    per_round[name][rate].append({"p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)})
                    errors[name] += err
                    served[name] += len(lat)
                lat, err, rps = await _saturate(session, url, args.concurrency, args.seconds)
                sat[name] += lat
                tput[name].append(rps)
                errors[name] += err
                served[name] += len(lat)
                for p in pids[name]:
                    cpu[name][str(p)] = cpu[name].get(str(p), 0.0) + _cpu_s(p) - before[str(p)]
                p50s = "  ".join(f"{r:g}/s p50 {_pct(fixed[name][r], 50):.2f} ms" for r in args.rates)
                print(f"round {rnd + 1} {name:14s} {p50s}  sat {rps:.0f} req/s", flush=True)
    out: dict[str, Any] = {}
    for name in urls:
        out[name] = {
            "fixed_rate": {
                f"{r:g}": {
                    "p50_ms": _pct(fixed[name][r], 50),
                    "p99_ms": _pct(fixed[name][r], 99),
                    "samples": len(fixed[name][r]),
                    "rounds": per_round[name][r],
                }
                for r in args.rates
            },
            "saturation": {
                "p50_ms": _pct(sat[name], 50),
                "p99_ms": _pct(sat[name], 99),
                "req_per_s": float(np.mean(tput[name])),
                "samples": len(sat[name]),
            },
            "server_cpu_ms_per_request": {
                role: cpu[name][str(pid)] * 1000 / served[name]
                for role, pid in zip(pids["roles:" + name], pids[name], strict=True)
            },
            "errors": errors[name],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", default="100,200", help="fixed open-loop rates, req/s, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model-server", nargs=2, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rates = [float(r) for r in str(args.rate).split(",")]
    if args.model_server:
        model_server(int(args.model_server[0]), args.model_server[1])
        return 0

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        _model(root / "m.onnx")
        ports = {k: free_port() for k in ("model", "shadow_model", "router", "router_shadow")}
        try:
            for k in ("model", "shadow_model"):
                procs.append(
                    subprocess.Popen([sys.executable, __file__, "--model-server", str(ports[k]), str(root / "m.onnx")])
                )
            model_ep, shadow_ep = (f"http://127.0.0.1:{ports[k]}" for k in ("model", "shadow_model"))
            for k, mirror in (("router", 0), ("router_shadow", 100)):
                cfg = root / f"{k}.json"
                cfg.write_text(json.dumps(_router_config(model_ep, shadow_ep, mirror)))
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "sluice.serving.host_standalone",
                            "--config",
                            str(cfg),
                            "--port",
                            str(ports[k]),
                        ],
                        env=env,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for port in ports.values():
                _wait_live(f"http://127.0.0.1:{port}/v2/health/live", procs)
            path = f"/v2/models/{MODEL}/infer"
            urls = {
                "straight": f"{model_ep}{path}",
                "router": f"http://127.0.0.1:{ports['router']}{path}",
                "router_shadow": f"http://127.0.0.1:{ports['router_shadow']}{path}",
            }
            model_pid, shadow_pid, router_pid, router_shadow_pid = (p.pid for p in procs)
            pids: dict[str, Any] = {
                "straight": [model_pid],
                "router": [router_pid, model_pid],
                "router_shadow": [router_shadow_pid, model_pid, shadow_pid],
                "roles:straight": ["model_server"],
                "roles:router": ["router", "model_server"],
                "roles:router_shadow": ["router", "model_server", "shadow_model_server"],
            }
            targets = asyncio.run(_measure(urls, pids, args))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()

    s, r, sh = targets["straight"], targets["router"], targets["router_shadow"]

    def paired(a: dict[str, Any], b: dict[str, Any], rate: str, q: str, op: Any) -> float:
        """Median over rounds of op(a, b): each round measured a and b back to back, so a stall that hits one
        round (a p99 of 100 ms on this shared VM) moves one pair, not the figure."""
        pairs = zip(a["fixed_rate"][rate]["rounds"], b["fixed_rate"][rate]["rounds"], strict=True)
        return float(np.median([op(x[f"{q}_ms"], y[f"{q}_ms"]) for x, y in pairs]))

    def minus(x: float, y: float) -> float:
        return x - y

    def ratio(x: float, y: float) -> float:
        return x / y

    summary: dict[str, Any] = {
        f"added_ms_at_{rate}_per_s": {q: paired(r, s, rate, q, minus) for q in ("p50", "p99")}
        for rate in s["fixed_rate"]
    }
    summary["added_ms_pooled_samples"] = {
        rate: {q: r["fixed_rate"][rate][f"{q}_ms"] - s["fixed_rate"][rate][f"{q}_ms"] for q in ("p50", "p99")}
        for rate in s["fixed_rate"]
    }
    summary.update(
        {
            "added_ms_saturation": {q: r["saturation"][f"{q}_ms"] - s["saturation"][f"{q}_ms"] for q in ("p50", "p99")},
            "throughput_ratio_router_vs_straight": r["saturation"]["req_per_s"] / s["saturation"]["req_per_s"],
            "router_cpu_ms_per_request": r["server_cpu_ms_per_request"]["router"],
            "model_server_cpu_ms_per_request": s["server_cpu_ms_per_request"]["model_server"],
            "shadow_on_vs_off_primary_p99_ratio": {rate: paired(sh, r, rate, "p99", ratio) for rate in r["fixed_rate"]}
            | {"saturation": sh["saturation"]["p99_ms"] / r["saturation"]["p99_ms"]},
            "router_with_shadow_cpu_ms_per_request": sh["server_cpu_ms_per_request"]["router"],
            "goal": "router adds <= 1 ms p50 and <= 3 ms p99 at a fixed rate",
        }
    )
    result = {
        "benchmark": "router_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "params": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "rates": args.rates,
            "concurrency": args.concurrency,
        },
        "targets": targets,
        "summary": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
