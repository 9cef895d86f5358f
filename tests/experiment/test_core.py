"""The experiment core, transition by transition: waiting, starting, horizons, guardrails, limits, end policies."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests
from tests.experiment.helpers import T0, conversions, look, make_spec, started

from sluice.api.experiment import ExperimentPhase, ExperimentSpec, ExperimentStatus
from sluice.experiment.actions import DeployArms, EmitEvent, EndArms, PromoteVariant, SetWeights
from sluice.experiment.core import largest_remainder, step, thompson_weights
from sluice.experiment.observations import ArmObservation, ExperimentCommand, Observations
from sluice.experiment.statistics import Sample


def _condition(status: ExperimentStatus, type_: str) -> tuple[str, str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status.value, c.reason, c.message


def test_waits_for_a_missing_target_then_starts_when_it_appears() -> None:
    spec = make_spec()
    status, actions = step(spec, ExperimentStatus(), Observations(target_exists=False), T0, np.random.default_rng(0))
    assert status.phase is ExperimentPhase.PENDING
    assert actions == []
    assert _condition(status, "TargetReady")[:2] == ("False", "TargetMissing")
    status, actions = step(spec, status, Observations(uid="u"), T0, np.random.default_rng(0))
    assert status.phase is ExperimentPhase.RUNNING
    assert _condition(status, "TargetReady")[0] == "True"


def test_waits_while_the_target_is_mid_rollout_naming_the_rollout() -> None:
    spec = make_spec()
    busy = Observations(target_rollout="rollout of v7 at step 2 (25%)")
    status, actions = step(spec, ExperimentStatus(), busy, T0, np.random.default_rng(0))
    assert status.phase is ExperimentPhase.PENDING
    assert actions == []
    state, reason, message = _condition(status, "TargetReady")
    assert (state, reason) == ("False", "TargetRollingOut")
    assert "rollout of v7" in message


def test_start_deploys_the_arms_with_header_and_salt() -> None:
    spec = make_spec()
    status, actions = step(spec, ExperimentStatus(), Observations(uid="uid-9"), T0, np.random.default_rng(0))
    deploy = next(a for a in actions if isinstance(a, DeployArms))
    assert [(a.name, a.model.version, a.weight) for a in deploy.arms] == [
        ("control", "v1", 50),
        ("treatment", "v2", 50),
    ]
    assert (deploy.header, deploy.salt) == ("x-user-id", "uid-9")
    assert status.salt == "uid-9"
    salted = make_spec(assignment={"salt": "fixed"})
    status, actions = step(salted, ExperimentStatus(), Observations(uid="uid-9"), T0, np.random.default_rng(0))
    assert status.salt == "fixed"


def test_fixed_horizon_gives_no_verdict_before_the_required_samples() -> None:
    spec = make_spec(method="frequentist", minimumDetectableEffect=0.2)
    status = started(spec)
    # an enormous difference, but far below the horizon
    status, _ = look(spec, status, conversions(control=(150, 15), treatment=(150, 60)))
    assert status.phase is ExperimentPhase.RUNNING
    required = status.required_samples
    assert required is not None
    assert required > 150
    assert status.variants[1].p_value is not None
    assert status.variants[1].p_value < 1e-6
    # at the horizon (planned with the control value of the look): a verdict
    n = required + 50
    status, _actions = look(spec, status, conversions(control=(n, n // 10), treatment=(n, n // 4)), minutes=2)
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner == "treatment"
    assert status.variants[1].lift_low is not None
    assert status.variants[1].lift_low > 0


def test_fixed_horizon_with_no_difference_concludes_without_a_winner() -> None:
    spec = make_spec(method="frequentist", minimumDetectableEffect=0.5)
    status = started(spec)
    status, _actions = look(spec, status, conversions(control=(5000, 500), treatment=(5000, 505)))
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner is None
    assert "no significant difference" in (status.verdict or "")


def test_sequential_may_stop_at_any_look_and_its_p_value_never_rises() -> None:
    spec = make_spec(method="sequential", minimumDetectableEffect=0.3)
    status = started(spec)
    status, _ = look(spec, status, conversions(control=(400, 40), treatment=(400, 60)))
    assert status.phase is ExperimentPhase.RUNNING
    first = status.variants[1].always_valid_p
    assert first is not None
    status, _ = look(spec, status, conversions(control=(800, 80), treatment=(800, 82)), minutes=2)
    assert status.variants[1].always_valid_p == first  # running minimum
    status, _ = look(spec, status, conversions(control=(3000, 300), treatment=(3000, 420)), minutes=3)
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner == "treatment"


def test_decrease_direction_picks_the_lower_arm() -> None:
    spec = make_spec(method="sequential", primaryMetric={"name": "chargeback", "direction": "decrease"})
    status = started(spec)
    status, _ = look(spec, status, conversions(control=(4000, 400), treatment=(4000, 280)))
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner == "treatment"
    assert status.lift is not None
    assert status.lift.startswith("-")


def test_bayesian_decides_at_the_horizon_by_probability_best() -> None:
    spec = make_spec(method="bayesian", minimumDetectableEffect=0.3)
    status = started(spec)
    status, _ = look(spec, status, conversions(control=(200, 20), treatment=(200, 40)))
    assert status.phase is ExperimentPhase.RUNNING
    assert status.variants[1].probability_best is not None
    assert status.variants[1].probability_best > 0.95
    n = (status.required_samples or 0) + 50
    status, _ = look(spec, status, conversions(control=(n, n // 10), treatment=(n, n // 5)), minutes=2)
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner == "treatment"
    assert status.confidence is not None


def test_three_arms_use_holm_adjusted_p_values() -> None:
    spec = make_spec(arms=3, method="frequentist", minimumSamples=100000)
    status = started(spec)
    status, _ = look(spec, status, conversions(control=(2000, 200), treatment=(2000, 240), third=(2000, 225)))
    from sluice.experiment.statistics import two_proportion_ztest

    raw = [two_proportion_ztest(Sample(2000, 200, 200), Sample(2000, x, x), 0.05).p_value for x in (240, 225)]
    expected = multipletests(raw, method="holm")[1]
    assert [status.variants[1].p_value, status.variants[2].p_value] == pytest.approx(list(expected), abs=1e-9)


def test_guardrail_breach_stops_the_arm_with_reason_event_and_weights() -> None:
    spec = make_spec(arms=3, guardrails=[{"name": "errors", "type": "error-rate", "max": 0.01}])
    status = started(spec)
    obs = Observations(
        arms={
            "control": ArmObservation(Sample(10, 1, 1), error_rate=0.5),  # the control is never stopped by guardrails
            "treatment": ArmObservation(Sample(10, 1, 1), error_rate=0.05),
            "third": ArmObservation(Sample(10, 1, 1), error_rate=None),  # no data never breaches
        }
    )
    status, actions = look(spec, status, obs)
    assert status.phase is ExperimentPhase.RUNNING
    stopped = status.variants[1]
    assert stopped.stopped
    assert stopped.weight == 0
    assert "spec.variants[1]" in (stopped.stopped_reason or "")
    assert "errors" in (stopped.stopped_reason or "")
    assert sum(v.weight for v in status.variants) == 100
    assert any(isinstance(a, SetWeights) for a in actions)
    assert any(isinstance(a, EmitEvent) and a.reason == "ArmStopped" and a.type == "Warning" for a in actions)
    assert _condition(status, "ArmsHealthy")[:2] == ("False", "ArmStopped")


def test_last_treatment_stopped_stops_the_experiment() -> None:
    spec = make_spec(guardrails=[{"name": "slow", "type": "latency-p99", "max": 0.2}])
    status = started(spec)
    obs = Observations(arms={"treatment": ArmObservation(Sample(10, 1, 1), latency_p99=0.9)})
    status, actions = look(spec, status, obs)
    assert status.phase is ExperimentPhase.STOPPED
    assert any(isinstance(a, EndArms) for a in actions)


def test_promql_guardrail_and_a_variant_that_cannot_load() -> None:
    spec = make_spec(arms=3, guardrails=[{"name": "cost", "type": "promql", "query": "x", "max": 1.0}])
    status = started(spec)
    obs = Observations(
        arms={
            "treatment": ArmObservation(promql={"cost": 3.0}),
            "third": ArmObservation(failed="model file not found"),
        }
    )
    status, _ = look(spec, status, obs)
    reasons = [v.stopped_reason or "" for v in status.variants]
    assert "guardrail cost" in reasons[1]
    assert "spec.variants[2]" in reasons[2]
    assert "model file not found" in reasons[2]
    assert status.phase is ExperimentPhase.STOPPED


def test_a_control_that_cannot_load_fails_the_experiment() -> None:
    spec = make_spec()
    status = started(spec)
    status, _ = look(spec, status, Observations(arms={"control": ArmObservation(failed="bad model")}))
    assert status.phase is ExperimentPhase.FAILED
    assert "spec.variants[0]" in (status.verdict or "")


def test_maximum_duration_ends_stopped_with_no_verdict() -> None:
    spec = make_spec(maximumDuration="1h")
    status = started(spec)
    status, actions = look(spec, status, conversions(control=(50, 5), treatment=(50, 5)), minutes=61)
    assert status.phase is ExperimentPhase.STOPPED
    assert "no verdict" in (status.verdict or "")
    assert EndArms() in actions
    assert [v.weight for v in status.variants] == [100, 0]


def test_stop_command() -> None:
    spec = make_spec()
    status = started(spec)
    obs = Observations(command=ExperimentCommand.STOP)
    status, actions = look(spec, status, obs)
    assert status.phase is ExperimentPhase.STOPPED
    assert EndArms() in actions


def test_conclude_ends_with_the_leader_and_carries_out_the_end_policy() -> None:
    spec = make_spec(endPolicy="promoteWinner", minimumSamples=10**6)  # far from a statistical verdict
    status = started(spec)
    obs = conversions(control=(200, 20), treatment=(200, 30))
    status, actions = look(spec, status, Observations(uid="uid-1", arms=obs.arms, command=ExperimentCommand.CONCLUDE))
    assert status.phase is ExperimentPhase.CONCLUDED
    assert status.winner == "treatment"
    assert status.verdict is not None
    assert status.verdict.startswith("concluded by hand before a statistical verdict")
    assert "leader treatment" in status.verdict
    assert any(isinstance(a, PromoteVariant) and a.name == "treatment" for a in actions)
    assert EndArms() in actions
    assert next(c for c in status.conditions if c.type == "Concluded").reason == "ConcludedByHand"
    # once terminal, the command (still on the object) changes nothing
    assert look(spec, status, Observations(command=ExperimentCommand.CONCLUDE), minutes=2) == (status, [])


def test_conclude_without_outcomes_has_no_winner_and_keeps_control() -> None:
    spec = make_spec(endPolicy="promoteWinner")
    status, actions = look(spec, started(spec), Observations(command=ExperimentCommand.CONCLUDE))
    assert (status.phase, status.winner) == (ExperimentPhase.CONCLUDED, None)
    assert status.verdict == "concluded by hand: no leader yet (no outcomes), no statistical verdict"
    assert not any(isinstance(a, PromoteVariant) for a in actions)
    assert [v.weight for v in status.variants] == [100, 0]


def test_command_annotation_values() -> None:
    assert ExperimentCommand.parse("conclude:1700000000") is ExperimentCommand.CONCLUDE
    assert ExperimentCommand.parse("stop") is ExperimentCommand.STOP
    assert ExperimentCommand.parse("promote:1") is None
    assert ExperimentCommand.parse("") is None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("promoteWinner", [PromoteVariant, EndArms]),
        ("keepControl", [EndArms]),
        ("manual", []),
    ],
)
def test_end_policies(policy: str, expected: list[type]) -> None:
    spec = make_spec(endPolicy=policy)
    status = started(spec)
    status, actions = look(spec, status, conversions(control=(5000, 500), treatment=(5000, 700)))
    assert status.phase is ExperimentPhase.CONCLUDED
    assert [type(a) for a in actions if isinstance(a, PromoteVariant | EndArms)] == expected
    if policy == "promoteWinner":
        promote = next(a for a in actions if isinstance(a, PromoteVariant))
        assert (promote.name, promote.model.version) == ("treatment", "v2")
    if policy == "manual":
        assert [v.weight for v in status.variants] == [50, 50]


def test_thompson_reweights_towards_the_better_arm_keeping_the_floor() -> None:
    spec = make_spec(allocation="thompson", allocationFloor=10, minimumSamples=100000)
    status = started(spec)
    status, actions = look(spec, status, conversions(control=(500, 50), treatment=(500, 100)))
    weights = [v.weight for v in status.variants]
    assert weights == [10, 90]
    assert SetWeights((("control", 10), ("treatment", 90))) in actions


def test_weight_helpers() -> None:
    assert largest_remainder({"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert largest_remainder({"a": 0, "b": 0}) == {"a": 50, "b": 50}
    assert thompson_weights({"a": 1.0, "b": 0.0, "c": 0.0}, 5) == {"a": 90, "b": 5, "c": 5}


def test_arm_health_fails_at_once_when_told_else_after_the_deadline() -> None:
    from sluice.engine.experiment import ArmHealth

    health = ArmHealth(deadline_s=10.0)
    assert health.judge("a", False, "loading", False, now=0.0) is None
    assert health.judge("a", False, "loading", False, now=9.0) is None
    late = health.judge("a", False, "loading", False, now=10.0)
    assert late is not None
    assert "loading" in late
    assert "10s" in late
    assert health.judge("a", True, "", False, now=11.0) is None
    assert health.judge("a", False, "again", False, now=12.0) is None  # the clock starts over once it was ready
    assert health.judge("b", False, "DEPLOY_FAILED: bad model", True, now=0.0) == "DEPLOY_FAILED: bad model"


def _with_variants(spec: ExperimentSpec, **changes: dict[str, object]) -> ExperimentSpec:
    body = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for v in body["variants"]:
        v.update(changes.get(v["name"], {}))
    return ExperimentSpec.model_validate(body)


def test_weights_of_a_running_experiment_change_at_the_next_look() -> None:
    spec = make_spec(arms=3, minimumSamples=10**6)
    status = started(spec)
    status, actions = look(spec, status, conversions(control=(10, 1), treatment=(10, 1), third=(10, 1)))
    assert not any(isinstance(a, SetWeights) for a in actions)  # unchanged spec: nothing to do
    edited = _with_variants(spec, control={"weight": 60}, treatment={"weight": 20}, third={"weight": 20})
    status, actions = look(edited, status, conversions(control=(10, 1), treatment=(10, 1), third=(10, 1)), minutes=2)
    assert SetWeights((("control", 60), ("treatment", 20), ("third", 20))) in actions
    assert [v.weight for v in status.variants] == [60, 20, 20]
    # a stopped arm keeps 0: the edited weights are shared among the running arms
    obs = Observations(uid="uid-1", arms={"treatment": ArmObservation(failed="cannot load")})
    status, _ = look(edited, status, obs, minutes=3)
    assert [v.weight for v in status.variants] == [75, 0, 25]
    again = _with_variants(edited, control={"weight": 10}, treatment={"weight": 80}, third={"weight": 10})
    status, actions = look(again, status, conversions(control=(10, 1), third=(10, 1)), minutes=4)
    assert [v.weight for v in status.variants] == [50, 0, 50]  # the stopped arm's 80 goes to nobody


def test_a_changed_variant_set_is_refused_and_the_experiment_holds() -> None:
    spec = make_spec(minimumSamples=100)
    status = started(spec)
    assert [(v.name, v.version) for v in status.variants] == [("control", "v1"), ("treatment", "v2")]
    swapped = _with_variants(spec, treatment={"model": {"name": "iris", "uri": "file:models/x.onnx", "version": "v9"}})
    decisive = conversions(control=(5000, 500), treatment=(5000, 900))
    status, actions = look(swapped, status, decisive)
    assert status.phase is ExperimentPhase.RUNNING  # no verdict, no weights, no promotion of an untested model
    assert [a.reason for a in actions if isinstance(a, EmitEvent)] == ["VariantsChangeRefused"]
    assert not any(isinstance(a, SetWeights | PromoteVariant) for a in actions)
    accepted = next(c for c in status.conditions if c.type == "SpecAccepted")
    assert (accepted.status, accepted.reason) == ("False", "VariantsChanged")
    assert "control v1, treatment v2" in accepted.message
    status, actions = look(swapped, status, decisive, minutes=2)
    assert actions == []  # the Event once, not every look
    renamed = make_spec(variants=[*spec.model_dump(by_alias=True)["variants"][:1], {
        "name": "other", "weight": 50, "model": {"name": "iris", "uri": "file:m.onnx", "version": "v2"}}])  # fmt: skip
    status, _ = look(renamed, status, decisive, minutes=3)
    assert status.phase is ExperimentPhase.RUNNING
    status, actions = look(spec, status, decisive, minutes=4)  # put back: the look decides again
    assert next(c for c in status.conditions if c.type == "SpecAccepted").status == "True"
    assert (status.phase, status.winner) == (ExperimentPhase.CONCLUDED, "treatment")


def test_stop_still_ends_a_held_experiment() -> None:
    spec = make_spec()
    status = started(spec)
    swapped = _with_variants(spec, treatment={"model": {"name": "iris", "uri": "file:m.onnx", "version": "v9"}})
    status, actions = look(swapped, status, Observations(command=ExperimentCommand.STOP))
    assert status.phase is ExperimentPhase.STOPPED
    assert EndArms() in actions
    assert [v.weight for v in status.variants] == [100, 0]


def test_an_overflowed_sum_of_squares_is_unreadable_and_the_experiment_holds() -> None:
    """One huge outcome (1e200 squared is inf) once made the variance nan, read as 0, so p = 0 forced a verdict."""
    assert not Sample(500, 1e200, float("inf")).readable
    assert np.isnan(Sample(500, 1e200, float("inf")).variance)
    assert Sample(500, 250.0, 300.0).readable
    spec = make_spec(method="frequentist", minimumDetectableEffect=0.2, primaryMetric={"name": "x", "kind": "mean"})
    status = started(spec)
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 5000), rng.normal(1.0, 1.0, 5000)
    healthy = ArmObservation(Sample(5000, float(a.sum()), float((a * a).sum())))
    broken = ArmObservation(Sample(5001, float(b.sum()) + 1e200, float("inf")))
    obs = Observations(uid="uid-1", arms={"control": healthy, "treatment": broken})
    status, actions = look(spec, status, obs)
    assert status.phase is ExperimentPhase.RUNNING
    assert status.winner is None
    assert not any(isinstance(x, (PromoteVariant, SetWeights)) for x in actions)
    reason_status = _condition(status, "OutcomesRead")
    assert reason_status[0] == "False"
    assert "treatment" in reason_status[2]
    # readable again: the condition turns back to True
    fixed = ArmObservation(Sample(5000, float(b.sum()), float((b * b).sum())))
    status, _ = look(spec, status, Observations(uid="uid-1", arms={"control": healthy, "treatment": fixed}), 2)
    assert _condition(status, "OutcomesRead")[0] == "True"
