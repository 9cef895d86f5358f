"""The drift core: states, verdict, Holm, conditions, Events, actions and cooldown; properties with hypothesis."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from sluice.api.base import get_condition
from sluice.api.drift_policy import DriftPolicySpec, DriftPolicyStatus, DriftState
from sluice.drift import statistics as st
from sluice.drift.actions import CreateRetrainJob, EmitEvent, RollbackTarget
from sluice.drift.core import evaluate, job_name, step
from sluice.drift.observations import Observations, Problem, Reading, baseline, window_counts
from sluice.drift.profile import Profile, build_profile

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RNG = np.random.default_rng(7)
REFERENCE = build_profile(
    {
        "x[0]": RNG.normal(size=50_000),
        "x[1]": RNG.normal(size=50_000),
        "x[2]": RNG.normal(size=50_000),
        "kind": RNG.choice(["a", "b", "c"], size=50_000, p=[0.5, 0.3, 0.2]),
    }
)
EDGES = {f.name: np.asarray(f.edges) for f in REFERENCE.features if f.type == "numeric"}


def make_spec(**overrides: Any) -> DriftPolicySpec:
    data: dict[str, Any] = {
        "target": {"name": "fraud"},
        "reference": {"uri": "file:///profiles/fraud.json"},
        "features": [
            {"name": "x", "index": 0},
            {"name": "x", "index": 1},
            {"name": "x", "index": 2, "method": "ks"},
            {"name": "kind", "type": "categorical", "method": "chi2"},
        ],
        "minSamples": 500,
        "interval": "1m",
        "action": {"type": "alert"},
    }
    data.update(overrides)
    return DriftPolicySpec.model_validate(data)


def counts_of(rows: int, shift: float = 0.0, seed: int = 0, kind_p: tuple[float, ...] = (0.5, 0.3, 0.2)) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for key, edges in EDGES.items():
        values = rng.normal(shift if key == "x[0]" else 0.0, size=rows)
        out[key] = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1).tolist()
    kinds = rng.choice(3, size=rows, p=list(kind_p))
    out["kind"] = [*np.bincount(kinds, minlength=3).tolist(), 0]  # a, b, c, other
    return out


def observe(window: dict | None, profile: Profile | None = REFERENCE, **kw: Any) -> Observations:
    return Observations(policy="fraud-drift", generation=1, reference=profile, window=window, **kw)


def test_identical_traffic_is_ok_and_shifted_traffic_drifts_with_an_event_and_condition() -> None:
    spec = make_spec()
    status, actions = step(spec, None, observe(counts_of(5000, seed=1)), T0)
    assert status.state == DriftState.OK
    assert {f.name: f.state for f in status.features} == dict.fromkeys(["x[0]", "x[1]", "x[2]", "kind"], DriftState.OK)
    assert actions == [EmitEvent("Normal", "DriftOk", actions[0].message)]  # NoData -> Ok
    status, actions = step(spec, status, observe(counts_of(5000, shift=1.0, seed=2)), T0 + timedelta(minutes=1))
    assert status.state == DriftState.DRIFTED
    assert status.drifted_features == 1
    assert status.drifted_share == pytest.approx(0.25)
    assert status.features[0].state == DriftState.DRIFTED
    assert status.score == pytest.approx(status.features[0].score)
    assert [type(a) for a in actions] == [EmitEvent]
    assert actions[0].reason == "DriftDrifted"
    assert "x[0]" in actions[0].message
    drifted = get_condition(status.conditions, "Drifted")
    assert drifted is not None
    assert drifted.status == "True"
    # Same state again: no new Event.
    status, actions = step(spec, status, observe(counts_of(5000, shift=1.0, seed=3)), T0 + timedelta(minutes=2))
    assert actions == []


def test_below_min_samples_is_no_data_never_drifted() -> None:
    window = counts_of(400, shift=3.0)
    status, actions = step(make_spec(action={"type": "rollback"}), None, observe(window), T0)
    assert status.state == DriftState.NO_DATA
    assert all(f.state == DriftState.NO_DATA and f.score is None for f in status.features)
    assert actions == []


def test_not_due_before_interval_changes_nothing() -> None:
    spec = make_spec()
    status, _ = step(spec, None, observe(counts_of(5000)), T0)
    again, actions = step(spec, status, observe(counts_of(5000, shift=2.0)), T0 + timedelta(seconds=30))
    assert again == status
    assert actions == []


def test_rollback_runs_once_per_cooldown() -> None:
    spec = make_spec(action={"type": "rollback", "cooldown": "10m"})
    drifted = observe(counts_of(5000, shift=1.0))
    status, actions = step(spec, None, drifted, T0)
    assert RollbackTarget("fraud", actions[1].reason) in actions  # type: ignore[union-attr]
    assert status.last_action == T0
    assert status.last_action_type == "rollback"
    for minute in range(1, 10):
        status, actions = step(spec, status, drifted, T0 + timedelta(minutes=minute))
        assert not any(isinstance(a, RollbackTarget) for a in actions)
    status, actions = step(spec, status, drifted, T0 + timedelta(minutes=10))
    assert any(isinstance(a, RollbackTarget) for a in actions)


def test_retrain_creates_a_job_with_sluice_env() -> None:
    spec = make_spec(action={"type": "retrain", "jobTemplate": {"spec": {"template": {"spec": {}}}}})
    window_start = T0 - timedelta(hours=1)
    obs = observe(counts_of(5000, shift=1.0), reference_uri="file:///profiles/fraud.json", window_start=window_start)
    status, actions = step(spec, None, obs, T0)
    jobs = [a for a in actions if isinstance(a, CreateRetrainJob)]
    assert len(jobs) == 1
    env = dict(jobs[0].env)
    assert env["SLUICE_POLICY"] == "fraud-drift"
    assert env["SLUICE_TARGET"] == "fraud"
    assert env["SLUICE_DRIFTED_FEATURES"] == "x[0]"
    assert env["SLUICE_REFERENCE_URI"] == "file:///profiles/fraud.json"
    assert env["SLUICE_WINDOW_START"] == window_start.isoformat()
    assert env["SLUICE_WINDOW_END"] == T0.isoformat()
    assert float(env["SLUICE_DRIFT_SCORE"]) > 0.25
    assert status.last_job == jobs[0].name == job_name("fraud-drift", DriftPolicyStatus().digest())
    # The same decision from the same saved status (taken again after a restart) names the same Job; the next
    # decision, from the status that recorded this one, names another.
    again = [a for a in step(spec, None, obs, T0 + timedelta(seconds=7))[1] if isinstance(a, CreateRetrainJob)]
    assert [j.name for j in again] == [jobs[0].name]
    later = step(spec, status, obs, T0 + timedelta(days=2))[1]
    assert [a.name for a in later if isinstance(a, CreateRetrainJob)] not in ([], [jobs[0].name])


def test_job_names_are_dns_labels() -> None:
    name = job_name("A_very.Long_policy" * 5, "0123456789abcdef")
    assert len(name) <= 63
    assert name.endswith("-retrain-0123456789")
    assert all(c.isalnum() or c == "-" for c in name)
    assert name == name.lower()


@pytest.mark.parametrize(
    ("obs", "reason", "field"),
    [
        (observe(None, profile=None), "NoReference", "spec.reference"),
        (observe(None), "NoCounts", "spec.target"),
        (observe({}, problem=Problem("ReferenceUnreachable", "spec.reference.uri", "404")), "ReferenceUnreachable", ""),
        (observe(counts_of(5000), profile=build_profile({"y": np.arange(10.0)})), "ReferenceMismatch", "features[0]"),
        (observe({**counts_of(5000), "x[1]": [1, 2, 3]}), "CountsMismatch", "spec.features[1]"),
    ],
)
def test_bad_input_is_a_condition_naming_the_field_and_no_action(obs: Observations, reason: str, field: str) -> None:
    spec = make_spec(action={"type": "rollback"})
    previous = DriftPolicyStatus(state=DriftState.DRIFTED)
    status, actions = step(spec, previous, obs, T0)
    condition = get_condition(status.conditions, "Evaluated")
    assert condition is not None
    assert condition.status == "False"
    assert condition.reason == reason
    assert field in condition.message
    assert actions == [EmitEvent("Warning", reason, condition.message)]
    assert status.last_action is None
    status, actions = step(spec, status, obs, T0 + timedelta(minutes=5))
    assert actions == []  # the same problem is not announced twice


def test_categorical_type_mismatch_names_the_type_field() -> None:
    spec = make_spec(features=[{"name": "x", "index": 0, "type": "categorical"}])
    status, _ = step(spec, None, observe(counts_of(5000)), T0)
    assert "spec.features[0].type" in status.message


def test_holm_adjusts_the_p_value_methods_only() -> None:
    spec = make_spec(method="ks")
    result = evaluate(spec, REFERENCE, counts_of(5000, seed=4))
    tested = [f for f in result.features if f.p_value is not None]
    assert len(tested) == 4
    np.testing.assert_allclose([f.adjusted_p_value for f in tested], st.holm([f.p_value for f in tested]))


def test_drift_share_needs_enough_drifted_features() -> None:
    window = counts_of(5000, shift=1.0)
    assert evaluate(make_spec(driftShare=0.5), REFERENCE, window).state == DriftState.WARNING
    assert evaluate(make_spec(driftShare=0.25), REFERENCE, window).state == DriftState.DRIFTED


def test_exact_ks_on_samples_when_raw_values_are_given() -> None:
    spec = make_spec(features=[{"name": "x", "index": 2, "method": "ks"}])
    values = np.random.default_rng(5).normal(0.2, size=3000)
    counts = counts_of(3000)
    result = evaluate(spec, REFERENCE, counts, {"x[2]": values.tolist()})
    sample = REFERENCE.feature("x[2]").sample  # type: ignore[union-attr]
    expected = st.ks_exact(sample, values)
    assert result.features[0].score == pytest.approx(expected.statistic)
    assert result.features[0].p_value == pytest.approx(expected.p_value)


def test_window_counts_from_two_readings_survive_a_counter_reset() -> None:
    earlier = Reading(T0, {"a": [10, 20, 30]})
    later = Reading(T0 + timedelta(minutes=5), {"a": [15, 5, 40], "b": [1, 2]})
    assert window_counts(earlier, later) == {"a": [5.0, 5.0, 10.0], "b": [1.0, 2.0]}
    assert window_counts(None, later)["a"] == [15.0, 5.0, 40.0]
    readings = [Reading(T0 + timedelta(minutes=m), {}) for m in (0, 5, 10, 15)]
    assert baseline(readings, T0 + timedelta(minutes=16), timedelta(minutes=10)).time == T0 + timedelta(minutes=5)
    assert baseline(readings, T0 + timedelta(minutes=5), timedelta(hours=1)).time == T0
    assert baseline([], T0, timedelta(minutes=1)) is None


def test_false_positive_rate_on_unshifted_windows_is_at_most_alpha() -> None:
    """Seeded simulation: windows drawn from the reference itself; p-value methods drift at most alpha of the time."""
    spec = make_spec(method="ks", thresholds={"warning": 0.0, "critical": 0.0}, alpha=0.05)
    trials = 300
    drifted = sum(
        evaluate(spec, REFERENCE, counts_of(2000, seed=100 + i)).state == DriftState.DRIFTED for i in range(trials)
    )
    assert drifted / trials <= 0.05


windows = hst.lists(hst.integers(0, 200), min_size=10, max_size=10)


@settings(max_examples=150, deadline=None)
@given(
    window=hst.fixed_dictionaries({"x[0]": windows, "x[1]": windows, "x[2]": windows}),
    min_samples=hst.integers(1, 3000),
    action=hst.sampled_from(["alert", "rollback"]),
)
def test_property_no_drift_below_min_samples_and_actions_only_when_drifted(
    window: dict[str, list[int]], min_samples: int, action: str
) -> None:
    spec = make_spec(
        features=[{"name": "x", "index": i} for i in range(3)], minSamples=min_samples, action={"type": action}
    )
    status, actions = step(spec, None, observe(window), T0)
    for feature in status.features:
        if feature.samples < min_samples:
            assert feature.state == DriftState.NO_DATA
    if all(sum(c) < min_samples for c in window.values()):
        assert status.state == DriftState.NO_DATA
    if any(isinstance(a, RollbackTarget) for a in actions):
        assert status.state == DriftState.DRIFTED
    assert (status.state == DriftState.DRIFTED) == (status.drifted_features > 0)


@settings(max_examples=60, deadline=None)
@given(
    shifts=hst.lists(hst.sampled_from([0.0, 0.3, 1.5]), min_size=1, max_size=25),
    cooldown_minutes=hst.integers(1, 30),
)
def test_property_at_most_one_action_per_cooldown(shifts: list[float], cooldown_minutes: int) -> None:
    spec = make_spec(action={"type": "rollback", "cooldown": f"{cooldown_minutes}m"})
    status: DriftPolicyStatus | None = None
    times = []
    for minute, shift in enumerate(shifts):
        now = T0 + timedelta(minutes=minute)
        status, actions = step(spec, status, observe(counts_of(2000, shift=shift, seed=minute)), now)
        times += [now for a in actions if isinstance(a, RollbackTarget)]
    assert all(b - a >= timedelta(minutes=cooldown_minutes) for a, b in itertools.pairwise(times))


def test_a_feature_whose_rows_are_all_missing_is_named() -> None:
    window = counts_of(5000)
    window["x[1]"] = [0] * len(window["x[1]"])
    status, actions = step(make_spec(), None, observe(window, window_missing={"x[1]": 5000.0}), T0)
    condition = get_condition(status.conditions, "Evaluated")
    assert condition is not None
    assert condition.reason == "FeatureMissing"
    assert condition.message.startswith("spec.features[1]: none of the 5000 rows in the window had input 'x' column 1")
    assert actions == [EmitEvent("Warning", "FeatureMissing", condition.message)]
    few, _ = step(make_spec(), None, observe(window, window_missing={"x[1]": 10.0}), T0)  # below minSamples: NoData
    assert get_condition(few.conditions, "Evaluated").status == "True"  # type: ignore[union-attr]
