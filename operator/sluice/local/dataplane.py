"""A Platform over a local data plane handle (`update(ServingConfig)` / `stop()`), as `sluice run` starts one.

Roles are pointers to versions: the handle is told the whole ServingConfig each time, so what runs always matches
the rollout's status. Readiness is "the last update was accepted": the local data plane applies a config only once
its variants answer ready.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sluice.api.base import parse_duration
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, VersionRef
from sluice.local.platform import Readiness
from sluice.rollout.actions import Action, DeployVersion, EmitEvent, PromoteCanary, ScaleDown, SetTraffic
from sluice.rollout.observations import Command
from sluice.serving.config import CANARY, STABLE, BatchingConfig, MirrorConfig, ServingConfig, VariantConfig

log = logging.getLogger(__name__)


class DataPlaneHandle(Protocol):
    """What `sluice.serving.launch.start_data_plane` returns, as far as the rollout needs it."""

    def update(self, config: ServingConfig) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Routing:
    """The roles and split the data plane should serve."""

    stable: VersionRef | None = None
    canary: VersionRef | None = None
    canary_weight: int = 0
    mirror_percent: int = 0

    def apply(self, action: Action) -> bool:
        """Change the roles and split as `action` says; False when it changes nothing here (a ScaleDown of a
        version no role points at, an action that is not about routing). Shared by every platform."""
        if isinstance(action, DeployVersion):
            if action.role == STABLE:
                self.stable = action.model
            else:
                self.canary, self.canary_weight, self.mirror_percent = action.model, 0, 0
        elif isinstance(action, SetTraffic):
            self.canary_weight, self.mirror_percent = action.canary_weight, action.mirror_percent
        elif isinstance(action, PromoteCanary):
            self.stable, self.canary, self.canary_weight, self.mirror_percent = action.model, None, 0, 0
        elif isinstance(action, ScaleDown) and self.canary is not None and self.canary.version == action.version:
            self.canary, self.canary_weight, self.mirror_percent = None, 0, 0
        else:
            return False
        return True


def serving_config(spec: ModelDeploymentSpec, routing: Routing) -> ServingConfig:
    """The data plane's config for `routing`; raises ValueError when nothing is deployed yet."""
    if routing.stable is None:
        raise ValueError("no stable version to serve yet")
    variants = [_variant(STABLE, routing.stable, 100 - (routing.canary_weight if routing.canary else 0))]
    mirror = None
    if routing.canary is not None:
        variants.append(_variant(CANARY, routing.canary, routing.canary_weight))
        if routing.mirror_percent:
            mirror = MirrorConfig(variant=CANARY, percent=routing.mirror_percent)
    t, b = spec.traffic, spec.batching
    return ServingConfig(
        model_name=spec.model.name,
        variants=tuple(variants),
        mirror=mirror,
        sticky_header=t.sticky_header,
        override_header=t.override_header,
        fallback_to_stable=t.fallback_to_stable,
        request_timeout_s=parse_duration(t.request_timeout),
        max_request_bytes=t.max_request_bytes,
        batching=BatchingConfig(
            enabled=b.enabled,
            max_batch_size=b.max_batch_size,
            max_wait_ms=b.max_wait_ms,
            preferred_batch_sizes=tuple(b.preferred_batch_sizes),
        ),
        gpus_per_replica=float(spec.resources.gpu),
    )


def _variant(name: str, ref: VersionRef, weight: int) -> VariantConfig:
    return VariantConfig(name=name, version=ref.version, uri=ref.uri, sha256=ref.sha256, weight=weight)


@dataclass
class DataPlanePlatform:
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
