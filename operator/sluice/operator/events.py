"""core/v1 Events on a ModelDeployment: what `kubectl describe` and `kubectl get events` show.

One Event per rollout decision (phase change, promotion, rollback, refused input), named `<object>.<hex>` as the
Kubernetes event recorder names them. No aggregation: rollout events are rare and each one carries its own values.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from sluice.operator.kube import KubeClient, Obj
from sluice.operator.render import Owner

COMPONENT = "sluice-operator"
MAX_MESSAGE = 1024  # the API server refuses longer event messages


def event_object(owner: Owner, type_: Literal["Normal", "Warning"], reason: str, message: str) -> Obj:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    micro = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{owner.name}.{time.time_ns():x}", "namespace": owner.namespace},
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
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": micro,
        "count": 1,
    }


async def emit(client: KubeClient, owner: Owner, type_: Literal["Normal", "Warning"], reason: str, message: str) -> Obj:
    """Post one Event about `owner`."""
    return await client.create(event_object(owner, type_, reason, message))
