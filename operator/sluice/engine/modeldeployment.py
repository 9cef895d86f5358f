"""The ModelDeployment controller loop: observe, analyse when due, `step`, carry out, save; the same on every platform.

It ticks every `poll_s` (so readiness and commands are noticed quickly) and runs an analysis every
`analysis.interval` while a new version is live. The interval clock restarts when the new version gets its traffic,
and the provider is sampled once then as a baseline, so the first analysis covers exactly one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sluice.api.base import parse_duration
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, Phase
from sluice.engine.platform import Platform
from sluice.providers.base import MetricProvider, Window
from sluice.rollout import Observations, revision_hash, step
from sluice.rollout.actions import Action
from sluice.rollout.analysis import AnalysisOutcome, custom_queries, evaluate
from sluice.rollout.measurements import Measurement

log = logging.getLogger(__name__)

ANALYSED_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED})


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RolloutLoop:
    def __init__(
        self,
        spec: ModelDeploymentSpec,
        platform: Platform,
        provider: MetricProvider,
        *,
        name: str,
        namespace: str = "default",
        status: ModelDeploymentStatus | None = None,
        generation: int = 1,
        poll_s: float = 1.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.spec, self.platform, self.provider = spec, platform, provider
        self.name, self.namespace, self.generation = name, namespace, generation
        self.status = status or ModelDeploymentStatus()
        self.poll_s, self.clock = poll_s, clock
        self._window_start: datetime | None = None
        self._window_for: datetime | None = None  # canary_ready_at the window belongs to

    def set_spec(self, spec: ModelDeploymentSpec, generation: int) -> None:
        """A new spec (e.g. the YAML file changed); the next tick sees the new revision."""
        self.spec, self.generation = spec, generation

    async def _analysis(self, now: datetime) -> AnalysisOutcome | None:
        s = self.status
        if s.phase not in ANALYSED_PHASES or s.canary_ready_at is None:
            self._window_for = None
            return None
        window = Window(model=self.spec.model.name, interval_s=parse_duration(self.spec.analysis.interval))
        if self._window_for != s.canary_ready_at or self._window_start is None:
            await self.provider.sample(window)  # baseline: deltas start when the new version got its traffic
            self._window_for, self._window_start = s.canary_ready_at, now
            return None
        if (now - self._window_start).total_seconds() < window.interval_s:
            return None
        self._window_start = now
        sample = await self.provider.sample(window)
        custom: dict[str, Measurement[float]] = {}
        for check, query in custom_queries(self.spec, s, self.namespace, self.name).items():
            custom[check] = await self.provider.query(query)
        return evaluate(self.spec, s, sample, custom, now)

    async def tick(self) -> list[Action]:
        """One observe-decide-act round; returns the actions carried out."""
        now = self.clock()
        ready = await self.platform.readiness()
        analysis = await self._analysis(now)
        observations = Observations(
            revision=revision_hash(self.spec),
            generation=self.generation,
            stable_ready=ready.stable,
            canary_ready=ready.canary,
            analysis=analysis,
            command=await self.platform.pending_command(),
        )
        status, actions = step(self.spec, self.status, observations, now)
        for action in actions:
            await self.platform.carry_out(action)
        self.status = status
        await self.platform.save(status)
        return actions

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set. A failing tick is logged and retried from the last saved status."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("rollout tick failed; retrying in %.1fs", self.poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
