"""The status subresource: writing it only when it changed, the operator's own conditions, and bad input.

The status is the operator's only memory (crash-consistency.md): what runs is rebuilt from it after a restart, and
it is written before the children follow it (write-ahead), so the children never get ahead of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluice.api.base import API_VERSION
from sluice.api.status import ModelDeploymentStatus
from sluice.operator.kube import KubeClient, Obj, merge_diff
from sluice.operator.render import Owner
from sluice.rollout.conditions import set_condition

KIND = "ModelDeployment"
# Operator-level condition types (the rollout core owns Ready, Progressing, Degraded, RolledBack, AnalysisNoData).
SPEC_VALID = "SpecValid"
BACKEND_AVAILABLE = "BackendAvailable"
MODEL_REACHABLE = "ModelReachable"
INSUFFICIENT_GPU = "InsufficientGPU"


class BadInput(Exception):
    """The spec cannot be carried out as written; `condition` False with a message naming the field."""

    def __init__(self, condition: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition, self.reason, self.message = condition, reason, message


def status_dict(status: ModelDeploymentStatus) -> Obj:
    out: Obj = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def rollout_key(status: ModelDeploymentStatus) -> str:
    """A digest of the rollout state in `status` (conditions and the ready count left out: they are observations)."""
    return status.digest(exclude={"conditions", "ready"})


@dataclass
class StatusWriter:
    """Merge-patches the status subresource, only when it differs from what was last written or observed."""

    client: KubeClient
    owner: Owner
    last: Obj = field(default_factory=dict)
    writes: int = 0

    async def write(self, status: ModelDeploymentStatus) -> bool:
        new = status_dict(status)
        if new == self.last:
            return False
        patch = merge_diff(self.last, new)
        await self.client.patch_status(API_VERSION, KIND, self.owner.namespace, self.owner.name, {"status": patch})
        self.last, self.writes = new, self.writes + 1
        return True


def put_condition(
    status: ModelDeploymentStatus, type_: str, value: bool, reason: str, message: str, *, generation: int | None
) -> None:
    """Set an operator-level condition on `status` in place (transition time kept while the value holds)."""
    status.conditions = set_condition(
        status.conditions,
        type_,
        value,
        reason=reason,
        message=message,
        now=datetime.now(UTC),
        generation=generation,
    )
