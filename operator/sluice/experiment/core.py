"""The experiment decision core: `step(spec, status, observations, now, rng) -> (status', actions)`.

Pure: no I/O and no clock; the only randomness is the seeded numpy Generator passed in (posterior draws for
the probability of being best and for Thompson sampling). Everything an experiment remembers lives in the
returned status (phase, salt, per-arm weights, stopped arms, the running always-valid p-values), so a platform
can restart at any point and continue from the stored status alone.

One call is one look: it waits for the target, or starts the arms, or checks limits, guardrails and the
statistics, then re-weights (Thompson) or ends the experiment by its end policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np

from sluice.api.base import parse_duration, set_condition
from sluice.api.experiment import (
    Allocation,
    EndPolicy,
    ExperimentPhase,
    ExperimentSpec,
    ExperimentStatus,
    VariantStats,
)
from sluice.api.status import VersionRef
from sluice.experiment.actions import Action, Arm, DeployArms, EmitEvent, EndArms, PromoteVariant, SetWeights
from sluice.experiment.analysis import Analysis, evaluate
from sluice.experiment.observations import ExperimentCommand, Observations
from sluice.experiment.statistics import Sample

TERMINAL = frozenset({ExperimentPhase.CONCLUDED, ExperimentPhase.STOPPED, ExperimentPhase.FAILED})

# condition types
TARGET_READY = "TargetReady"  # False while the target is missing or mid-rollout (the message names the rollout)
ARMS_HEALTHY = "ArmsHealthy"  # False while an arm is stopped (the message names spec.variants[i] and why)
RUNNING = "Running"  # True while the experiment is collecting samples
CONCLUDED = "Concluded"  # True once a terminal phase was reached; reason says which
SPEC_ACCEPTED = "SpecAccepted"  # False while spec.variants differs from the running arms (the experiment holds)
OUTCOMES_READ = "OutcomesRead"  # False while the outcomes cannot be read (shown only once it was ever False)


def step(
    spec: ExperimentSpec,
    status: ExperimentStatus,
    observations: Observations,
    now: datetime,
    rng: np.random.Generator,
) -> tuple[ExperimentStatus, list[Action]]:
    """Decide what happens at this look. Returns the new status (the input is not modified) and the actions."""
    # The per-arm entries are changed in place below, so they are copied; conditions are replaced, never mutated.
    # (A deep copy cost half of a look's time in the decision-quality benchmark.)
    own = status.model_copy(update={"variants": [v.model_copy() for v in status.variants]})
    own.conditions = list(status.conditions)
    run = _Step(spec, own, observations, now, rng)
    run.run()
    return run.s, run.actions


def largest_remainder(shares: dict[str, float], total: int = 100) -> dict[str, int]:
    """Integer percents proportional to `shares` that sum to exactly `total` (Hamilton's method)."""
    mass = sum(shares.values())
    if mass <= 0:
        shares = dict.fromkeys(shares, 1.0)
        mass = float(len(shares))
    exact = {k: total * v / mass for k, v in shares.items()}
    out = {k: int(v) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], list(exact).index(k)))[:left]:
        out[k] += 1
    return out


def thompson_weights(shares: dict[str, float], floor: int) -> dict[str, int]:
    """Percents from posterior probabilities of being best, each running arm keeping at least `floor`."""
    free = 100 - floor * len(shares)
    exact = {k: floor + free * v / (sum(shares.values()) or 1.0) for k, v in shares.items()}
    return largest_remainder(exact)


