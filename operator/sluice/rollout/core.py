"""The decision core: `step(spec, status, observations, now) -> (status', actions)`.

Pure: no I/O, no clock, no randomness. Everything a rollout remembers lives in the returned status, so a
platform (the Kopf operator or `sluice run`) can restart at any point and continue from the stored status.

One call does at most one of: react to a spec change (new revision), carry out a manual command, or advance the
current phase with the observations. A carried-out command skips this call's analysis (it measured the state
before the human acted). Errored analyses are counted apart from failed ones; `CONSECUTIVE_ERRORS_PER_FAILURE`
in a row count as one failed analysis, so a metrics outage cannot hold a bad canary forever.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from sluice.api.base import parse_duration
from sluice.api.model_deployment import (
    DEFAULT_CANARY_STEPS,
    BlueGreenStrategy,
    CanaryStep,
    CanaryStrategy,
    ModelDeploymentSpec,
    ModelSpec,
    ShadowStrategy,
    StrategyType,
)
from sluice.api.status import (
    AnalysisRun,
    CheckResult,
    ModelDeploymentStatus,
    Phase,
    Revision,
    RevisionOutcome,
    Verdict,
    VersionRef,
)
from sluice.rollout import conditions as cond
from sluice.rollout.actions import (
    CANARY,
    STABLE,
    Action,
    DeployVersion,
    EmitEvent,
    PromoteCanary,
    ScaleDown,
    SetTraffic,
)
from sluice.rollout.analysis import AnalysisOutcome, check_problems
from sluice.rollout.observations import Command, CommandKind, Observations

CONSECUTIVE_ERRORS_PER_FAILURE = 3
IN_PROGRESS = frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})
DEFAULT_CANARY = CanaryStrategy(steps=[CanaryStep(weight=w) for w in DEFAULT_CANARY_STEPS])


def revision_hash(spec: ModelDeploymentSpec) -> str:
    """Hash of what a rollout carries out: the model, the strategy and the analysis. A change starts a new one."""
    payload = {
        "model": spec.model.model_dump(mode="json", by_alias=True),
        "rollout": spec.rollout.model_dump(mode="json", by_alias=True),
        "analysis": spec.analysis.model_dump(mode="json", by_alias=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def version_ref(model: ModelSpec) -> VersionRef:
    return VersionRef(version=model.version, uri=model.uri, sha256=model.sha256)


def same_version(a: VersionRef | None, b: VersionRef | None) -> bool:
    return a is not None and b is not None and (a.version, a.uri, a.sha256) == (b.version, b.uri, b.sha256)


def canary_steps(spec: ModelDeploymentSpec) -> list[CanaryStep]:
    return list((spec.rollout.canary or DEFAULT_CANARY).steps)


def is_gate(step: CanaryStep) -> bool:
    """A step whose pause has no duration waits for a manual promote."""
    return step.pause is not None and step.pause.duration is None


def step(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, observations: Observations, now: datetime
) -> tuple[ModelDeploymentStatus, list[Action]]:
    """Decide what happens next. Returns the new status (the input is not modified) and the actions to carry out."""
    run = _Step(spec, status.model_copy(deep=True), observations, now)
    run.run()
    return run.s, run.actions


class _Step:
    def __init__(self, spec: ModelDeploymentSpec, s: ModelDeploymentStatus, obs: Observations, now: datetime) -> None:
        self.spec, self.s, self.obs, self.now = spec, s, obs, now
        self.actions: list[Action] = []

    # -- plumbing -------------------------------------------------------------------------------------------
    def run(self) -> None:
        s, obs = self.s, self.obs
        s.observed_generation = obs.generation
        self._pending_scale_down()
        if obs.revision != s.observed_revision:
            self._spec_changed()
        elif obs.command is not None and obs.command.value != s.last_command:
            s.last_command = obs.command.value
            if not self._command(obs.command):
                self._advance()
        else:
            self._advance()
        self._update_conditions()

    def _event(self, warning: bool, reason: str, message: str) -> None:
        self.actions.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def _traffic(self, canary_weight: int, mirror_percent: int) -> None:
        self.s.canary_weight, self.s.mirror_percent = canary_weight, mirror_percent
        self.actions.append(SetTraffic(canary_weight, mirror_percent))

    def _history(self, model: VersionRef, outcome: RevisionOutcome, reason: str, revision: str | None = None) -> None:
        entry = Revision(
            revision=revision or self.s.revision or "",
            model=model,
            outcome=outcome,
            reason=reason,
            finished_at=self.now,
        )
        self.s.history = [entry, *self.s.history][: self.spec.revision_history_limit]

    def _condition(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.s.conditions = cond.set_condition(
            self.s.conditions,
            type_,
            value,
            reason=reason,
            message=message,
            now=self.now,
            generation=self.obs.generation,
        )

    # -- spec changes -----------------------------------------------------------------------------------------
    def _spec_changed(self) -> None:
        s, new, rev = self.s, version_ref(self.spec.model), self.obs.revision
        s.observed_revision = rev
        if s.phase in (Phase.PENDING, Phase.INITIALIZING) or s.stable is None:
            self._initialize(new, rev)
            return
        if s.phase in IN_PROGRESS:
            if s.canary is not None:
                self._history(s.canary, RevisionOutcome.SUPERSEDED, f"spec changed to revision {rev}")
                self._event(False, "Superseded", f"rollout of {s.canary.version} superseded by revision {rev}")
            if same_version(new, s.stable):
                self._back_to_stable(rev, "spec returned to the stable version")
            else:
                self._start_rollout(new, rev, "spec changed")
            return
        if same_version(new, s.stable):
            s.revision = rev
            if s.phase is not Phase.STABLE and s.phase is not Phase.SUCCEEDED:
                self._back_to_stable(rev, "spec returned to the stable version")
            return
        self._start_rollout(new, rev, "spec changed")

    def _initialize(self, new: VersionRef, rev: str) -> None:
        s = self.s
        if s.stable is not None and s.stable.version != new.version:
            self.actions.append(ScaleDown(s.stable.version))
        s.phase, s.stable, s.canary, s.revision = Phase.INITIALIZING, new, None, rev
        s.canary_weight = s.mirror_percent = 0
        s.rollout_started_at = s.last_progress_at = self.now
        s.message = f"starting {new.version}; it gets all traffic once ready"
        self.actions.append(DeployVersion(STABLE, new))
        self._event(False, "Initializing", s.message)

    def _back_to_stable(self, rev: str, why: str) -> None:
        s = self.s
        if s.canary_weight or s.mirror_percent:
            self._traffic(0, 0)
        if s.canary is not None and not same_version(s.canary, s.stable):
            self.actions.append(ScaleDown(s.canary.version))
        s.canary, s.canary_ready_at, s.revision, s.phase = None, None, rev, Phase.STABLE
        s.message = f"{why}: {s.stable.version if s.stable else '?'} serves all traffic"

    def _start_rollout(self, new: VersionRef, rev: str, why: str) -> None:
        s = self.s
        problems = check_problems(self.spec.analysis)
        if problems:
            s.revision, s.phase = rev, Phase.FAILED
            s.message = "analysis cannot run: " + "; ".join(problems)
            self._condition(cond.DEGRADED, True, "InvalidAnalysis", s.message)
            self._event(True, "InvalidAnalysis", s.message)
            return
        if s.canary_weight or s.mirror_percent:
            self._traffic(0, 0)
        if s.canary is not None and s.canary.version != new.version and not same_version(s.canary, s.stable):
            self.actions.append(ScaleDown(s.canary.version))
        if s.scale_down_version is not None and s.scale_down_version.version == new.version:
            s.scale_down_version = s.scale_down_at = None  # the version we roll out again must keep running
        s.phase, s.canary, s.revision = Phase.PROGRESSING, new, rev
        s.step_index = s.passing_analyses = s.failed_analyses = s.errored_analyses = 0
        s.consecutive_errored_analyses = 0
        s.failed_checks, s.check_states, s.last_analysis, s.canary_ready_at = [], [], None, None
        s.rollout_started_at = s.step_started_at = s.last_progress_at = self.now
        stable = s.stable.version if s.stable else "nothing"
        s.message = f"{why}: rolling out {new.version} over {stable} ({self.spec.rollout.strategy.value})"
        self.actions.append(DeployVersion(CANARY, new))
        self._condition(cond.ANALYSIS_NO_DATA, False, "RolloutStarted", "no analysis yet")
        self._event(False, "RolloutStarted", s.message)

    # -- manual commands --------------------------------------------------------------------------------------
    def _command(self, cmd: Command) -> bool:
        """Carry out a command; False (with a Warning event) when it does not apply in this phase."""
        s = self.s
        refusal: str | None = None
        if cmd.kind is CommandKind.PROMOTE:
            if s.phase not in (Phase.PROGRESSING, Phase.PAUSED):
                refusal = f"nothing to promote in phase {s.phase.value}"
            elif s.canary_ready_at is None:
                refusal = "the new version is not ready yet"
            elif self._at_gate():
                self._event(False, "GatePassed", f"manual promote past step {s.step_index}")
                self._next_step()
            else:
                self._promote("promoted by hand")
        elif cmd.kind is CommandKind.ABORT:
            if s.phase not in IN_PROGRESS:
                refusal = f"no rollout to abort in phase {s.phase.value}"
            else:
                self._end(Phase.ABORTED, RevisionOutcome.ABORTED, "Aborted", "aborted by hand")
        elif cmd.kind is CommandKind.RETRY:
            new = version_ref(self.spec.model)
            if s.phase not in (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED):
                refusal = f"retry applies after a rollback, abort or failure, not in phase {s.phase.value}"
            elif same_version(new, s.stable):
                refusal = f"{new.version} is already the stable version"
            else:
                self._start_rollout(new, self.obs.revision, "retry")
        elif cmd.kind is CommandKind.UNDO:
            target = next(
                (h for h in s.history if h.outcome is RevisionOutcome.PROMOTED and not same_version(h.model, s.stable)),
                None,
            )
            if s.phase in IN_PROGRESS or s.phase in (Phase.PENDING, Phase.INITIALIZING):
                refusal = f"undo applies when no rollout is in progress, not in phase {s.phase.value}; abort first"
            elif target is None:
                refusal = "no earlier promoted version in status.history"
            else:
                self._start_rollout(target.model, target.revision, f"undo to {target.model.version}")
        if refusal is not None:
            self._event(True, "CommandIgnored", f"{cmd.kind.value}: {refusal}")
            return False
        return True

    # -- advancing ----------------------------------------------------------------------------------------------
    def _advance(self) -> None:
        s = self.s
        if s.phase is Phase.INITIALIZING:
            if self.obs.stable_ready and s.stable is not None:
                self._traffic(0, 0)
                s.phase, s.message = Phase.STABLE, f"{s.stable.version} serves all traffic"
                self._history(s.stable, RevisionOutcome.PROMOTED, "first version")
                self._event(False, "Initialized", s.message)
        elif s.phase in (Phase.PROGRESSING, Phase.PAUSED):
            self._progress()
        elif s.phase is Phase.PROMOTING:
            self._finish_promotion()

    def _strategy(self) -> StrategyType:
        return self.spec.rollout.strategy

    def _at_gate(self) -> bool:
        if self._strategy() is StrategyType.CANARY:
            steps = canary_steps(self.spec)
            return self.s.step_index < len(steps) and is_gate(steps[self.s.step_index])
        return False

    def _progress(self) -> None:
        s, obs = self.s, self.obs
        if s.canary_ready_at is None:
            if obs.canary_ready:
                s.canary_ready_at = s.step_started_at = s.last_progress_at = self.now
                self._first_traffic()
                self._event(False, "CanaryReady", s.message)
            else:
                self._check_deadline("the new version is not ready")
            return
        verdict = self._record(obs.analysis) if obs.analysis is not None else None
        if s.phase not in IN_PROGRESS:
            return
        if obs.canary_ready and s.phase is Phase.PROGRESSING:
            self._maybe_next(verdict)
        if s.phase is Phase.PROGRESSING:
            why = "the new version is not ready" if not obs.canary_ready else self._stall_reason()
            self._check_deadline(why)

    def _first_traffic(self) -> None:
        s, strategy = self.s, self._strategy()
        if strategy is StrategyType.CANARY:
            first = canary_steps(self.spec)[0]
            self._traffic(first.weight, 0)
            s.phase = Phase.PAUSED if is_gate(first) else Phase.PROGRESSING
            s.message = f"step 0: {first.weight}% to {s.canary.version if s.canary else '?'}" + (
                "; waiting for promote" if is_gate(first) else ""
            )
        elif strategy is StrategyType.SHADOW:
            mirror = (self.spec.rollout.shadow or ShadowStrategy()).mirror_percent
            self._traffic(0, mirror)
            s.message = f"shadow: mirroring {mirror}% of requests"
        else:
            mirror = (self.spec.rollout.blue_green or BlueGreenStrategy()).preview_mirror_percent
            self._traffic(0, mirror)
            s.message = f"blue-green preview, mirroring {mirror}% of requests"

    def _stall_reason(self) -> str:
        last = self.s.last_analysis
        if last is None:
            return "no analysis completed"
        stalled = [r for r in last.results if r.verdict in (Verdict.NO_DATA, Verdict.ERROR)]
        return "; ".join(f"{r.name}: {r.message}" for r in stalled) or "no passing analysis"

    def _record(self, outcome: AnalysisOutcome) -> Verdict:
        s = self.s
        s.last_analysis = AnalysisRun(
            time=outcome.time, step_index=s.step_index, canary_weight=s.canary_weight, results=list(outcome.results)
        )
        s.check_states = list(outcome.check_states)
        verdict = outcome.verdict
        if verdict is Verdict.NO_DATA:
            no_data = [r for r in outcome.results if r.verdict is Verdict.NO_DATA]
            message = "; ".join(f"{r.name}: {r.message}" for r in no_data)
            self._condition(cond.ANALYSIS_NO_DATA, True, "TooFewRequests", message)
            s.message = f"holding: no data ({message})"
        elif verdict in (Verdict.PASS, Verdict.FAIL):
            self._condition(cond.ANALYSIS_NO_DATA, False, "DataAvailable", "the last analysis had enough data")
        if verdict is Verdict.PASS:
            s.passing_analyses += 1
            s.consecutive_errored_analyses = 0
            s.last_progress_at = self.now
        elif verdict is Verdict.FAIL:
            s.failed_analyses += 1
            s.passing_analyses = s.consecutive_errored_analyses = 0
            failing = [r for r in outcome.results if r.verdict is Verdict.FAIL]
            self._merge_failed(failing)
            self._after_failure(_summary(failing))
        elif verdict is Verdict.ERROR:
            s.errored_analyses += 1
            s.consecutive_errored_analyses += 1
            errored = [r for r in outcome.results if r.verdict is Verdict.ERROR]
            self._event(True, "AnalysisErrored", _summary(errored))
            if s.consecutive_errored_analyses >= CONSECUTIVE_ERRORS_PER_FAILURE:
                s.consecutive_errored_analyses = 0
                s.failed_analyses += 1
                self._merge_failed(errored)
                self._after_failure(f"{CONSECUTIVE_ERRORS_PER_FAILURE} analyses in a row errored: {_summary(errored)}")
        return verdict

    def _merge_failed(self, results: list[CheckResult]) -> None:
        names = {r.name for r in results}
        self.s.failed_checks = [*results, *(r for r in self.s.failed_checks if r.name not in names)]

    def _after_failure(self, summary: str) -> None:
        s, threshold = self.s, self.spec.analysis.failure_threshold
        self._event(True, "AnalysisFailed", f"failed analysis {s.failed_analyses}/{threshold}: {summary}")
        if s.failed_analyses < threshold:
            return
        if self.spec.rollback.automatic:
            self._end(Phase.ROLLED_BACK, RevisionOutcome.ROLLED_BACK, "AnalysisFailed", summary)
        else:
            s.phase = Phase.PAUSED
            s.message = f"{s.failed_analyses} failed analyses ({summary}); automatic rollback is off: abort or promote"

    def _maybe_next(self, verdict: Verdict | None) -> None:
        s, strategy = self.s, self._strategy()
        if strategy is StrategyType.CANARY:
            current = canary_steps(self.spec)[s.step_index]
            if current.pause is not None and current.pause.duration is not None:
                held = (self.now - (s.step_started_at or self.now)).total_seconds()
                if held >= parse_duration(current.pause.duration) and s.passing_analyses >= 1:
                    self._next_step()
            elif verdict is Verdict.PASS:
                self._next_step()
        elif strategy is StrategyType.SHADOW:
            if s.passing_analyses >= (self.spec.rollout.shadow or ShadowStrategy()).required_passing_analyses:
                self._promote(f"{s.passing_analyses} passing shadow analyses in a row")
        else:
            bg = self.spec.rollout.blue_green or BlueGreenStrategy()
            if s.passing_analyses >= bg.required_passing_analyses:
                if bg.auto_promote:
                    self._promote(f"{s.passing_analyses} passing preview analyses")
                else:
                    s.phase = Phase.PAUSED
                    s.message = f"preview passed {s.passing_analyses} analyses; waiting for promote"

    def _next_step(self) -> None:
        s, steps = self.s, canary_steps(self.spec)
        if s.step_index + 1 >= len(steps):
            self._promote("all steps passed")
            return
        s.step_index += 1
        nxt = steps[s.step_index]
        self._traffic(nxt.weight, 0)
        s.passing_analyses = 0
        s.step_started_at = s.last_progress_at = self.now
        s.phase = Phase.PAUSED if is_gate(nxt) else Phase.PROGRESSING
        s.message = f"step {s.step_index}: {nxt.weight}% to the new version" + (
            "; waiting for promote" if is_gate(nxt) else ""
        )
        self._event(False, "StepAdvanced", s.message)

    def _promote(self, why: str) -> None:
        s = self.s
        self._traffic(100, 0)
        s.phase, s.last_progress_at = Phase.PROMOTING, self.now
        s.message = f"{why}: all traffic to {s.canary.version if s.canary else '?'}"
        self._event(False, "Promoting", s.message)

    def _finish_promotion(self) -> None:
        s, new, old = self.s, self.s.canary, self.s.stable
        if new is None:  # cannot happen through step(); a hand-edited status is put back to Stable
            s.phase = Phase.STABLE
            return
        self.actions.append(PromoteCanary(new))
        s.stable, s.canary, s.canary_weight, s.mirror_percent = new, None, 0, 0
        s.canary_ready_at = None
        self._history(new, RevisionOutcome.PROMOTED, s.message)
        if old is not None and old.version != new.version:
            delay = 0.0
            if self._strategy() is StrategyType.BLUE_GREEN:
                delay = parse_duration((self.spec.rollout.blue_green or BlueGreenStrategy()).scale_down_delay)
            if delay > 0:
                s.scale_down_version, s.scale_down_at = old, self.now + timedelta(seconds=delay)
            else:
                self.actions.append(ScaleDown(old.version))
        s.phase, s.message = Phase.SUCCEEDED, f"{new.version} promoted; it serves all traffic"
        self._event(False, "Promoted", s.message)

    def _end(self, phase: Phase, outcome: RevisionOutcome, reason: str, detail: str) -> None:
        """Abort or roll back: all traffic to stable in one action, then scale the new version down if asked."""
        s, had = self.s, self.s.canary
        self._traffic(0, 0)
        if had is not None:
            self._history(had, outcome, detail)
            if self.spec.rollback.scale_down_canary and not same_version(had, s.stable):
                self.actions.append(ScaleDown(had.version))
                s.canary, s.canary_ready_at = None, None
        s.phase = phase
        s.message = f"{phase.value}: {detail}; {s.stable.version if s.stable else '?'} serves all traffic"
        if phase is Phase.ROLLED_BACK:
            self._condition(cond.ROLLED_BACK, True, reason, detail)
        self._condition(cond.DEGRADED, True, reason, detail)
        self._event(True, reason, s.message)

    def _check_deadline(self, why: str) -> None:
        s = self.s
        if s.phase is not Phase.PROGRESSING or s.last_progress_at is None:
            return
        deadline = self.spec.analysis.progress_deadline
        if (self.now - s.last_progress_at).total_seconds() < parse_duration(deadline):
            return
        detail = f"no progress for {deadline}: {why}"
        if self.spec.rollback.on_progress_deadline:
            self._end(Phase.ROLLED_BACK, RevisionOutcome.ROLLED_BACK, "ProgressDeadlineExceeded", detail)
        else:
            s.phase, s.message = Phase.FAILED, f"Failed: {detail}; traffic left as it was"
            self._condition(cond.DEGRADED, True, "ProgressDeadlineExceeded", detail)
            self._event(True, "ProgressDeadlineExceeded", s.message)

    def _pending_scale_down(self) -> None:
        s = self.s
        old = s.scale_down_version
        if old is None or s.scale_down_at is None or self.now < s.scale_down_at:
            return
        if not same_version(old, s.stable) and not same_version(old, s.canary):
            self.actions.append(ScaleDown(old.version))
        s.scale_down_version = s.scale_down_at = None

    # -- conditions ---------------------------------------------------------------------------------------------
    def _update_conditions(self) -> None:
        s = self.s
        if s.stable is None:
            self._condition(cond.READY, False, "NothingDeployed", "no version deployed yet")
        elif self.obs.stable_ready:
            self._condition(cond.READY, True, "StableServing", f"{s.stable.version} serves {100 - s.canary_weight}%")
        else:
            self._condition(cond.READY, False, "StableNotReady", f"{s.stable.version} is not ready")
        progressing = s.phase in IN_PROGRESS or s.phase is Phase.INITIALIZING
        self._condition(cond.PROGRESSING, progressing, s.phase.value, s.message)
        degraded = cond.get_condition(s.conditions, cond.DEGRADED)
        if s.phase in (Phase.ROLLED_BACK, Phase.FAILED):
            if degraded is None or degraded.status != "True":
                self._condition(cond.DEGRADED, True, s.phase.value, s.message)
        elif s.phase in IN_PROGRESS and s.failed_analyses > 0:
            threshold = self.spec.analysis.failure_threshold
            self._condition(
                cond.DEGRADED, True, "AnalysisFailing", f"{s.failed_analyses}/{threshold} failed analyses so far"
            )
        else:
            self._condition(cond.DEGRADED, False, "AsExpected", "")
        if s.phase is not Phase.ROLLED_BACK:
            self._condition(cond.ROLLED_BACK, False, "NotRolledBack", "")
        if cond.get_condition(s.conditions, cond.ANALYSIS_NO_DATA) is None or s.phase not in IN_PROGRESS:
            self._condition(cond.ANALYSIS_NO_DATA, False, "NoAnalysisRunning", "")


def _summary(results: list[CheckResult]) -> str:
    return "; ".join(
        f"check {r.name}: value {r.value if r.value is not None else 'n/a'} (threshold {r.threshold or 'n/a'}): "
        f"{r.message}"
        for r in results
    )
