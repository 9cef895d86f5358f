"""core/v1 Events on Sluice's objects: what `kubectl describe` and `kubectl get events` show.

One Event per decision (phase change, promotion, rollback, drift state change, refused input). Its name is derived
from what identifies the transition (`key`: the owner's uid, the status the decision was taken from, the reason),
never from the clock: an operator killed after posting an Event but before saving the status takes the same
decision again after the restart, posts under the same name, meets 409 AlreadyExists and so posts nothing twice.
No aggregation: these Events are rare and each one carries its own values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sluice.operator.kube import ApiError, KubeClient, Obj
from sluice.operator.render import Owner

COMPONENT = "sluice-operator"
MAX_MESSAGE = 1024  # the API server refuses longer event messages
EventType = Literal["Normal", "Warning"]


def event_name(owner: Owner, key: str) -> str:
    """`<object>.<16 hex>` as the Kubernetes event recorder names them: a digest of the owner's uid and `key`."""
    digest = hashlib.sha256(f"{owner.uid}\0{key}".encode()).hexdigest()[:16]
    return f"{owner.name}.{digest}"


@dataclass
class DecisionKeys:
    """Keys for the Events a controller posts while acting on a decision, before it saves the status that follows:
    `<saved status digest>/<n>/<reason>`, n counting the Events since that save. Taken again from the same saved
    status after a restart, the decision posts under the same keys."""

    saved: str = ""
    posted: int = 0

    def saved_as(self, digest: str) -> None:
        self.saved, self.posted = digest, 0

    def begin(self) -> None:
        """A new decision (a tick, or its retry after a failure) numbers its Events from 0 again."""
        self.posted = 0

    def next(self, reason: str) -> str:
        key = f"{self.saved}/{self.posted}/{reason}"
        self.posted += 1
        return key


def event_object(owner: Owner, type_: EventType, reason: str, message: str, *, key: str) -> Obj:
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


async def emit(client: KubeClient, owner: Owner, type_: EventType, reason: str, message: str, *, key: str) -> bool:
    """Post one Event about `owner` for the transition `key`; False when it was posted before (409)."""
    try:
        await client.create(event_object(owner, type_, reason, message, key=key))
    except ApiError as exc:
        if exc.code != 409:
            raise
        return False
    return True
