"""The local platform of a ModelDeployment: `LocalPlatform` drives a data plane on this machine (`sluice run`).

Roles are pointers to versions: the handle is told the whole ServingConfig each time, so what runs always matches
the rollout's status. Readiness is "the last update was accepted": the local data plane applies a config only once
its variants answer ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Protocol

from sluice.api.model_deployment import ModelDeployment, ModelDeploymentSpec
from sluice.api.status import TERMINAL_PHASES, ModelDeploymentStatus, Phase
from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.platform import Readiness
from sluice.engine.routing import Routing, serving_config
from sluice.local.traffic import Traffic
from sluice.providers.factory import create_provider
from sluice.rollout.actions import Action, EmitEvent
from sluice.rollout.observations import Command
from sluice.serving.config import ServingConfig

log = logging.getLogger(__name__)


class DataPlaneHandle(Protocol):
    """What `sluice.serving.launch.start_data_plane` returns, as far as the rollout needs it."""

    def update(self, config: ServingConfig) -> None: ...

    def stop(self) -> None: ...


class RunningPlane(DataPlaneHandle, Protocol):
    """A started local data plane as `sluice run` hands it over: its handle plus where it answers."""

    @property
    def url(self) -> str: ...

    @property
    def metrics_url(self) -> str: ...


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


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _view(status: ModelDeploymentStatus) -> str:
    canary = status.canary.version if status.canary else "-"
    stable = status.stable.version if status.stable else "-"
    line = f"{status.phase.value:<12} stable={stable} canary={canary} weight={status.canary_weight}%"
    if status.mirror_percent:
        line += f" mirror={status.mirror_percent}%"
    if status.last_analysis is not None:
        checks = " ".join(
            f"{r.name}={_fmt(r.value)}({r.verdict.value}{' ' + r.threshold if r.threshold else ''})"
            for r in status.last_analysis.results
        )
        line += f" | {checks}"
    return line + (f" | {status.message}" if status.message else "")


async def _drive(
    loop: RolloutLoop, until: frozenset[Phase], timeout_s: float, stop: asyncio.Event, quiet: bool
) -> bool:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline and not stop.is_set():
        await loop.tick()
        view = _view(loop.status)
        if view != last and not quiet:
            print(f"{time.strftime('%H:%M:%S')} {view}", flush=True)
            last = view
        if loop.status.phase in until:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), loop.poll_s)
    return False


async def run_rollout(
    docs: list[ModelDeployment], plane: RunningPlane, *, load_rps: float, timeout_s: float, quiet: bool
) -> ModelDeploymentStatus:
    """`sluice run` for ModelDeployments: the first document becomes stable, each later one is rolled out in turn.

    Returns the final status; stops early (status as it stands) on SIGINT/SIGTERM or when a rollout outlasts
    `timeout_s`.
    """
    first = docs[0].spec
    platform = LocalPlatform(first, plane)
    provider = create_provider(first.analysis.provider, metrics_url=plane.metrics_url)
    loop = RolloutLoop(first, platform, provider, name=docs[0].metadata.name, poll_s=0.5)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    traffic = Traffic(plane.url, first.model.name, load_rps) if load_rps > 0 else None
    task = asyncio.create_task(traffic.run(stop)) if traffic else None
    try:
        if not await _drive(loop, frozenset({Phase.STABLE, *TERMINAL_PHASES}), timeout_s, stop, quiet):
            return loop.status
        for generation, doc in enumerate(docs[1:], start=2):
            if not quiet:
                print(
                    f"applying {doc.metadata.name} model {doc.spec.model.version} ({doc.spec.rollout.strategy.value})"
                )
            loop.set_spec(doc.spec, generation)
            platform.spec = doc.spec
            await loop.tick()  # the new revision leaves the previous terminal phase
            if not await _drive(loop, TERMINAL_PHASES, timeout_s, stop, quiet):
                break
    finally:
        stop.set()
        if task is not None:
            await task
        await provider.close()
        if traffic is not None and not quiet:
            print(f"traffic: {traffic.tally.summary()}")
    return loop.status
