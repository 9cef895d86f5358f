"""What the decision core asks a platform to do. Small frozen values, carried out in list order.

Workloads are keyed by model version; the two roles (stable, canary) point at them. A platform that carries
these out keeps the invariant the core relies on: the stable role gets `100 - canary_weight` percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sluice.api.status import VersionRef

Role = Literal["stable", "canary"]
STABLE: Role = "stable"
CANARY: Role = "canary"


@dataclass(frozen=True)
class DeployVersion:
    """Make `role` serve `model`, starting its workload if none runs for that version yet."""

    role: Role
    model: VersionRef


@dataclass(frozen=True)
class SetTraffic:
    """Route `canary_weight` percent to the canary (the rest to stable) and mirror `mirror_percent` to it."""

    canary_weight: int
    mirror_percent: int


@dataclass(frozen=True)
class PromoteCanary:
    """The canary's workload becomes the stable role; the canary role is left empty."""

    model: VersionRef


@dataclass(frozen=True)
class ScaleDown:
    """Stop the workload of `version` (and clear any role still pointing at it)."""

    version: str


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes-style Event: type Normal or Warning, a CamelCase reason, a sentence."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = DeployVersion | SetTraffic | PromoteCanary | ScaleDown | EmitEvent
