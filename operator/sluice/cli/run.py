"""`sluice run -f FILE`: serve a ModelDeployment on this machine and carry out its rollout, no cluster needed.

Each ModelDeployment document (in one file or several `-f`, in order) is one `kubectl apply` of the same resource:
the first becomes stable, each later one is rolled out with the real decision core, the real router and the
built-in metric provider, while optional synthetic traffic (`--load RPS`) flows through the router.

Exit codes: 0 the last revision was promoted (or, for a single document, is serving), 1 it was rolled back,
3 it was aborted, failed or did not finish within --timeout, 2 invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import httpx
import numpy as np

from sluice.api.model_deployment import ModelDeployment
from sluice.api.status import TERMINAL_PHASES, ModelDeploymentStatus, Phase
from sluice.cli.serve import load_deployments
from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.routing import Routing, serving_config
from sluice.local.modeldeployment import LocalPlatform
from sluice.providers.factory import create_provider
from sluice.rollout.core import version_ref
from sluice.serving.launch import DataPlane, LaunchError, start_data_plane

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_INVALID, EXIT_OTHER = 0, 1, 2, 3
_EXIT = {Phase.SUCCEEDED: EXIT_PROMOTED, Phase.STABLE: EXIT_PROMOTED, Phase.ROLLED_BACK: EXIT_ROLLED_BACK}

log = logging.getLogger("sluice.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True, type=Path, help="ModelDeployment YAML")
    parser.add_argument("--backend", choices=["ray", "triton", "onnx"], help="override spec.backend")
    parser.add_argument("--load", type=float, default=0.0, metavar="RPS", help="synthetic requests per second")
    parser.add_argument("--output", choices=["text", "json"], default="text", help="json prints the final status")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds per rollout")
    parser.add_argument("--port", type=int, default=0, help="router port (default: a free one)")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _view(status: ModelDeploymentStatus) -> str:
    canary = status.canary.version if status.canary else "-"
    stable = status.stable.version if status.stable else "-"
    line = f"{status.phase.value:<12} stable={stable} canary={canary} weight={status.canary_weight}%"
    if status.mirror_percent:
        line += f" mirror={status.mirror_percent}%"
    if status.last_analysis is not None:
        checks = " ".join(
            f"{r.name}={_fmt(r.value)}({r.verdict.value}{' ' + r.threshold if r.threshold else ''})"
            for r in status.last_analysis.results
        )
        line += f" | {checks}"
    return line + (f" | {status.message}" if status.message else "")


class _Traffic:
    """Synthetic requests at a fixed rate: standard-normal rows shaped like the model's first input."""

    def __init__(self, url: str, model: str, rps: float) -> None:
        self.url, self.model, self.rps = url, model, rps
        self.sent = self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = np.random.default_rng(0)
        async with httpx.AsyncClient(timeout=30) as client:
            meta = (await client.get(f"{self.url}/v2/models/{self.model}")).json()
            first = meta["inputs"][0]
            width = [d if d > 0 else 1 for d in first["shape"][1:]]
            period, next_at = 1.0 / self.rps, time.monotonic()
            while not stop.is_set():
                row = rng.standard_normal(size=[1, *width]).astype(np.float32)
                body = {
                    "inputs": [
                        {
                            "name": first["name"],
                            "shape": list(row.shape),
                            "datatype": "FP32",
                            "data": row.ravel().tolist(),
                        }
                    ]
                }
                try:
                    resp = await client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
                    self.failed += resp.status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                self.sent += 1
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))


async def _drive(
    loop: RolloutLoop, until: frozenset[Phase], timeout_s: float, stop: asyncio.Event, quiet: bool
) -> bool:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline and not stop.is_set():
        await loop.tick()
        view = _view(loop.status)
        if view != last and not quiet:
            print(f"{time.strftime('%H:%M:%S')} {view}", flush=True)
            last = view
        if loop.status.phase in until:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), loop.poll_s)
    return False


async def _rollout(docs: list[ModelDeployment], plane: DataPlane, args: argparse.Namespace) -> ModelDeploymentStatus:
    first = docs[0].spec
    platform = LocalPlatform(first, plane)
    provider = create_provider(first.analysis.provider, metrics_url=plane.metrics_url)
    loop = RolloutLoop(first, platform, provider, name=docs[0].metadata.name, poll_s=0.5)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    traffic = _Traffic(plane.url, first.model.name, args.load) if args.load > 0 else None
    task = asyncio.create_task(traffic.run(stop)) if traffic else None
    quiet = args.output == "json"
    try:
        if not await _drive(loop, frozenset({Phase.STABLE, *TERMINAL_PHASES}), args.timeout, stop, quiet):
            return loop.status
        for generation, doc in enumerate(docs[1:], start=2):
            if not quiet:
                print(
                    f"applying {doc.metadata.name} model {doc.spec.model.version} ({doc.spec.rollout.strategy.value})"
                )
            loop.set_spec(doc.spec, generation)
            platform.spec = doc.spec
            await loop.tick()  # the new revision leaves the previous terminal phase
            if not await _drive(loop, TERMINAL_PHASES, args.timeout, stop, quiet):
                break
    finally:
        stop.set()
        if task is not None:
            await task
        await provider.close()
        if traffic is not None and not quiet:
            print(f"traffic: {traffic.sent} requests, {traffic.failed} failed")
    return loop.status


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        docs = [d for path in args.filename for d in load_deployments(path)]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    names = {d.metadata.name for d in docs}
    if len(names) != 1:
        print(f"error: all documents must be the same ModelDeployment, got {sorted(names)}", file=sys.stderr)
        return EXIT_INVALID
    first = docs[0].spec
    backend: Literal["ray", "triton", "onnx"] = args.backend or first.backend.value
    config = serving_config(first, Routing(stable=version_ref(first.model)))
    try:
        plane = start_data_plane(config, backend, args.filename[0].resolve().parent, port=args.port)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OTHER
    try:
        if args.output == "text":
            print(f"serving {first.model.name} on {plane.url} ({backend}); metrics at {plane.metrics_url}", flush=True)
        status = asyncio.run(_rollout(docs, plane, args))
    finally:
        plane.stop()
    if args.output == "json":
        print(json.dumps(status.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        print(f"result: {status.phase.value} — {status.message}")
    return _EXIT.get(status.phase, EXIT_OTHER)
