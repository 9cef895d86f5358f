"""The router as its own process (in front of tritonserver or any v2 server): `HttpServer` serving `build_app`.

    python -m sluice.serving.host_standalone --config serving.json --port 8080 [--variant-backend triton]
        [--host 0.0.0.0] [--grpc-port 8081]
        [--watch-configmap NS/NAME [--kube-api URL]]

The config file is a `ServingConfig` as JSON or YAML. ``--variant-backend`` says how the router reaches each
version (http, triton, onnx: `sluice.serving.backends.VARIANT_BACKENDS`); it is not `--backend` of `sluice serve`,
which says what serves the versions (ray, triton, onnx). A new kind plugs in through the registry in
`backends/__init__.py`. Weights change live through `PUT /admin/config`
(bearer token from $SLUICE_ADMIN_TOKEN_FILE or $SLUICE_ADMIN_TOKEN; without either a random one is written to a
0600 file whose path is logged at start), or from a ConfigMap with ``--watch-configmap`` (the operator's
way, see `sluice.serving.configsource`; the API is the pod's own unless ``--kube-api`` names one, with the bearer
token from $SLUICE_KUBE_TOKEN when set). HTTP limits and timeouts come from $SLUICE_HTTP_* (`ServerLimits`,
docs/serving/security.md). ``--grpc-port`` also serves the KServe v2 gRPC API (off unless given; see
`sluice.serving.grpcserver`). SIGTERM or SIGINT stops accepting, lets in-flight requests finish
(bounded by the request timeout), exits 0. The event loop is uvloop's when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from sluice.serving import admin as admin_auth
from sluice.serving.backends import VARIANT_BACKENDS, make_variant_backend
from sluice.serving.config import ServingConfig
from sluice.serving.configsource import ConfigMapSource, KubeApi, parse_target
from sluice.serving.httpserver import HttpServer, ServerLimits
from sluice.serving.router import Router

if TYPE_CHECKING:
    from sluice.serving.grpcserver import GrpcServer

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
    factory = partial(make_variant_backend, kind)
    backends = {v.name: factory(v, config) for v in config.variants}
    return Router(config, backends, factory=factory)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when installed (it comes with the serving extra), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.serving.host_standalone", description="Sluice router")
    parser.add_argument("--config", required=True, type=Path, help="ServingConfig as JSON or YAML")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a pod)")
    parser.add_argument(
        "--variant-backend",
        default="http",
        choices=sorted(VARIANT_BACKENDS),
        help="how the router reaches each version's model (default: http, any v2 REST server at variant.endpoint)",
    )
    parser.add_argument("--grpc-port", type=int, help="also serve the KServe v2 gRPC API on this port (default: off)")
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
        limits = ServerLimits.from_env()
        config = load_config(args.config)
        router = build_router(config, args.variant_backend)
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
    auth = admin_auth.for_process("router")
    if auth.generated:
        log.info("admin API token written to %s (send it as 'Authorization: Bearer <token>')", auth.token_file)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            server = HttpServer.for_router(router, args.host, args.port, admin=auth, limits=limits)
            grpc = None
            if args.grpc_port is not None:
                from sluice.serving.grpcserver import GrpcServer

                grpc = GrpcServer(server.app.plane, args.host, args.grpc_port)
            runner.run(serve(server, source, grpc))
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        admin_auth.remove_token_file(auth)
    return 0


async def serve(server: HttpServer, source: ConfigMapSource | None = None, grpc: GrpcServer | None = None) -> None:
    """Serve until SIGTERM/SIGINT, with the ConfigMap source and gRPC server (if any) in the router's loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(source.run(), name="configmap-source") if source is not None else None
    try:
        await server.start()
        log.info("Sluice router listening on http://%s:%d", server.host, server.port)
        if grpc is not None:
            await grpc.start()
            log.info("Sluice router serving gRPC on %s:%d", grpc.host, grpc.port)
        await stop.wait()
        log.info("stopping: draining requests in flight")
    finally:
        if grpc is not None:
            await grpc.shutdown()
        await server.shutdown()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


if __name__ == "__main__":
    sys.exit(main())
