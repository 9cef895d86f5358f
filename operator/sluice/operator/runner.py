"""Run the operator in-process: Kopf with Sluice's handlers, the health endpoint and the metrics server.

With leader election on (`SLUICE_LEADER_ELECTION=true`, the chart's `replicaCount` > 1) a replica stands by,
answering /healthz, until it holds the Lease (leader.py); only then does Kopf start, and it keeps the Lease renewed
while Kopf runs. A clean stop releases it after Kopf has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from sluice.operator import handlers
from sluice.operator.config import OperatorConfig
from sluice.operator.context import OperatorContext
from sluice.operator.kube import USER_AGENT, KubeClient
from sluice.operator.leader import LeaderElector

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
    identity = config.pod_name or f"{socket.gethostname()}-{os.getpid()}"
    # The identity in the User-Agent puts each replica's writes apart in the API server's audit log.
    client = KubeClient.from_config(user_agent=f"{USER_AGENT} ({identity})")
    context = OperatorContext(client=client, config=config, metrics_url=metrics_url, poll_s=poll_s)
    server, thread = start_http_server(config.metrics_port, addr=bind, registry=context.metrics.registry)
    log.info(
        "sluice operator %s: %s; /healthz on %s:%d, /metrics on %s:%d",
        identity,
        f"namespaces {', '.join(namespaces)}" if namespaces else "cluster-wide",
        bind,
        config.health_port,
        bind,
        config.metrics_port,
    )
    elector = None if config.leader_election is None else LeaderElector(client, config.leader_election, identity)
    stop = asyncio.Event()
    keeper: asyncio.Task[None] | None = None
    try:
        if elector is not None:
            await stand_by(elector, bind, config.health_port)
            client.before_write = elector.fence
            keeper = asyncio.create_task(elector.keep(stop))
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=True,
            liveness_endpoint=f"http://{bind}:{config.health_port}/healthz",
            memo=kopf.Memo(sluice=context),
        )
    finally:
        stop.set()
        if keeper is not None:
            await keeper
        if elector is not None:
            client.before_write = None
            await elector.release()
        server.shutdown()
        thread.join(timeout=5)
        await context.close()


async def stand_by(elector: LeaderElector, bind: str, port: int) -> None:
    """Answer /healthz ("standby") until this replica holds the Lease; a stop signal ends the process meanwhile."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="standby")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    log.info("standing by for Lease %s/%s", elector.settings.namespace, elector.settings.name)
    try:
        await elector.acquire(asyncio.Event())
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()


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
