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
import json
import logging
import sys
from pathlib import Path
from typing import Literal

from sluice.api.status import Phase
from sluice.cli.serve import load_deployments
from sluice.engine.routing import Routing, serving_config
from sluice.local.modeldeployment import run_rollout
from sluice.rollout.core import version_ref
from sluice.serving.launch import LaunchError, start_data_plane

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
        status = asyncio.run(
            run_rollout(docs, plane, load_rps=args.load, timeout_s=args.timeout, quiet=args.output == "json")
        )
    finally:
        plane.stop()
    if args.output == "json":
        print(json.dumps(status.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        print(f"result: {status.phase.value} — {status.message}")
    return _EXIT.get(status.phase, EXIT_OTHER)
