"""The Experiment controller loop: observe the target and the arms, `step`, carry out, save; the same everywhere.

It ticks every `poll_s`; a look (statistics, guardrails, bandit) happens every `spec.interval` while Running, and
at once while Pending (waiting for the target). The Generator handed to the core is seeded from the salt and the
look number, so a restarted controller repeats exactly the draws it would have made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import numpy as np

from sluice.api.base import parse_duration
from sluice.api.experiment import ExperimentPhase, ExperimentSpec, ExperimentStatus, MetricKind
from sluice.experiment.actions import Action
from sluice.experiment.core import step
from sluice.experiment.observations import ArmObservation, ExperimentCommand, Observations
from sluice.experiment.statistics import Sample
from sluice.providers.base import ArmsReading, MetricProvider, Window
from sluice.rollout.measurements import MetricError, NoData, Value
from sluice.rollout.statistics import histogram_quantile

log = logging.getLogger(__name__)

VARIANT_PLACEHOLDER = "$variant"  # in a promql guardrail's or primaryMetric's query: replaced by each arm's name
STAT_PLACEHOLDER = "$stat"  # in primaryMetric.query: replaced by count, sum and squares


@dataclass(frozen=True)
class TargetView:
    """What the platform knows about the target ModelDeployment and the arms' workloads."""

    exists: bool = True
    rollout: str | None = None  # a rollout in progress on the target, in words (the experiment waits)
    failed_arms: dict[str, str] = field(default_factory=dict)  # arm name -> why its model cannot serve
    command: ExperimentCommand | None = None


@runtime_checkable
class ExperimentPlatform(Protocol):
    """Where an experiment's arms live (the target's data plane) and where its status is kept."""

    async def target(self) -> TargetView:
        """The target's state now, the arms that cannot serve and any pending command."""
        ...

    async def carry_out(self, action: Action) -> None:
        """Do one action; raise to stop this tick (the next tick retries from the saved status)."""
        ...

    async def save(self, status: ExperimentStatus) -> None:
        """Persist the status (Kubernetes: the status subresource; local: memory and the terminal)."""
        ...


