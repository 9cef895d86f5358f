"""`sluice operator`: run the Kubernetes operator (Kopf, in this process).

Connects like kubectl (KUBECONFIG, else in-cluster) and reads its settings from the environment the Helm chart sets
(sluice.operator.config). Exits 0 on SIGTERM/SIGINT and 2 when a setting is invalid, naming it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from sluice.operator.config import OperatorConfig

EXIT_BAD_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable; default $SLUICE_WATCH_NAMESPACES, none: cluster-wide)",
    )
    parser.add_argument(
        "--bind-address",
        default=os.environ.get("SLUICE_BIND_ADDRESS", "0.0.0.0"),
        help="address of the health and metrics servers (default $SLUICE_BIND_ADDRESS or 0.0.0.0)",
    )


def _poll_seconds(env: dict[str, str]) -> float:
    text = env.get("SLUICE_POLL_SECONDS", "").strip() or "1"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"SLUICE_POLL_SECONDS must be a number of seconds, not {text!r}") from None
    if not 0 < value <= 60:
        raise ValueError(f"SLUICE_POLL_SECONDS must be in (0, 60], not {text!r}")
    return value


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # Until Kopf installs its own handlers (and after it removed them), a stop request is a clean exit, not -15.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    env = dict(os.environ)
    try:
        config = OperatorConfig.from_env(env)
        poll_s = _poll_seconds(env)
        metrics_url = env.get("SLUICE_ROUTER_METRICS_URL") or None
        if metrics_url is not None:
            metrics_url.format(name="x", namespace="y")
    except (ValueError, KeyError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "aiohttp.access"):  # one line per API call / probe drowns the rollout's own log
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))
    from sluice.operator.runner import run as run_operator

    namespaces = tuple(args.namespace) if args.namespace else config.watch_namespaces
    return run_operator(config, namespaces, bind=args.bind_address, metrics_url=metrics_url, poll_s=poll_s)
