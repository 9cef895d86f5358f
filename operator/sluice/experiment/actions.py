"""What the experiment core asks a platform to do. Small frozen values, carried out in list order.

The platform never writes the target's own rollout state: it hands the arms to the target ModelDeployment's data
plane (one weighted version per arm, sticky by the hashed header) and takes them away again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sluice.api.status import VersionRef


@dataclass(frozen=True)
class Arm:
    """One arm on the data plane: the variant's name, the model version it serves, its percent of enrolled units."""

    name: str
    model: VersionRef
    weight: int


@dataclass(frozen=True)
class DeployArms:
    """Start a workload per arm on the target's data plane and route enrolled units (sticky by `header` hashed
    with `salt`) by the arms' weights; requests without the header keep going to the control arm."""

    arms: tuple[Arm, ...]
    header: str
    salt: str


@dataclass(frozen=True)
class SetWeights:
    """Change the arms' weights in place (bandit re-weighting, a stopped arm); they sum to 100."""

    weights: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class EndArms:
    """Take the arms off the data plane: the target's stable version serves all traffic again."""


@dataclass(frozen=True)
class PromoteVariant:
    """Make `model` the target ModelDeployment's spec.model, so its own rollout (and analysis) carries it out."""

    name: str
    model: VersionRef


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes-style Event: type Normal or Warning, a CamelCase reason, a sentence."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = DeployArms | SetWeights | EndArms | PromoteVariant | EmitEvent
