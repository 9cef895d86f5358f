"""What the Sluice router adds: the same ONNX model server called straight vs through the router, in one run.

    .venv/bin/python benchmarks/router_overhead.py [--seconds 4] [--rounds 2] [--rate 100,200] [--concurrency 16]

Processes (all on 127.0.0.1): two minimal v2 model servers (Starlette + uvicorn + one onnxruntime session of a
skl2onnx LogisticRegression, 4 float features; the second one only answers shadows), a Sluice router
(`python -m sluice.serving.host_standalone`, whose default variant backend is http: a pooled keep-alive client to
the model server), and this load generator (aiohttp, keep-alive). Targets:

* ``straight``      - v2 REST JSON to the model server;
* ``router``        - the same body to the router (100% stable, no mirror);
* ``router_shadow`` - the router with 100% of requests mirrored to the shadow server;
* ``router_uvicorn``, ``router_granian``, ``router_granian_rsgi`` - the same router (same `Router`, same app)
  under a maintained server instead of Sluice's own `HttpServer`, each with its hardening options on (see
  `alt_router`): uvicorn 0.54 (httptools), granian 2.8.7 embedded in the router's event loop over ASGI, and
  granian's RSGI with an infer-only handler (its best case: no ASGI translation). ``--servers`` picks which run.

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
from tests.support.traffic import logistic_onnx

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
    width = session.get_inputs()[0].shape[1]
    meta = {
        "name": MODEL,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, width]}],
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


# ---- the router under a maintained server (`router_overhead.py --alt-router KIND PORT CONFIG`) ----------------


def alt_router(kind: str, port: int, config_path: str) -> None:
    """The standalone router's Router and app, served by uvicorn or granian instead of `HttpServer`."""
    from sluice.serving.admin import AdminAuth
    from sluice.serving.app import build_app
    from sluice.serving.host_standalone import build_router, load_config, loop_factory

    router = build_router(load_config(Path(config_path)), "http")
    app = build_app(router, close_router_on_shutdown=True, admin=AdminAuth("bench"))

    async def serve() -> None:
        if kind == "uvicorn":
            import uvicorn

            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                http="httptools",
                limit_concurrency=1000,  # its connection cap: 503 past it
                timeout_keep_alive=5,
                lifespan="on",
            )
            await uvicorn.Server(config).serve()
            return
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        target: Any = app
        interface = Interfaces.ASGI
        if kind == "granian_rsgi":
            interface, target = Interfaces.RSGI, _rsgi_infer(app)
        server = Server(
            target,
            address="127.0.0.1",
            port=port,
            interface=interface,
            http=HTTPModes.http1,
            websockets=False,
            backpressure=1000,
            http1_settings=HTTP1Settings(header_read_timeout=10_000, keep_alive=True),
            log_enabled=False,
        )
        await server.serve()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())


def _rsgi_infer(app: Any) -> Any:
    """An RSGI app answering infer (and liveness) straight from `ProtocolEndpoints`, as `HttpServer` does."""
    from sluice.serving.app import check_request_headers, header_map, infer_target
    from sluice.serving.endpoints import dumps
    from sluice.serving.errors import ServingError

    plane = app.plane

    async def __rsgi__(scope: Any, proto: Any) -> None:
        if scope.path == "/v2/health/live":
            proto.response_bytes(200, [("content-type", "application/json")], b'{"live":true}')
            return
        target = infer_target(scope.path) if scope.method == "POST" else None
        if target is None:
            proto.response_bytes(404, [], b"")
            return
        t0 = time.perf_counter()
        body = await proto()
        headers = header_map([(k.lower().encode(), v.encode()) for k, v in scope.headers.items()])
        try:
            check_request_headers(headers)
            reply = await plane.infer(*target, body, headers, t0)
        except ServingError as exc:
            proto.response_bytes(exc.status_code, [("content-type", "application/json")], dumps(exc.to_json()))
            return
        out = [("content-type", "application/json"), *reply.headers.items()]
        proto.response_bytes(reply.status, out, dumps(reply.body))

    class _App:
        pass

    rsgi = _App()
    rsgi.__rsgi__ = __rsgi__  # type: ignore[attr-defined]
    return rsgi


ALT_SERVERS = ("uvicorn", "granian", "granian_rsgi")


# ---- orchestration --------------------------------------------------------------------------------------------


def wait_live(url: str, procs: list[subprocess.Popen[bytes]]) -> None:
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


