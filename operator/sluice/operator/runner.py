"""Run the operator in-process: Kopf with Sluice's handlers, the health endpoint and the metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from sluice.operator import handlers
from sluice.operator.config import OperatorConfig
from sluice.operator.context import OperatorContext
from sluice.operator.kube import KubeClient

log = logging.getLogger(__name__)


async def serve(
    config: OperatorConfig,
    namespaces: Sequence[str],
    *,
    bind: str = "0.0.0.0",
    metrics_url: str | None = None,
    poll_s: float = 1.0,
) -> None:
    """Until SIGTERM/SIGINT (Kopf installs the signal handlers): handlers, /healthz and /metrics."""
    assert handlers.modeldeployment  # importing the package registered the handlers with Kopf
    client = KubeClient.from_config()
    context = OperatorContext(client=client, config=config, metrics_url=metrics_url, poll_s=poll_s)
    server, thread = start_http_server(config.metrics_port, addr=bind, registry=context.metrics.registry)
    log.info(
        "sluice operator: %s; /healthz on %s:%d, /metrics on %s:%d",
        f"namespaces {', '.join(namespaces)}" if namespaces else "cluster-wide",
        bind,
        config.health_port,
        bind,
        config.metrics_port,
    )
    try:
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=True,
            liveness_endpoint=f"http://{bind}:{config.health_port}/healthz",
            memo=kopf.Memo(sluice=context),
        )
    finally:
        server.shutdown()
        thread.join(timeout=5)
        await context.close()


def run(
    config: OperatorConfig,
    namespaces: Sequence[str],
    *,
    bind: str = "0.0.0.0",
    metrics_url: str | None = None,
    poll_s: float = 1.0,
) -> int:
    from kubernetes.config.config_exception import ConfigException

    try:
        asyncio.run(serve(config, namespaces, bind=bind, metrics_url=metrics_url, poll_s=poll_s))
    except ConfigException as exc:
        log.error("no Kubernetes credentials (KUBECONFIG, ~/.kube/config or in-cluster): %s", exc)
        return 2
    return 0
