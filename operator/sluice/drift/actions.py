"""What the drift core asks a platform to do. Small frozen values, carried out in list order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes-style Event: type Normal or Warning, a CamelCase reason, a sentence."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class RollbackTarget:
    """Undo the target ModelDeployment to its previous promoted revision (its own `undo` command)."""

    target: str
    reason: str


@dataclass(frozen=True)
class CreateRetrainJob:
    """Create a batch/v1 Job named `name` from the policy's jobTemplate, owned by the policy, with `env` added to
    every container (SLUICE_* variables describing the drift)."""

    name: str
    env: tuple[tuple[str, str], ...]


Action = EmitEvent | RollbackTarget | CreateRetrainJob

__all__ = ["Action", "CreateRetrainJob", "EmitEvent", "RollbackTarget"]
