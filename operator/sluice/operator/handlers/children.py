"""Watches over the children the operator reads back (RayServices, Deployments) and over ModelDeployments.

Kopf's watch streams keep `OperatorContext.children` current, so readiness reads the live children from memory
instead of a GET per child per tick; any change wakes the owning ModelDeployment's daemon at once. A kind whose
CRD is not installed is simply not watched: its entries stay absent and the apply path reports the missing API.
"""

from __future__ import annotations

from typing import Any

import kopf

from sluice.api.base import GROUP, VERSION
from sluice.operator.context import OperatorContext
from sluice.operator.render.meta import MANAGED_BY_LABEL, MANAGER

OURS = {MANAGED_BY_LABEL: MANAGER}


def remember(context: OperatorContext, kind: str, event: Any) -> None:
    """Store (or mark deleted) one watched child and wake the daemon of the ModelDeployment that owns it."""
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    key = (kind, meta.get("namespace") or "", meta.get("name") or "")
    context.children[key] = {} if event.get("type") == "DELETED" else obj
    for ref in meta.get("ownerReferences") or []:
        context.wake(str(ref.get("uid")))


@kopf.on.event("ray.io", "v1", "rayservices", labels=OURS)
def rayservice_event(event: Any, memo: Any, **_: Any) -> None:
    remember(memo["sluice"], "RayService", event)


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
def deployment_event(event: Any, memo: Any, **_: Any) -> None:
    remember(memo["sluice"], "Deployment", event)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def model_deployment_event(uid: str, memo: Any, **_: Any) -> None:
    """A spec, annotation or status change: the daemon looks again now rather than at its next poll."""
    context: OperatorContext = memo["sluice"]
    context.wake(uid)
