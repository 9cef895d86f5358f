"""Sluice on Ray vs a plain Ray Serve deployment vs a FastAPI + uvicorn server: same ONNX model, same run.

    .venv/bin/python benchmarks/e2e_ray.py [--seconds 8] [--rounds 2]

- sluice-ray: `start_data_plane(..., "ray")` — router ingress + a model deployment with Sluice's dynamic batcher
  (16, 2 ms); the ingress coalesces requests that arrive while its calls are busy into one handle call.
- plain-ray-serve: one deployment whose `__call__` parses the JSON and runs onnxruntime per request, the way the
  Ray Serve docs show a model (default options: max_ongoing_requests 5, onnxruntime default threads).
- fastapi-uvicorn: the per-request tutorial server (sync endpoint, one uvicorn worker), in its own process.
All three up at once (plain Ray Serve beside Sluice on one Ray start, under another route prefix) and driven in
interleaved rounds (A B C A B C), the best round of each counting, for two models: the tiny fraud
LogisticRegression and an MLP where the model call costs milliseconds. Requests/s at concurrency 16, p50/p99.
Writes benchmarks/results/e2e_ray.json. Ray workers run at nice 0 like the other servers (`fair_ray_priority`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from tests.support import free_port, listening, wait_for  # noqa: E402

from batching import body, fair_ray_priority, load, make_models  # noqa: E402
from results_io import machine_text, rerun_command, write_results  # noqa: E402
from sluice.serving.config import ServingConfig  # noqa: E402
from sluice.serving.launch import start_data_plane  # noqa: E402

FASTAPI_APP = textwrap.dedent(
    """
    import os

    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI

    app = FastAPI()
    session = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"])


    @app.post("/v2/models/m/infer")
    def infer(body: dict) -> dict:
        inp = body["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        outputs = session.run(None, {inp["name"]: x})
        return {"outputs": [o.tolist() for o in outputs]}
    """
)


@contextlib.contextmanager
def fastapi_server(model: Path, tmp: Path) -> Iterator[str]:
    """The tutorial server in its own process for the duration of the block; yields its infer URL."""
    (tmp / "fastapi_app.py").write_text(FASTAPI_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(tmp), "--port", str(port)),
            *("--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"),
        ],
        env={**os.environ, "BENCH_MODEL": str(model)},
    )
    try:
        wait_for(f"the FastAPI server on port {port}", lambda: listening(port), 60)
        yield f"http://127.0.0.1:{port}/v2/models/m/infer"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def plain_ray_serve_app(model: Path) -> Any:
    """The per-request deployment from the Ray Serve docs' pattern (no batching, default options)."""
    import numpy as np
    import onnxruntime as ort
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class PlainOnnx:
        def __init__(self, path: str) -> None:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        async def __call__(self, request: Request) -> dict[str, Any]:
            payload = await request.json()
            inp = payload["inputs"][0]
            x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
            outputs = self.session.run(None, {inp["name"]: x})
            return {"outputs": [o.tolist() for o in outputs]}

    return PlainOnnx.bind(str(model))  # type: ignore[attr-defined]


def sluice_config(uri: str) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "model_name": "m",
            "variants": [{"name": "stable", "version": "v1", "uri": uri, "weight": 100}],
            "batching": {"enabled": True, "max_batch_size": 16, "max_wait_ms": 2.0},
        }
    )


PATHS = ("sluice-ray", "plain-ray-serve", "fastapi-uvicorn")


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model and path (best round of each): the table of the benchmarks page."""
    rows = []
    for model, r in result["results"].items():
        for path in PATHS:
            rows.append(
                {
                    "model": result["models"].get(model, model),
                    "path": path,
                    "req/s": r[path]["rps"],
                    "p50 ms": r[path]["p50_ms"],
                    "p99 ms": r[path]["p99_ms"],
                    "Sluice / plain Ray": r["ratio_sluice_vs_plain_ray"] if path == "sluice-ray" else None,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mlp-width", type=int, default=2048)
    parser.add_argument("--mlp-layers", type=int, default=3)
    args = parser.parse_args()
    fair_ray_priority()

    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="sluice-e2e-"))
    models = {"fraud-logreg": tmp / "fraud-v1.onnx", "mlp": tmp / "mlp.onnx"}
    shutil.copy(ROOT / "manifests" / "examples" / "models" / "fraud-v1.onnx", models["fraud-logreg"])
    make_models.make_mlp(models["mlp"], width=args.mlp_width, layers=args.mlp_layers)
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_text()
    result: dict[str, Any] = {
        "title": "Sluice on Ray vs plain Ray Serve vs FastAPI+uvicorn",
        "goal": "Sluice on Ray >= 1.5x plain Ray Serve at equal p99",
        "concurrency": 16,
        "seconds_per_point": args.seconds,
        "rounds": args.rounds,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "models": {
            "fraud-logreg": "LogisticRegression, 4 features (manifests/examples/models/fraud-v1.onnx)",
            "mlp": f"ONNX MLP 4->{args.mlp_width}x{args.mlp_layers}->2 (make_models.make_mlp)",
        },
        "results": {},
    }
    ray.init(_temp_dir=str(tmp / "ray"), num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name, path in models.items():
            plane = start_data_plane(sluice_config(f"file:{path.name}"), "ray", tmp, ready_timeout_s=300)
            try:
                serve.run(plain_ray_serve_app(path), name="plain", route_prefix="/plain")
                with fastapi_server(path, tmp) as fastapi_url:
                    urls = {
                        "sluice-ray": f"{plane.url}/v2/models/m/infer",
                        "plain-ray-serve": f"{plane.url}/plain",
                        "fastapi-uvicorn": fastapi_url,
                    }
                    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
                    for _ in range(args.rounds):  # interleaved, so background load hits every server alike
                        for scenario, url in urls.items():
                            rounds[scenario].append(asyncio.run(load(url, body(), seconds=args.seconds)))
                            print(name, scenario, rounds[scenario][-1], flush=True)
                serve.delete("plain")
            finally:
                plane.stop()  # deletes the Sluice app; Ray and Serve stay up
            res: dict[str, Any] = {k: max(v, key=lambda r: r["rps"]) for k, v in rounds.items()}
            s, p, f = (res[k]["rps"] for k in ("sluice-ray", "plain-ray-serve", "fastapi-uvicorn"))
            res["ratio_sluice_vs_plain_ray"] = round(s / max(p, 1e-9), 2)
            res["ratio_sluice_vs_fastapi"] = round(s / max(f, 1e-9), 2)
            res["rounds"] = rounds
            result["results"][name] = res
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "benchmarks" / "results" / "e2e_ray.json"
    report = write_results(
        out, "e2e_ray", rerun_command("e2e_ray.py"), machine, summary_rows(result), result, measured_at=measured_at
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
