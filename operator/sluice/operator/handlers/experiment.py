"""Experiment handlers: a daemon per Experiment runs its controller; deletion takes its arms off the target."""

from __future__ import annotations

from typing import Any

import kopf

from sluice.api.base import GROUP, VERSION
from sluice.operator.context import OperatorContext
from sluice.operator.controllers.experiment import ExperimentDaemon, release_target

PLURAL = "experiments"


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, cancellation_backoff=1.0)
async def experiment(
    *, name: str, namespace: str | None, uid: str, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Ticks the experiment until it is deleted or the operator stops; bad input never ends it."""
    context: OperatorContext = memo["sluice"]
    await ExperimentDaemon(context, name, namespace or "default", uid).run(stopped, body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def released(*, name: str, namespace: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """The target's traffic returns to its stable version when the Experiment goes."""
    context: OperatorContext = memo["sluice"]
    await release_target(context, name, namespace or "default", body)
