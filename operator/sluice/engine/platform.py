"""The seam the ModelDeployment loop drives: `LocalPlatform` (sluice.local) and `KubePlatform` (sluice.operator)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sluice.api.status import ModelDeploymentStatus
from sluice.rollout.actions import Action
from sluice.rollout.observations import Command


@dataclass(frozen=True)
class Readiness:
    stable: bool
    canary: bool


@runtime_checkable
class Platform(Protocol):
    """Where a rollout's actions happen and its status is kept."""

    async def readiness(self) -> Readiness:
        """Whether the stable and canary workloads answer ready now."""
        ...

    async def carry_out(self, action: Action) -> None:
        """Do one action; raise to stop the loop's current tick (the next tick retries from the saved status)."""
        ...

    async def save(self, status: ModelDeploymentStatus) -> None:
        """Persist the status (Kubernetes: the status subresource; local: memory and the terminal)."""
        ...

    async def pending_command(self) -> Command | None:
        """The latest manual command (promote/abort/retry/undo), or None; step() applies each nonce once."""
        ...
