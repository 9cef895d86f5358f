"""DriftPolicy handlers: a daemon per DriftPolicy runs its controller; deletion takes its bins off the target."""

from __future__ import annotations

from typing import Any

import kopf

from sluice.api.base import GROUP, VERSION
from sluice.operator.context import OperatorContext
from sluice.operator.controllers.driftpolicy import DriftPolicyDaemon, release_target

PLURAL = "driftpolicies"


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, cancellation_backoff=1.0)
async def drift(
    *, name: str, namespace: str | None, uid: str, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Evaluates the policy until it is deleted or the operator stops; bad input never ends it."""
    context: OperatorContext = memo["sluice"]
    await DriftPolicyDaemon(context, name, namespace or "default", uid).run(stopped, body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def released(*, name: str, namespace: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """The target's router stops counting the policy's features when the policy goes."""
    context: OperatorContext = memo["sluice"]
    await release_target(context, name, namespace or "default", body)
