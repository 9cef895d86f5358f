"""Every phase x every event, table-driven, plus the behaviours each strategy promises."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from tests.rollout.helpers import T0, Driver, make_spec, obs, outcome, with_version

from sluice.api.model_deployment import Check, CheckType
from sluice.api.status import ModelDeploymentStatus, Phase, RevisionOutcome, Verdict
from sluice.rollout import Command, CommandKind, step
from sluice.rollout.actions import DeployVersion, EmitEvent, PromoteCanary, ScaleDown, SetTraffic
from sluice.rollout.core import CONSECUTIVE_ERRORS_PER_FAILURE

P = Phase
GATED = {"strategy": "canary", "canary": {"steps": [{"weight": 10, "pause": {}}, {"weight": 50}]}}


def reach(phase: Phase) -> Driver:
    """A driver whose status is in `phase` (v1 stable, v2 being rolled out where one is in progress)."""
    if phase is P.PENDING:
        return Driver(make_spec("v1"))
    if phase is P.INITIALIZING:
        d = Driver(make_spec("v1"))
        d.tick(stable_ready=False, canary_ready=False)
        return d
    if phase is P.FAILED:
        d = Driver(make_spec("v1", rollback={"onProgressDeadline": False})).deploy_stable()
        d.start(with_version(d.spec, "v2"))
        d.tick(seconds=400, analysis=outcome(Verdict.NO_DATA))
        return d
    base = make_spec("v1", rollout=GATED) if phase is P.PAUSED else make_spec("v1")
    d = Driver(base).deploy_stable()
    if phase is P.STABLE:
        return d
    d.start(with_version(base, "v2"))
    if phase is P.PROMOTING:
        d.tick(command=Command(CommandKind.PROMOTE, "p"))
    elif phase is P.SUCCEEDED:
        d.tick(command=Command(CommandKind.PROMOTE, "p"))
        d.tick()
    elif phase is P.ROLLED_BACK:
        d.tick(analysis=outcome(Verdict.FAIL))
        d.tick(analysis=outcome(Verdict.FAIL))
    elif phase is P.ABORTED:
        d.tick(command=Command(CommandKind.ABORT, "a"))
    return d


@pytest.mark.parametrize("phase", list(Phase))
def test_reach_each_phase(phase: Phase) -> None:
    assert reach(phase).status.phase is phase


def _cmd(kind: CommandKind) -> Callable[[Driver], object]:
    return lambda d: d.tick(command=Command(kind, "n1"))


EVENTS: dict[str, Callable[[Driver], object]] = {
    "new-version": lambda d: (setattr(d, "spec", with_version(d.spec, "v3")), d.tick()),
    "pass": lambda d: d.tick(analysis=outcome(Verdict.PASS)),
    "fail": lambda d: d.tick(analysis=outcome(Verdict.FAIL)),
    "fail-twice": lambda d: (d.tick(analysis=outcome(Verdict.FAIL)), d.tick(analysis=outcome(Verdict.FAIL))),
    "no-data": lambda d: d.tick(analysis=outcome(Verdict.NO_DATA)),
    "error": lambda d: d.tick(analysis=outcome(Verdict.ERROR)),
    "canary-unready": lambda d: d.tick(canary_ready=False),
    "deadline": lambda d: d.tick(seconds=400),
    "promote": _cmd(CommandKind.PROMOTE),
    "abort": _cmd(CommandKind.ABORT),
    "retry": _cmd(CommandKind.RETRY),
    "undo": _cmd(CommandKind.UNDO),
}

# Where each phase goes on each event. Absent: the phase holds (Initializing and Promoting complete on any tick).
SAME = {
    P.PENDING: P.INITIALIZING,
    P.INITIALIZING: P.STABLE,
    P.PROMOTING: P.SUCCEEDED,
}
TABLE: dict[str, dict[Phase, Phase]] = {
    "new-version": {
        P.INITIALIZING: P.INITIALIZING,
        **{p: P.PROGRESSING for p in Phase if p not in (P.PENDING, P.INITIALIZING)},
    },
    "pass": {P.PAUSED: P.PAUSED, P.PROGRESSING: P.PROGRESSING},
    "fail": {},
    "fail-twice": {P.PENDING: P.STABLE, P.PROGRESSING: P.ROLLED_BACK, P.PAUSED: P.ROLLED_BACK},
    "no-data": {},
    "error": {},
    "canary-unready": {},
    "deadline": {P.PROGRESSING: P.ROLLED_BACK},
    "promote": {P.PROGRESSING: P.PROMOTING, P.PAUSED: P.PROGRESSING},
    "abort": {P.PROGRESSING: P.ABORTED, P.PAUSED: P.ABORTED, P.PROMOTING: P.ABORTED},
    "retry": {P.ROLLED_BACK: P.PROGRESSING, P.ABORTED: P.PROGRESSING, P.FAILED: P.PROGRESSING},
    "undo": {P.SUCCEEDED: P.PROGRESSING},
}


@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize("phase", list(Phase))
def test_transition(phase: Phase, event: str) -> None:
    d = reach(phase)
    EVENTS[event](d)
    expected = TABLE[event].get(phase, SAME.get(phase, phase))
    assert d.status.phase is expected, d.status.message
    s = d.status
    assert 0 <= s.canary_weight <= 100
    assert s.canary_weight == 0 or s.canary is not None


def test_first_deploy_gets_all_traffic_without_analysis() -> None:
    d = Driver(make_spec("v1"))
    actions = d.tick(stable_ready=False, canary_ready=False)
    assert d.status.phase is P.INITIALIZING
    assert DeployVersion("stable", d.status.stable) in actions  # type: ignore[arg-type]
    d.tick(analysis=outcome(Verdict.FAIL))  # analysis is ignored: nothing to compare with
    assert d.status.phase is P.STABLE
    assert d.status.canary_weight == 0
    assert d.status.failed_analyses == 0
    assert d.status.history[0].outcome is RevisionOutcome.PROMOTED
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert ready.status == "True"


def test_canary_walks_steps_and_promotes() -> None:
    d = Driver(make_spec("v1")).deploy_stable().start(make_spec("v2"))
    assert d.status.canary_weight == 10
    assert d.status.phase is P.PROGRESSING
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.canary_weight == 50
    assert d.status.step_index == 1
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.phase is P.PROMOTING
    assert SetTraffic(100, 0) in d.actions
    d.tick()
    assert d.status.phase is P.SUCCEEDED
    assert d.status.stable
    assert d.status.stable.version == "v2"
    assert d.actions[0] == PromoteCanary(d.status.stable)
    assert ScaleDown("v1") in d.actions
    assert d.status.canary is None
    assert d.status.canary_weight == 0


def test_rollback_is_one_step_and_says_why() -> None:
    d = Driver(make_spec("v1")).deploy_stable().start(make_spec("v2"))
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.canary_weight == 50
    d.tick(analysis=outcome(Verdict.FAIL, value=0.07))
    d.tick(analysis=outcome(Verdict.FAIL, value=0.08))
    traffic = [a for a in d.actions if isinstance(a, SetTraffic)]
    assert traffic == [SetTraffic(0, 0)]
    assert ScaleDown("v2") in d.actions
    assert d.actions.index(SetTraffic(0, 0)) < d.actions.index(ScaleDown("v2"))
    s = d.status
    assert s.phase is P.ROLLED_BACK
    assert s.failed_checks[0].value == 0.08
    assert "error-rate" in s.history[0].reason
    assert "0.08" in s.history[0].reason
    assert "2x stable" in s.history[0].reason
    rolled = next(c for c in s.conditions if c.type == "RolledBack")
    assert rolled.status == "True"
    assert rolled.reason == "AnalysisFailed"
    assert "error-rate" in rolled.message


def test_rollback_keeps_canary_when_policy_says_so() -> None:
    spec = make_spec("v1", rollback={"scaleDownCanary": False})
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    d.tick(analysis=outcome(Verdict.FAIL))
    d.tick(analysis=outcome(Verdict.FAIL))
    assert d.status.phase is P.ROLLED_BACK
    assert not any(isinstance(a, ScaleDown) for a in d.actions)


def test_manual_rollback_policy_pauses_instead() -> None:
    spec = make_spec("v1", rollback={"automatic": False})
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    d.tick(analysis=outcome(Verdict.FAIL))
    d.tick(analysis=outcome(Verdict.FAIL))
    assert d.status.phase is P.PAUSED
    assert d.status.canary_weight == 10
    d.tick(command=Command(CommandKind.ABORT, "x"))
    assert d.status.phase is P.ABORTED
    assert d.status.canary_weight == 0


def test_timed_pause_holds_for_its_duration() -> None:
    spec = make_spec(
        "v1", rollout={"canary": {"steps": [{"weight": 20, "pause": {"duration": "90s"}}, {"weight": 60}]}}
    )
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    d.tick(analysis=outcome(Verdict.PASS))
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.step_index == 0
    assert d.status.phase is P.PROGRESSING
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.step_index == 1
    assert d.status.canary_weight == 60


def test_no_data_holds_and_says_so_then_deadline_rolls_back() -> None:
    d = Driver(make_spec("v1")).deploy_stable().start(make_spec("v2"))
    for _ in range(9):
        d.tick(analysis=outcome(Verdict.NO_DATA))
        assert d.status.phase is P.PROGRESSING
        assert d.status.step_index == 0
        assert d.status.passing_analyses == 0
        assert d.status.failed_analyses == 0
    nodata = next(c for c in d.status.conditions if c.type == "AnalysisNoData")
    assert nodata.status == "True"
    assert nodata.reason == "TooFewRequests"
    d.tick(analysis=outcome(Verdict.NO_DATA))  # 5m since the canary became ready
    assert d.status.phase is P.ROLLED_BACK
    assert next(c for c in d.status.conditions if c.type == "RolledBack").reason == "ProgressDeadlineExceeded"


def test_canary_never_ready_hits_the_deadline() -> None:
    d = Driver(make_spec("v1")).deploy_stable()
    d.spec = make_spec("v2")
    for _ in range(11):
        d.tick(canary_ready=False)
    assert d.status.phase is P.ROLLED_BACK
    assert "not ready" in d.status.history[0].reason


def test_errors_are_counted_apart_and_enough_in_a_row_fail() -> None:
    d = Driver(make_spec("v1")).deploy_stable().start(make_spec("v2"))
    for _ in range(CONSECUTIVE_ERRORS_PER_FAILURE - 1):
        d.tick(analysis=outcome(Verdict.ERROR))
    assert d.status.errored_analyses == CONSECUTIVE_ERRORS_PER_FAILURE - 1
    assert d.status.failed_analyses == 0
    d.tick(analysis=outcome(Verdict.PASS))  # a pass breaks the run of errors
    for _ in range(CONSECUTIVE_ERRORS_PER_FAILURE):
        d.tick(analysis=outcome(Verdict.ERROR))
    assert d.status.failed_analyses == 1
    assert d.status.phase is P.PROGRESSING


def test_shadow_mirrors_then_promotes_after_n_passes_in_a_row() -> None:
    spec = make_spec(
        "v1", rollout={"strategy": "shadow", "shadow": {"mirrorPercent": 40, "requiredPassingAnalyses": 3}}
    )
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    assert SetTraffic(0, 40) in d.actions
    assert d.status.canary_weight == 0
    for v in (Verdict.PASS, Verdict.PASS, Verdict.NO_DATA):
        d.tick(analysis=outcome(v))
        assert d.status.phase is P.PROGRESSING
        assert d.status.canary_weight == 0
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.phase is P.PROMOTING


def test_blue_green_switches_at_once_and_scales_down_later() -> None:
    bg = {"strategy": "blueGreen", "blueGreen": {"previewMirrorPercent": 25, "scaleDownDelay": "60s"}}
    spec = make_spec("v1", rollout=bg)
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    assert SetTraffic(0, 25) in d.actions
    d.tick(analysis=outcome(Verdict.PASS))
    assert [a for a in d.actions if isinstance(a, SetTraffic)] == [SetTraffic(100, 0)]
    d.tick()
    assert d.status.phase is P.SUCCEEDED
    assert not any(isinstance(a, ScaleDown) for a in d.actions)
    d.tick()
    assert not any(isinstance(a, ScaleDown) for a in d.actions)
    d.tick()
    assert ScaleDown("v1") in d.actions
    assert d.status.scale_down_version is None


def test_blue_green_without_auto_promote_waits() -> None:
    spec = make_spec("v1", rollout={"strategy": "blueGreen", "blueGreen": {"autoPromote": False}})
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    d.tick(analysis=outcome(Verdict.PASS))
    assert d.status.phase is P.PAUSED
    d.tick(seconds=3600)  # waiting for a human is not a stall
    assert d.status.phase is P.PAUSED
    d.tick(command=Command(CommandKind.PROMOTE, "1"))
    assert d.status.phase is P.PROMOTING


def test_manual_gate_passes_on_promote_once_per_nonce() -> None:
    spec = make_spec("v1", rollout={"canary": {"steps": [{"weight": 10, "pause": {}}, {"weight": 30, "pause": {}}]}})
    d = Driver(spec).deploy_stable().start(with_version(spec, "v2"))
    assert d.status.phase is P.PAUSED
    d.tick(command=Command(CommandKind.PROMOTE, "a"))
    assert d.status.step_index == 1
    assert d.status.phase is P.PAUSED
    d.tick(command=Command(CommandKind.PROMOTE, "a"))  # same nonce: already carried out
    assert d.status.step_index == 1
    assert d.status.last_command == "promote:a"
    d.tick(command=Command(CommandKind.PROMOTE, "b"))
    assert d.status.phase is P.PROMOTING


def test_spec_change_supersedes_and_never_resumes_counters() -> None:
    d = Driver(make_spec("v1")).deploy_stable().start(make_spec("v2"))
    d.tick(analysis=outcome(Verdict.PASS))
    d.tick(analysis=outcome(Verdict.FAIL))
    d.spec = make_spec("v3")
    actions = [a for a in d.tick() if not isinstance(a, EmitEvent)]
    s = d.status
    assert s.history[0].outcome is RevisionOutcome.SUPERSEDED
    assert s.history[0].model.version == "v2"
    assert (s.step_index, s.passing_analyses, s.failed_analyses, s.canary_weight) == (0, 0, 0, 0)
    assert actions[:3] == [SetTraffic(0, 0), ScaleDown("v2"), DeployVersion("canary", s.canary)]  # type: ignore[arg-type]


def test_undo_returns_to_previous_promoted_version() -> None:
    d = reach(P.SUCCEEDED)
    d.tick(command=Command(CommandKind.UNDO, "u"))
    assert d.status.phase is P.PROGRESSING
    assert d.status.canary
    assert d.status.canary.version == "v1"
    d.tick()  # same spec (still v2): the undo is not superseded
    assert d.status.phase is P.PROGRESSING
    assert d.status.canary.version == "v1"


def test_retry_restarts_the_same_revision_fresh() -> None:
    d = reach(P.ROLLED_BACK)
    d.tick(command=Command(CommandKind.RETRY, "r"))
    s = d.status
    assert s.phase is P.PROGRESSING
    assert s.canary
    assert s.canary.version == "v2"
    assert s.failed_analyses == 0


def test_ignored_command_is_consumed_with_a_warning() -> None:
    d = reach(P.STABLE)
    actions = d.tick(command=Command(CommandKind.ABORT, "z"))
    assert d.status.last_command == "abort:z"
    assert any(getattr(a, "reason", "") == "CommandIgnored" for a in actions)


def test_invalid_analysis_fails_with_a_clear_message() -> None:
    """The API refuses duplicate names; the core still refuses a spec that skipped validation."""
    d = Driver(make_spec("v1")).deploy_stable()
    spec = with_version(d.spec, "v2")
    spec.analysis.checks = [Check.model_construct(name="same", type=CheckType.ERROR_RATE, max=0.1)] * 2
    d.spec = spec
    d.tick()
    assert d.status.phase is P.FAILED
    assert "used twice" in d.status.message


def test_condition_transition_time_moves_only_on_change() -> None:
    d = Driver(make_spec("v1")).deploy_stable()
    before = {c.type: c.last_transition_time for c in d.status.conditions}
    d.tick()
    d.tick()
    after = {c.type: c.last_transition_time for c in d.status.conditions}
    assert before == after
    assert all(c.observed_generation == 1 for c in d.status.conditions)


def test_step_does_not_modify_its_input() -> None:
    spec = make_spec("v1")
    status = ModelDeploymentStatus()
    snapshot = status.model_dump()
    step(spec, status, obs(spec), T0 + timedelta(seconds=1))
    assert status.model_dump() == snapshot


def test_command_parse_rejects_unknown() -> None:
    assert Command.parse("promote:17") == Command(CommandKind.PROMOTE, "17")
    with pytest.raises(ValueError, match="unknown command 'launch'"):
        Command.parse("launch:1")