class ArmHealth:
    """Turns each arm's readiness into a load failure: at once when the platform says the arm failed, otherwise
    when it has not been ready for `deadline_s` (the target's analysis.progressDeadline, as a canary gets).

    Shared by the platforms so an arm fails by the same rule in the operator and in `sluice run`.
    """

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._since: dict[str, float] = {}  # arm -> when (monotonic seconds) it was first seen not ready

    def judge(self, arm: str, ready: bool, reason: str, failed: bool, now: float) -> str | None:
        """Why `arm` counts as unable to serve, or None (ready, or still within the deadline)."""
        if ready:
            self._since.pop(arm, None)
            return None
        since = self._since.setdefault(arm, now)
        if failed:
            return reason
        if now - since >= self.deadline_s:
            return f"not ready {now - since:.0f}s after its arm was deployed (progress deadline): {reason}"
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def look_seed(salt: str, look: int) -> list[int]:
    """The seed of look `look`: stable across restarts, different per experiment."""
    return [int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big"), look]


class ExperimentLoop:
    def __init__(
        self,
        spec: ExperimentSpec,
        platform: ExperimentPlatform,
        provider: MetricProvider,
        *,
        name: str,
        uid: str = "",
        namespace: str = "default",
        status: ExperimentStatus | None = None,
        generation: int = 1,
        poll_s: float = 1.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.spec, self.platform, self.provider = spec, platform, provider
        self.name, self.uid, self.namespace, self.generation = name, uid or name, namespace, generation
        self.status = status or ExperimentStatus()
        self.poll_s, self.clock = poll_s, clock
        self.last_reading: str | None = None  # why the last look had no numbers, if it had none
        self.outcomes_problem: str | None = None  # why primaryMetric.query could not be read at the last look

    def _due(self, now: datetime) -> bool:
        s = self.status
        if s.phase is not ExperimentPhase.RUNNING or s.last_look_at is None:
            return True
        return (now - s.last_look_at).total_seconds() >= parse_duration(self.spec.interval)

    async def _arms(self, failed: dict[str, str]) -> dict[str, ArmObservation]:
        if self.status.phase is not ExperimentPhase.RUNNING:
            return {}
        window = Window(model=self.spec.variants[0].model.name, interval_s=parse_duration(self.spec.interval))
        reading: ArmsReading = {}
        measured = await self.provider.arms(window, self.spec.primary_metric.name)
        self.outcomes_problem = None
        if isinstance(measured, Value):
            reading, self.last_reading = measured.value, None
        elif isinstance(measured, NoData | MetricError):
            self.last_reading = measured.reason if isinstance(measured, NoData) else measured.message
        queried = await self._queried_outcomes() if self.spec.primary_metric.query else {}
        arms: dict[str, ArmObservation] = {}
        for v in self.spec.variants:
            counters = reading.get(v.name)
            promql: dict[str, float] = {}
            for g in self.spec.guardrails:
                if g.type == "promql" and g.query:
                    got = await self.provider.query(g.query.replace(VARIANT_PLACEHOLDER, v.name))
                    if isinstance(got, Value):
                        promql[g.name] = got.value
            error_rate = latency = None
            outcomes = Sample(0.0, 0.0, 0.0)
            if counters is not None:
                outcomes = counters.outcomes
            if self.spec.primary_metric.query:
                outcomes = queried.get(v.name, Sample(0.0, 0.0, 0.0))
            if counters is not None:
                error_rate = counters.errors / counters.requests if counters.requests > 0 else None
                if counters.latency is not None:
                    latency = histogram_quantile(0.99, counters.latency.upper_bounds, counters.latency.counts)
            arms[v.name] = ArmObservation(
                outcomes=outcomes, error_rate=error_rate, latency_p99=latency, promql=promql, failed=failed.get(v.name)
            )
        return arms

    async def _queried_outcomes(self) -> dict[str, Sample]:
        """primaryMetric.query per arm: count, sum (and squares for a mean) through the provider's `query()`.

        An arm with no data for any statistic has no outcomes this look; an error (or a provider that cannot run
        PromQL) is kept in `outcomes_problem`, which the core shows as the condition OutcomesRead=False.
        """
        metric = self.spec.primary_metric
        assert metric.query is not None
        stats = ("count", "sum", "squares") if metric.kind is MetricKind.MEAN else ("count", "sum")
        out: dict[str, Sample] = {}
        for v in self.spec.variants:
            got: dict[str, float] = {}
            for stat in stats:
                promql = metric.query.replace(VARIANT_PLACEHOLDER, v.name).replace(STAT_PLACEHOLDER, stat)
                value = await self.provider.query(promql)
                if isinstance(value, MetricError):
                    self.outcomes_problem = f"spec.primaryMetric.query for {v.name} ($stat={stat}): {value.message}"
                    return {}
                if isinstance(value, Value):
                    got[stat] = value.value
            if len(got) == len(stats):
                out[v.name] = Sample(got["count"], got["sum"], got.get("squares", got["sum"]))  # 0/1: squares = sum
        return out

    async def tick(self) -> list[Action]:
        """One observe-decide-act round (a look when one is due); returns the actions carried out."""
        now = self.clock()
        if self.status.phase in (ExperimentPhase.CONCLUDED, ExperimentPhase.STOPPED, ExperimentPhase.FAILED):
            return []
        target = await self.platform.target()
        stopped = {v.name for v in self.status.variants if v.stopped}
        failed = {name: why for name, why in target.failed_arms.items() if name not in stopped}
        if not self._due(now) and target.command is None and not failed:
            return []
        observations = Observations(
            uid=self.uid,
            generation=self.generation,
            target_exists=target.exists,
            target_rollout=target.rollout,
            arms=await self._arms(failed),
            command=target.command,
            outcomes_problem=self.outcomes_problem,
        )
        rng = np.random.default_rng(look_seed(self.status.salt or self.uid, self.status.looks))
        status, actions = step(self.spec, self.status, observations, now, rng)
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
                log.exception("experiment tick failed; retrying in %.1fs", self.poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
