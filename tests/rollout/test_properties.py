"""Invariants of step() over random event sequences (hypothesis)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.rollout.helpers import T0, make_spec, obs, outcome, with_version

from sluice.api.status import TERMINAL_PHASES, ModelDeploymentStatus, Phase, Verdict
from sluice.rollout import Command, CommandKind, step
from sluice.rollout.actions import SetTraffic

ROLLOUTS = [
    {"strategy": "canary", "canary": {"steps": [{"weight": 10}, {"weight": 40, "pause": {"duration": "1m"}}]}},
    {"strategy": "canary", "canary": {"steps": [{"weight": 5, "pause": {}}, {"weight": 50}, {"weight": 100}]}},
    {"strategy": "shadow", "shadow": {"mirrorPercent": 30, "requiredPassingAnalyses": 2}},
    {"strategy": "blueGreen", "blueGreen": {"previewMirrorPercent": 10, "scaleDownDelay": "45s"}},
]

event = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["v1", "v1", "v1", "v2", "v3"]),
        "stable_ready": st.booleans(),
        "canary_ready": st.sampled_from([True, True, True, False]),
        "verdict": st.sampled_from([None, *Verdict]),
        "command": st.sampled_from([None, None, None, *CommandKind]),
        "seconds": st.sampled_from([1, 30, 30, 120, 700]),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollout=st.sampled_from(ROLLOUTS), events=st.lists(event, min_size=1, max_size=25))
def test_invariants_hold_over_any_sequence(rollout: dict[str, Any], events: list[dict[str, Any]]) -> None:
    base = make_spec("v1", rollout=rollout)
    status = ModelDeploymentStatus()
    now = T0
    for i, e in enumerate(events):
        spec = base if e["version"] == "v1" else with_version(base, e["version"])
        command = Command(e["command"], str(i)) if e["command"] else None
        verdict = e["verdict"]
        o = obs(
            spec,
            stable_ready=e["stable_ready"],
            canary_ready=e["canary_ready"],
            analysis=outcome(verdict) if verdict is not None else None,
            command=command,
        )
        now += timedelta(seconds=e["seconds"])
        before = status
        status, actions = step(spec, before, o, now)
        spec_changed = o.revision != before.observed_revision

        # weights stay a split of 100 and never point at a missing canary
        assert 0 <= status.canary_weight <= 100
        assert 0 <= status.mirror_percent <= 100
        assert status.canary_weight == 0 or status.canary is not None
        assert status.mirror_percent == 0 or status.canary is not None
        for a in actions:
            if isinstance(a, SetTraffic):
                assert 0 <= a.canary_weight <= 100
                assert 0 <= a.mirror_percent <= 100

        # terminal phases hold until the spec changes or a retry/undo is carried out
        accepted = command is not None and command.value != before.last_command
        restart = accepted and command is not None and command.kind in (CommandKind.RETRY, CommandKind.UNDO)
        if before.phase in TERMINAL_PHASES and not spec_changed and not restart:
            assert status.phase is before.phase

        # a rollback never raises the canary weight on its way
        if status.phase is Phase.ROLLED_BACK and before.phase is not Phase.ROLLED_BACK:
            assert status.canary_weight == 0
            assert all(a.canary_weight <= before.canary_weight for a in actions if isinstance(a, SetTraffic))

        # no-data neither advances nor counts
        # (the tick in which the new version first becomes ready gives it its first step and ignores the analysis)
        live = before.canary_ready_at is not None
        if (
            verdict is Verdict.NO_DATA
            and live
            and not spec_changed
            and not accepted
            and before.phase is Phase.PROGRESSING
        ):
            assert status.step_index == before.step_index
            assert status.passing_analyses == before.passing_analyses
            assert status.failed_analyses == before.failed_analyses
            assert status.canary_weight <= before.canary_weight

        # a new revision of a new version starts from nothing
        if spec_changed and status.phase is Phase.PROGRESSING:
            assert (status.step_index, status.passing_analyses, status.failed_analyses) == (0, 0, 0)
            assert status.errored_analyses == 0
            assert status.check_states == []
            assert status.canary_ready_at is None
