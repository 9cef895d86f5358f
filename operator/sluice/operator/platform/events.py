"""core/v1 Events on a ModelDeployment: what `kubectl describe` and `kubectl get events` show.

One Event per rollout decision (phase change, promotion, rollback, refused input). Its name is derived from what
identifies the transition (`key`: the owner's uid, the status the decision was taken from, the reason), not from
the clock: an operator killed after posting an Event but before saving the status takes the same decision again
after the restart, posts under the same name, meets 409 AlreadyExists and so posts nothing twice. No aggregation:
rollout events are rare and each one carries its own values.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Literal

from sluice.operator.kube import ApiError, KubeClient, Obj
from sluice.operator.render import Owner

COMPONENT = "sluice-operator"
MAX_MESSAGE = 1024  # the API server refuses longer event messages
EventType = Literal["Normal", "Warning"]


def event_name(owner: Owner, key: str | None) -> str:
    """`<object>.<16 hex>` as the Kubernetes event recorder names them: a digest of uid and `key`, or (no key: an
    Event that may be posted again after a restart) the clock."""
    if key is None:
        return f"{owner.name}.{time.time_ns():x}"
    digest = hashlib.sha256(f"{owner.uid}\0{key}".encode()).hexdigest()[:16]
    return f"{owner.name}.{digest}"


def event_object(owner: Owner, type_: EventType, reason: str, message: str, *, key: str | None) -> Obj:
    now = datetime.now(UTC)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(owner, key), "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": type_,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "action": reason,
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "count": 1,
    }


async def emit(
    client: KubeClient, owner: Owner, type_: EventType, reason: str, message: str, *, key: str | None = None
) -> bool:
    """Post one Event about `owner` for the transition `key`; False when it was posted before (409).

    Without a key the name comes from the clock (the Experiment controller's Events: not crash-consistent yet)."""
    try:
        await client.create(event_object(owner, type_, reason, message, key=key))
    except ApiError as exc:
        if exc.code != 409:
            raise
        return False
    return True
