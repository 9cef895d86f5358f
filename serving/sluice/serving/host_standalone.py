"""The router as its own process (in front of tritonserver or any v2 server): uvicorn serving `build_app`.

    python -m sluice.serving.host_standalone --config serving.json --port 8080 [--backend triton] [--host 0.0.0.0]
        [--watch-configmap NS/NAME [--kube-api URL]]

The config file is a `ServingConfig` as JSON or YAML. Backends come from `make_backend(kind, ...)`, so a new kind
plugs in through the registry in `backends/__init__.py`. Weights change live through `PUT /admin/config`
(bearer token from $SLUICE_ADMIN_TOKEN when set), or from a ConfigMap with ``--watch-configmap`` (the operator's
way, see `sluice.serving.configsource`; the API is the pod's own unless ``--kube-api`` names one, with the bearer
token from $SLUICE_KUBE_TOKEN when set). SIGTERM stops accepting, lets in-flight requests finish, exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from pydantic import ValidationError

from sluice.serving.app import build_app
from sluice.serving.backends import BACKEND_KINDS, make_backend
from sluice.serving.config import ServingConfig
from sluice.serving.configsource import ConfigMapSource, KubeApi, parse_target
from sluice.serving.router import Router

log = logging.getLogger(__name__)


def load_config(path: Path) -> ServingConfig:
    """A ServingConfig from a JSON or YAML file; ValueError names the file and the problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config {path} is not valid JSON/YAML: {exc}") from exc
    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"config {path} is not a valid ServingConfig:\n{exc}") from exc


def build_router(config: ServingConfig, kind: str) -> Router:
    factory = partial(make_backend, kind)
    backends = {v.name: factory(v, config) for v in config.variants}
    return Router(config, backends, factory=factory)


def uvicorn_config(router: Router, host: str, port: int) -> uvicorn.Config:
    """uvloop/httptools when installed ('auto'); graceful shutdown bounded by the request timeout."""
    return uvicorn.Config(
        build_app(router, close_router_on_shutdown=True),
        host=host,
        port=port,
        loop="auto",
        http="auto",
        access_log=False,  # never log request lines (or payloads) by default
        proxy_headers=False,  # the router reads no client address: skip uvicorn's per-request middleware layer
        timeout_graceful_shutdown=int(router.config.request_timeout_s) + 1,
        log_level="info",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.serving.host_standalone", description="Sluice router")
    parser.add_argument("--config", required=True, type=Path, help="ServingConfig as JSON or YAML")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a pod)")
    parser.add_argument("--backend", default="http", help=f"backend kind, one of {sorted(BACKEND_KINDS)}")
    parser.add_argument(
        "--watch-configmap", metavar="NS/NAME", help="follow this ConfigMap's config.json and apply each new config"
    )
    parser.add_argument("--kube-api", metavar="URL", help="Kubernetes API base URL (default: the pod's own API)")
    parser.add_argument(
        "--watch-timeout", type=float, default=300.0, help="seconds before the API server ends a watch (re-watched)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = None
    try:
        config = load_config(args.config)
        router = build_router(config, args.backend)
        if args.watch_configmap:
            namespace, name = parse_target(args.watch_configmap)
            api = KubeApi(args.kube_api, token=os.environ.get("SLUICE_KUBE_TOKEN")) if args.kube_api else None
            source = ConfigMapSource(
                api or KubeApi.in_cluster(),
                namespace,
                name,
                router.apply,
                current=config,
                watch_timeout_s=args.watch_timeout,
            )
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler found at start: a no-op handler
    # there makes a graceful stop exit 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = uvicorn.Server(uvicorn_config(router, args.host, args.port))
    if source is None:
        server.run()
    else:
        run_with_source(server, source)
    return 0


def run_with_source(server: uvicorn.Server, source: ConfigMapSource) -> None:
    """Serve with the ConfigMap source in the server's own event loop (the router and its backends live there)."""

    async def main() -> None:
        task = asyncio.create_task(source.run(), name="configmap-source")
        try:
            await server.serve()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:  # what Server.run() does
        runner.run(main())


if __name__ == "__main__":
    sys.exit(main())
