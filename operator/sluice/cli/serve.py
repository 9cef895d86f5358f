"""`sluice serve -f FILE [--backend ray|triton|onnx] [--port N] [--grpc-port N|--no-grpc]`: serve a ModelDeployment.

One document: its model is stable at 100 %. Several documents of the same ModelDeployment, in order: the last is
the canary at its first canary-step weight (shadow/blueGreen: weight 0, mirrored at their mirror percent) and the
one before it is stable. `file:` URIs resolve against the YAML file's directory. Ctrl-C or SIGTERM stops
everything this command started (Ray included).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, cast

from sluice.api import ModelDeployment
from sluice.api.loading import load_file
from sluice.api.model_deployment import DEFAULT_CANARY_STEPS, StrategyType
from sluice.engine.routing import Routing
from sluice.engine.routing import serving_config as engine_serving_config
from sluice.rollout.core import version_ref
from sluice.serving.config import ServingConfig
from sluice.serving.launch import BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="ModelDeployment YAML")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: spec.backend of the YAML")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0 picks a free one; default 8000)")
    parser.add_argument(
        "--allow-override",
        action="store_true",
        help="honour the override header (x-sluice-variant) from any client; by default only with the admin token",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="KServe v2 gRPC port (onnx and triton backends; default: HTTP port + 1, a free one with --port 0)",
    )
    parser.add_argument("--no-grpc", action="store_true", help="serve HTTP only")


def serving_config(deployments: list[ModelDeployment]) -> ServingConfig:
    """The data-plane config for one ModelDeployment (stable) or the last two revisions of it (stable + new).

    The new revision gets what the rollout's first step would give it (canary: the first step's weight; shadow and
    blueGreen: weight 0, mirrored at their mirror percent), through the engine's one spec -> ServingConfig
    translation.
    """
    if not deployments:
        raise ValueError("no ModelDeployment documents")
    names = {d.metadata.name for d in deployments}
    if len(names) != 1:
        raise ValueError(f"all documents must be the same ModelDeployment, got {sorted(names)}")
    new = deployments[-1]
    model_names = {d.spec.model.name for d in deployments}
    if len(model_names) != 1:
        raise ValueError(f"spec.model.name must be the same in every document, got {sorted(model_names)}")
    if len(deployments) == 1:
        return engine_serving_config(new.spec, Routing(stable=version_ref(new.spec.model)))
    old = deployments[-2]
    if old.spec.model.version == new.spec.model.version:
        raise ValueError(f"the last two documents both have version {new.spec.model.version!r}")
    rollout = new.spec.rollout
    weight, mirror_percent = DEFAULT_CANARY_STEPS[0], 0
    if rollout.strategy == StrategyType.CANARY and rollout.canary is not None:
        weight = rollout.canary.steps[0].weight
    elif rollout.strategy == StrategyType.SHADOW:
        weight, mirror_percent = 0, rollout.shadow.mirror_percent if rollout.shadow else 100
    elif rollout.strategy == StrategyType.BLUE_GREEN:
        weight, mirror_percent = 0, rollout.blue_green.preview_mirror_percent if rollout.blue_green else 0
    routing = Routing(
        stable=version_ref(old.spec.model),
        canary=version_ref(new.spec.model),
        canary_weight=weight,
        mirror_percent=mirror_percent,
    )
    return engine_serving_config(new.spec, routing)


def load_deployments(path: Path) -> list[ModelDeployment]:
    """Every ModelDeployment in the file; ValueError lists each invalid field."""
    docs = load_file(path)
    problems: list[str] = []
    found: list[ModelDeployment] = []
    for doc in docs:
        if doc.error is not None:
            problems += [f"{doc.source}: {e}" for e in doc.error.errors]
        elif isinstance(doc.obj, ModelDeployment):
            found.append(doc.obj)
    if problems:
        raise ValueError("invalid YAML:\n  " + "\n  ".join(problems))
    if not found:
        raise ValueError(f"{path}: no ModelDeployment documents")
    return found


def example_curl(url: str, config: ServingConfig, inputs: list[dict[str, Any]]) -> str:
    body = json.dumps({"inputs": inputs}, separators=(",", ":"))
    return f"curl -s -H 'content-type: application/json' -d '{body}' {url}/v2/models/{config.model_name}/infer"


def _example_inputs(url: str, model: str) -> list[dict[str, Any]]:
    """One zero row per input, from the served model's own metadata."""
    import httpx

    meta = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
    inputs = []
    for spec in meta.get("inputs", []):
        shape = [1 if d < 0 else d for d in spec["shape"]]
        size = 1
        for d in shape:
            size *= d
        zero: Any = "" if spec["datatype"] == "BYTES" else 0
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": [zero] * size})
    return inputs


def grpc_port_for(args: argparse.Namespace, backend: str) -> int | None:
    """The gRPC port to serve on: none with --no-grpc or on Ray (Serve's proxy is HTTP here), else the flag's,
    else the HTTP port + 1 (Triton's 8000/8001 pair), or a free one when the HTTP port is picked freely."""
    if args.no_grpc or backend == "ray":
        return None
    if args.grpc_port is not None:
        return int(args.grpc_port)
    return int(args.port) + 1 if args.port else 0


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT so startup and the wait loop unwind through `finally`."""


def run(args: argparse.Namespace) -> int:
    from sluice.serving.launch import LaunchError, PlaneBackend, start_data_plane

    path = Path(args.filename)
    try:
        deployments = load_deployments(path)
        config = serving_config(deployments)
        if args.allow_override:
            config = config.model_copy(update={"override_enabled": True})
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    backend = cast(PlaneBackend, args.backend or deployments[-1].spec.backend.value)
    stopping = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    plane = None
    try:
        print(f"starting {config.model_name} on {backend}: {[(v.version, v.weight) for v in config.variants]}")
        sys.stdout.flush()
        grpc_port = grpc_port_for(args, backend)
        plane = start_data_plane(
            config, backend, path.resolve().parent, host=args.host, port=args.port, grpc_port=grpc_port
        )
        print(f"serving {config.model_name} at {plane.url}  (metrics: {plane.metrics_url})")
        served_grpc = getattr(plane, "grpc_port", None)
        if served_grpc is not None:
            print(f"gRPC (KServe v2 GRPCInferenceService) at {args.host}:{served_grpc}")
        token_file = getattr(plane, "admin_token_file", None)  # routers in this process; Ray's ingress has none
        if token_file is not None:
            print(f"admin API token (Authorization: Bearer <token>) is in {token_file}")
        print(example_curl(plane.url, config, _example_inputs(plane.url, config.model_name)))
        print("Ctrl-C or SIGTERM stops it.")
        sys.stdout.flush()
        while not stopping.wait(3600):
            pass
    except _Stop as sig:
        print(f"received {sig}, shutting down")
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stopping.set()
        if plane is not None:
            plane.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.stdout.flush()
    return 0
