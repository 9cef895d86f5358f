"""The local platform of a ModelDeployment: `LocalPlatform` drives a data plane on this machine (`sluice run`).

Roles are pointers to versions: the handle is told the whole ServingConfig each time, so what runs always matches
the rollout's status. Readiness is "the last update was accepted": the local data plane applies a config only once
its variants answer ready.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus
from sluice.engine.platform import Readiness
from sluice.engine.routing import Routing, serving_config
from sluice.rollout.actions import Action, EmitEvent
from sluice.rollout.observations import Command
from sluice.serving.config import ServingConfig

log = logging.getLogger(__name__)


class DataPlaneHandle(Protocol):
    """What `sluice.serving.launch.start_data_plane` returns, as far as the rollout needs it."""

    def update(self, config: ServingConfig) -> None: ...

    def stop(self) -> None: ...


@dataclass
class LocalPlatform:
    """Carries actions out on one local data plane; keeps the status and events in memory."""

    spec: ModelDeploymentSpec
    handle: DataPlaneHandle
    routing: Routing = field(default_factory=Routing)
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    events: list[EmitEvent] = field(default_factory=list)
    command: Command | None = None
    _healthy: bool = True

    async def readiness(self) -> Readiness:
        return Readiness(
            stable=self._healthy and self.routing.stable is not None,
            canary=self._healthy and self.routing.canary is not None,
        )

    async def carry_out(self, action: Action) -> None:
        r = self.routing
        if isinstance(action, EmitEvent):
            self.events.append(action)
            log.log(
                logging.WARNING if action.type == "Warning" else logging.INFO, "%s: %s", action.reason, action.message
            )
            return
        if not r.apply(action):
            return  # e.g. a version no role points at any more: the config below no longer names it
        if r.stable is None:
            return  # nothing to serve until the first version is deployed
        config = serving_config(self.spec, r)
        try:
            await asyncio.to_thread(self.handle.update, config)
        except Exception:
            self._healthy = False
            raise
        self._healthy = True

    async def save(self, status: ModelDeploymentStatus) -> None:
        self.status = status

    async def pending_command(self) -> Command | None:
        return self.command