def cpu_s(pid: int) -> float:
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
                before = {str(p): cpu_s(p) for p in pids[name]}
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
                    cpu[name][str(p)] = cpu[name].get(str(p), 0.0) + cpu_s(p) - before[str(p)]
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
    parser.add_argument(
        "--servers",
        default=",".join(ALT_SERVERS),
        help=f"maintained servers to measure the router under beside Sluice's own (some of {','.join(ALT_SERVERS)};"
        " empty for none)",
    )
    parser.add_argument("--model-server", nargs=2, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--alt-router", nargs=3, metavar=("KIND", "PORT", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--features",
        action="store_true",
        help="instead: drift feature binning (20 features + prediction) vs none, see features_main",
    )
    args = parser.parse_args()
    args.rates = [float(r) for r in str(args.rate).split(",")]
    if args.model_server:
        model_server(int(args.model_server[0]), args.model_server[1])
        return 0
    if args.alt_router:
        alt_router(args.alt_router[0], int(args.alt_router[1]), args.alt_router[2])
        return 0
    alts = [k for k in str(args.servers).split(",") if k]
    unknown = sorted(set(alts) - set(ALT_SERVERS))
    if unknown:
        parser.error(f"--servers: unknown {unknown}; choose from {list(ALT_SERVERS)}")
    if args.features:
        from router_overhead_features import features_main

        return features_main(args)

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        logistic_onnx(root / "m.onnx", target_opset=17)
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
            alt_procs = {}
            for kind in alts:
                ports[f"router_{kind}"] = free_port()
                alt_procs[kind] = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--alt-router",
                        kind,
                        str(ports[f"router_{kind}"]),
                        str(root / "router.json"),
                    ],
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                    stderr=subprocess.DEVNULL,
                )
                procs.append(alt_procs[kind])
            for port in ports.values():
                wait_live(f"http://127.0.0.1:{port}/v2/health/live", procs)
            path = f"/v2/models/{MODEL}/infer"
            urls = {
                "straight": f"{model_ep}{path}",
                "router": f"http://127.0.0.1:{ports['router']}{path}",
                "router_shadow": f"http://127.0.0.1:{ports['router_shadow']}{path}",
            }
            model_pid, shadow_pid, router_pid, router_shadow_pid = (p.pid for p in procs[:4])
            pids: dict[str, Any] = {
                "straight": [model_pid],
                "router": [router_pid, model_pid],
                "router_shadow": [router_shadow_pid, model_pid, shadow_pid],
                "roles:straight": ["model_server"],
                "roles:router": ["router", "model_server"],
                "roles:router_shadow": ["router", "model_server", "shadow_model_server"],
            }
            for kind, proc in alt_procs.items():
                urls[f"router_{kind}"] = f"http://127.0.0.1:{ports[f'router_{kind}']}{path}"
                pids[f"router_{kind}"] = [proc.pid, model_pid]
                pids[f"roles:router_{kind}"] = ["router", "model_server"]
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
    # One row per HTTP server the router ran under (Sluice's own first): what docs/serving/http-server.md shows.
    servers = [("sluice-httpserver", "router")] + [(k, f"router_{k}") for k in alts]
    rows = []
    for label, key in servers:
        t = targets[key]
        row: dict[str, Any] = {"server": label}
        for rate in s["fixed_rate"]:
            for q in ("p50", "p99"):
                row[f"added_{q}_ms_at_{rate}_per_s"] = round(paired(t, s, rate, q, minus), 3)
        row["saturation_req_per_s"] = round(t["saturation"]["req_per_s"], 1)
        row["router_cpu_ms_per_request"] = round(t["server_cpu_ms_per_request"]["router"], 3)
        row["errors"] = t["errors"]
        row["meets_goal"] = all(
            row[f"added_p50_ms_at_{rate}_per_s"] <= 1.0 and row[f"added_p99_ms_at_{rate}_per_s"] <= 3.0
            for rate in s["fixed_rate"]
        )
        rows.append(row)
    command = "python benchmarks/router_overhead.py " + " ".join(
        f"--{k} {v}"
        for k, v in (
            ("seconds", args.seconds),
            ("rounds", args.rounds),
            ("rate", args.rate),
            ("concurrency", args.concurrency),
            ("servers", args.servers or "''"),
        )
    )
    result = {
        "benchmark": "router_overhead",
        "command": command,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f}, shared VM",
        "summary": rows,
        "details": summary,
        "params": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "rates": args.rates,
            "concurrency": args.concurrency,
        },
        "targets": targets,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": rows, "details": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
