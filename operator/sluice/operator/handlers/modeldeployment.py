"""ModelDeployment handlers: one daemon per resource runs its controller (operator.controllers.modeldeployment)."""

from __future__ import annotations

from typing import Any

import kopf

from sluice.api.base import GROUP, VERSION
from sluice.operator.context import OperatorContext
from sluice.operator.controllers.modeldeployment import ModelDeploymentDaemon

PLURAL = "modeldeployments"


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, cancellation_backoff=1.0)
async def rollout(
    *,
    name: str,
    namespace: str | None,
    uid: str,
    body: kopf.Body,
    memo: Any,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Ticks the rollout until the resource is deleted or the operator stops; bad input never ends it.

    `body` is Kopf's live view of the resource, kept current by its watch: the daemon never GETs it.
    """
    context: OperatorContext = memo["sluice"]
    await ModelDeploymentDaemon(context, name, namespace or "default", uid).run(stopped, body)