class _Step:
    def __init__(
        self, spec: ExperimentSpec, s: ExperimentStatus, obs: Observations, now: datetime, rng: np.random.Generator
    ) -> None:
        self.spec, self.s, self.obs, self.now, self.rng = spec, s, obs, now, rng
        self.actions: list[Action] = []
        self.control = spec.variants[0].name

    # -- plumbing -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.s
        if s.phase in TERMINAL:
            return  # a terminal phase never changes; the status is left as it is
        s.observed_generation = self.obs.generation
        if not s.variants or s.phase is ExperimentPhase.PENDING:  # nothing observed yet: the spec's arms as they are
            s.variants = [
                VariantStats(name=v.name, version=v.model.version, weight=v.weight) for v in self.spec.variants
            ]
        self.control = s.variants[0].name
        if s.phase is ExperimentPhase.PENDING:
            self._pending()
        else:
            self._look()

    def _event(self, warning: bool, reason: str, message: str) -> None:
        self.actions.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def _condition(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.s.conditions = set_condition(
            self.s.conditions,
            type_,
            value,
            reason=reason,
            message=message,
            now=self.now,
            generation=self.obs.generation,
        )

    def _arm(self, name: str) -> VariantStats:
        return next(v for v in self.s.variants if v.name == name)

    def _active(self) -> list[str]:
        return [v.name for v in self.s.variants if not v.stopped]

    def _weights(self) -> dict[str, int]:
        return {v.name: v.weight for v in self.s.variants}

    def _set_weights(self, weights: dict[str, int]) -> None:
        if weights == self._weights():
            return
        for v in self.s.variants:
            v.weight = weights.get(v.name, 0)
        self.actions.append(SetWeights(tuple((v.name, v.weight) for v in self.s.variants)))

    # -- waiting for the target, starting the arms --------------------------------------------------------------
    def _pending(self) -> None:
        s, obs = self.s, self.obs
        target = self.spec.target.name
        if not obs.target_exists:
            s.message = f"waiting for ModelDeployment {target}: it does not exist"
            self._condition(TARGET_READY, False, "TargetMissing", s.message)
            return
        if obs.target_rollout is not None:
            s.message = f"waiting for ModelDeployment {target}: {obs.target_rollout}"
            self._condition(TARGET_READY, False, "TargetRollingOut", s.message)
            return
        self._condition(TARGET_READY, True, "TargetStable", f"ModelDeployment {target} is stable")
        s.salt = s.salt or self.spec.assignment.salt or obs.uid or self.spec.target.name
        s.started_at, s.phase = self.now, ExperimentPhase.RUNNING
        arms = tuple(
            Arm(v.name, VersionRef(version=v.model.version, uri=v.model.uri, sha256=v.model.sha256), v.weight)
            for v in self.spec.variants
        )
        self.actions.append(DeployArms(arms, self.spec.assignment.header, s.salt))
        s.message = "arms deployed: " + ", ".join(f"{a.name} {a.weight}%" for a in arms)
        self._condition(RUNNING, True, "ArmsDeployed", s.message)
        self._condition(ARMS_HEALTHY, True, "AllArmsRunning", "every arm is serving")
        self._event(False, "ExperimentStarted", s.message)

    # -- a look ----------------------------------------------------------------------------------------------
    def _look(self) -> None:
        s, obs = self.s, self.obs
        s.looks += 1
        s.last_look_at = self.now
        if obs.command is ExperimentCommand.STOP:
            self._finish(ExperimentPhase.STOPPED, "StoppedByHand", "stopped by hand: no verdict", None)
            return
        started = s.started_at or self.now
        limit = parse_duration(self.spec.maximum_duration)
        if (self.now - started).total_seconds() >= limit:
            self._finish(
                ExperimentPhase.STOPPED,
                "MaximumDurationReached",
                f"no verdict: maximum duration {self.spec.maximum_duration} reached",
                None,
            )
            return
        if self._variants_changed():
            return
        self._check_arms()
        if s.phase in TERMINAL:
            return
        active = self._active()
        samples = {name: obs.arms[name].outcomes for name in active if name in obs.arms}
        if not self._outcomes_condition(samples):
            return  # unreadable sums: hold (no statistics, weights or verdict) until they read again
        running = {v.name: v.always_valid_p for v in s.variants if v.always_valid_p is not None}
        analysis = evaluate(self.spec, samples, active, running, self.rng, planned=s.required_samples)
        self._record(analysis)
        if analysis.decision is not None:
            self._finish(
                ExperimentPhase.CONCLUDED, "VerdictReached", analysis.decision.verdict, analysis.decision.winner
            )
            return
        if obs.command is ExperimentCommand.CONCLUDE:
            self._finish(ExperimentPhase.CONCLUDED, "ConcludedByHand", self._by_hand(analysis), analysis.leader)
            return
        if self.spec.allocation is Allocation.THOMPSON:
            shares = {n: analysis.arms[n].probability_best or 0.0 for n in active}
            weights = thompson_weights(shares, self.spec.allocation_floor)
            self._set_weights({v.name: weights.get(v.name, 0) for v in s.variants})
        else:  # fixed: the spec's weights, live (an edit applies at this look), shared among the running arms
            weights = largest_remainder({v.name: float(v.weight) for v in self.spec.variants if v.name in active})
            self._set_weights({v.name: weights.get(v.name, 0) for v in s.variants})
        s.message = self._progress_text(analysis)

    def _variants_changed(self) -> bool:
        """spec.variants must name the running arms (names, order, model versions); weights may change. Another
        set is refused: the experiment holds (no statistics, weights or verdict) with SpecAccepted=False until
        spec.variants is put back; `stop` and maximumDuration still end it. Counters are per arm name and
        cumulative, so neither swapping an arm's model nor restarting under the same names would measure honestly.
        """
        running = [(v.name, v.version) for v in self.s.variants]
        wanted = [(v.name, v.model.version) for v in self.spec.variants]
        same = len(running) == len(wanted) and all(
            r[0] == w[0] and r[1] in (None, w[1]) for r, w in zip(running, wanted, strict=True)
        )
        accepted = next((c for c in self.s.conditions if c.type == SPEC_ACCEPTED), None)
        if same:
            if accepted is not None and accepted.status == "False":
                self._condition(SPEC_ACCEPTED, True, "VariantsUnchanged", "spec.variants names the running arms again")
            return False
        arms = ", ".join(f"{n} {v or '?'}" for n, v in running)
        message = (
            f"spec.variants changed while the experiment runs (running arms: {arms}); refused: the experiment holds "
            "until spec.variants is put back. Only weights may change; stop it and create a new Experiment to test "
            "other variants"
        )
        if accepted is None or accepted.status != "False":
            self._event(True, "VariantsChangeRefused", message)
        self._condition(SPEC_ACCEPTED, False, "VariantsChanged", message)
        self.s.message = message
        return True

    def _outcomes_condition(self, samples: Mapping[str, Sample]) -> bool:
        """A reading problem (e.g. primaryMetric.query on a provider that cannot run PromQL) is a condition; it is
        set back to True when the outcomes read again, and never shown for an experiment that never had one.
        An arm whose sums are not finite (an overflowed sum of squares) is a reading problem too, and the look
        holds: False is returned and nothing is computed from those sums."""
        problem = self.obs.outcomes_problem
        broken = sorted(name for name, sample in samples.items() if not sample.readable)
        if broken:
            problem = f"outcome sums of {', '.join(broken)} are not finite numbers; holding until they are"
        if problem is not None:
            self._condition(OUTCOMES_READ, False, "OutcomesUnreadable", problem)
        elif any(c.type == OUTCOMES_READ for c in self.s.conditions):
            self._condition(OUTCOMES_READ, True, "OutcomesRead", "the outcomes are read again")
        return not broken

    def _by_hand(self, analysis: Analysis) -> str:
        """The verdict of `conclude`: who led at this look and by how much, marked as no statistical verdict."""
        if analysis.leader is None:
            return "concluded by hand: no leader yet (no outcomes), no statistical verdict"
        lift = f", lift {self.s.lift}" if self.s.lift else ""
        confidence = f", confidence {self.s.confidence}" if self.s.confidence else ""
        return f"concluded by hand before a statistical verdict: leader {analysis.leader}{lift}{confidence}"

    def _progress_text(self, analysis: Analysis) -> str:
        counts = ", ".join(f"{r.name} {r.samples}" for r in analysis.arms.values())
        goal = self.spec.minimum_samples if analysis.required_samples is None else analysis.required_samples
        return f"look {self.s.looks}: outcomes per arm {counts} (verdict needs >= {goal} each)"

    def _record(self, analysis: Analysis) -> None:
        s = self.s
        s.required_samples = analysis.required_samples
        for v in s.variants:
            r = analysis.arms.get(v.name)
            if r is None:
                continue
            v.samples, v.value, v.lift, v.lift_low, v.lift_high = r.samples, r.value, r.lift, r.lift_low, r.lift_high
            v.p_value, v.probability_best, v.expected_loss = r.p_value, r.probability_best, r.expected_loss
            if r.running_p is not None:
                v.always_valid_p = r.running_p
        s.leader = analysis.leader
        leader = analysis.arms.get(analysis.leader or "")
        s.lift = None if leader is None or leader.lift is None else f"{leader.lift:+.1%}"
        s.confidence = None if analysis.confidence is None else f"{analysis.confidence:.1%}"

    # -- arms: load failures and guardrails ----------------------------------------------------------------
    def _check_arms(self) -> None:
        """Stop every arm that failed to load or breached a guardrail, then re-weight once."""
        newly: list[str] = []
        for i, variant in enumerate(self.spec.variants):
            arm = self._arm(variant.name)
            seen = self.obs.arms.get(variant.name)
            if arm.stopped or seen is None:
                continue
            reason = None
            if seen.failed is not None:
                reason = f"spec.variants[{i}] ({variant.name}) cannot serve: {seen.failed}"
            elif variant.name != self.control:
                reason = self._breach(i, variant.name)
            if reason is None:
                continue
            if variant.name == self.control:
                self._finish(ExperimentPhase.FAILED, "ControlFailed", reason, None)
                return
            arm.stopped, arm.stopped_reason = True, reason
            newly.append(reason)
            self._condition(ARMS_HEALTHY, False, "ArmStopped", reason)
            self._event(True, "ArmStopped", reason)
        if not newly:
            return
        active = self._active()
        if active == [self.control]:
            self._finish(
                ExperimentPhase.STOPPED, "AllTreatmentsStopped", "no verdict: every treatment was stopped", None
            )
            return
        shares = {n: float(self._arm(n).weight) for n in active}
        weights = largest_remainder(shares)  # an all-zero share is split evenly
        self._set_weights({v.name: weights.get(v.name, 0) for v in self.s.variants})

    def _breach(self, index: int, name: str) -> str | None:
        seen = self.obs.arms[name]
        for g in self.spec.guardrails:
            value = (
                seen.promql.get(g.name)
                if g.type == "promql"
                else (seen.error_rate if g.type == "error-rate" else seen.latency_p99)
            )
            if value is not None and g.max is not None and value > g.max:
                return f"spec.variants[{index}] ({name}): guardrail {g.name} ({g.type}) at {value:.4g} > max {g.max:g}"
        return None

    # -- the end ----------------------------------------------------------------------------------------------
    def _finish(self, phase: ExperimentPhase, reason: str, verdict: str, winner: str | None) -> None:
        s, policy = self.s, self.spec.end_policy
        s.phase, s.verdict, s.winner, s.finished_at = phase, verdict, winner, self.now
        if phase is ExperimentPhase.CONCLUDED and policy is EndPolicy.MANUAL:
            s.message = f"{verdict}; end policy manual: traffic unchanged until a person acts"
        elif (
            phase is ExperimentPhase.CONCLUDED
            and policy is EndPolicy.PROMOTE_WINNER
            and winner not in (None, self.control)
        ):
            variant = next(v for v in self.spec.variants if v.name == winner)
            model = VersionRef(version=variant.model.version, uri=variant.model.uri, sha256=variant.model.sha256)
            self._set_weights({v.name: 100 if v.name == winner else 0 for v in s.variants})
            self.actions.append(PromoteVariant(variant.name, model))
            self.actions.append(EndArms())
            s.message = (
                f"{verdict}; promoting {winner} ({model.version}) through ModelDeployment {self.spec.target.name}"
            )
        else:
            self._set_weights({v.name: 100 if v.name == self.control else 0 for v in s.variants})
            self.actions.append(EndArms())
            s.message = f"{verdict}; the target's stable version serves all traffic"
        warning = phase is not ExperimentPhase.CONCLUDED
        self._condition(RUNNING, False, phase.value, s.message)
        self._condition(CONCLUDED, True, reason, s.message)
        self._event(warning, reason, s.message)
