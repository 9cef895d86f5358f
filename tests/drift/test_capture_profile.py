"""fromStableVersion's pure parts: the core while a reference is captured, and a profile from a router's sample
(the same as `sluice profile` on the same values; shrunk to fit a ConfigMap; bad samples named)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from tests.drift.test_core import REFERENCE, counts_of, make_spec

from sluice.api.base import get_condition
from sluice.api.drift_policy import DriftState
from sluice.drift.actions import EmitEvent
from sluice.drift.capture import profile_from_sample
from sluice.drift.core import CAPTURING, step
from sluice.drift.observations import Observations
from sluice.drift.profile import ProfileError, build_profile
from sluice.engine.driftpolicy import capture_config, router_profile
from sluice.operator.driftprofiles import annotation_key, encode, profiles_on

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_capturing_is_no_data_with_one_event_and_never_an_action() -> None:
    spec = make_spec(reference={"fromStableVersion": True}, action={"type": "rollback", "cooldown": "1m"})
    # A Drifted policy whose stable version changed: while the new reference is captured, no verdict and no action.
    drifted, actions = step(spec, None, Observations("p", 1, REFERENCE, window=counts_of(5000, shift=2.0)), T0)
    assert drifted.state == DriftState.DRIFTED
    assert any(type(a).__name__ == "RollbackTarget" for a in actions)
    status, actions = step(
        spec, drifted, Observations("p", 1, capturing="capturing v2: 10 of 500 rows"), T0 + timedelta(hours=2)
    )
    assert status.state == DriftState.NO_DATA
    assert (status.features, status.score) == ([], None)
    evaluated = get_condition(status.conditions, "Evaluated")
    assert evaluated is not None
    assert (evaluated.status, evaluated.reason, evaluated.message) == (
        "False",
        CAPTURING,
        "capturing v2: 10 of 500 rows",
    )
    drifted_condition = get_condition(status.conditions, "Drifted")
    assert drifted_condition is not None
    assert drifted_condition.status == "False"
    assert actions == [EmitEvent("Normal", CAPTURING, "capturing v2: 10 of 500 rows")]
    # Progress later: the message follows, no second Event.
    later, actions = step(
        spec, status, Observations("p", 1, capturing="capturing v2: 400 of 500 rows"), T0 + timedelta(hours=3)
    )
    assert actions == []
    assert later.message == "capturing v2: 400 of 500 rows"


def sample_of(columns: dict[str, Any], categorical: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """What the router's endpoint answers for these rows: per feature its values sorted, and the missing count."""
    kept = len(next(iter(columns.values())))
    features = []
    for name, values in columns.items():
        if name in categorical:
            present = sorted(str(v) for v in values if v is not None)
            features.append({"name": name, "type": "categorical", "values": present, "missing": kept - len(present)})
        else:
            arr = np.asarray(values, dtype=np.float64)
            finite = np.sort(arr[np.isfinite(arr)]).tolist()
            features.append({"name": name, "type": "numeric", "values": finite, "missing": kept - len(finite)})
    return {"policy": "p", "version": "v1", "rows": 50_000, "kept": kept, "age_s": 60.0, "features": features}


def test_a_sample_gives_the_profile_sluice_profile_gives_on_the_same_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=2000)
    x[:7] = np.nan
    kinds = rng.choice(["a", "b", "c"], size=2000).astype(object)
    kinds[:3] = None
    columns = {"x[0]": x, "kind": kinds, "prediction": rng.uniform(size=2000)}
    got = profile_from_sample(sample_of(columns, {"kind"}), source="s")
    want = build_profile(columns, categorical=["kind"], source="s")
    for g, w in zip(got.features, want.features, strict=True):  # the same but for the summation order of mean, std
        exact = {"mean", "std"}
        assert g.model_dump(exclude=exact) == w.model_dump(exclude=exact)
        if hasattr(g, "mean"):
            assert g.mean == pytest.approx(w.mean, rel=1e-12)  # type: ignore[union-attr]
            assert g.std == pytest.approx(w.std, rel=1e-12)  # type: ignore[union-attr]
    assert (got.rows, got.source) == (want.rows, want.source)
    assert (got.rows, got.feature("x[0]").missing, got.feature("kind").missing) == (2000, 7, 3)


def test_the_profile_shrinks_its_ks_sample_to_fit_a_configmap() -> None:
    rng = np.random.default_rng(4)
    columns = {f"x[{i}]": rng.normal(size=10_000) for i in range(8)}
    profile = profile_from_sample(sample_of(columns), source="s", max_bytes=200_000)
    assert len(profile.to_json().encode()) <= 200_000
    sample = profile.feature("x[0]").sample  # type: ignore[union-attr]
    assert 0 < len(sample) < 10_000
    assert profile.feature("x[0]").edges == build_profile(columns).feature("x[0]").edges  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"kept": 3, "features": [{"name": "a", "type": "numeric", "values": [], "missing": 3}]}, "none of the 3"),
        ({"kept": 3, "features": [{"name": "a", "type": "numeric", "values": [1.0], "missing": 0}]}, "!= 3 rows"),
        ({"features": []}, "not a capture sample"),
    ],
)
def test_bad_samples_are_named(sample: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_from_sample(sample, source="s")


def test_capture_config_sizes_the_sample_to_the_routers_bound() -> None:
    few = make_spec(reference={"fromStableVersion": True})
    config = capture_config("p", few, "v1")
    assert config.capture is not None
    assert (config.capture.size, config.capture.version) == (10_000, "v1")
    assert [(f.key, f.type) for f in config.capture.features] == [
        ("x[0]", "numeric"), ("x[1]", "numeric"), ("x[2]", "numeric"), ("kind", "categorical")
    ]  # fmt: skip
    many = make_spec(reference={"fromStableVersion": True}, features=[{"name": "x", "index": i} for i in range(40)])
    sized = capture_config("q", many, "v1", token="t" * 20).capture
    assert sized is not None
    assert (sized.size, sized.values, sized.token) == (5_000, 200_000, "t" * 20)


def test_captures_beyond_the_routers_bound_wait_their_turn_on_the_target() -> None:
    """Two policies capturing 200,000 values each: the router samples the first; the second waits (it is left out
    of the serving config, so the config stays valid) until the first has turned into bins."""
    spec = make_spec(reference={"fromStableVersion": True}, features=[{"name": "x", "index": i} for i in range(20)])
    first, second = capture_config("a", spec, "v1"), capture_config("b", spec, "v1")
    body = {"metadata": {"annotations": {annotation_key("a"): encode(first), annotation_key("b"): encode(second)}}}
    assert [p.policy for p in profiles_on(body)] == ["a"]
    bins = router_profile("a", make_spec(), REFERENCE)
    body["metadata"]["annotations"][annotation_key("a")] = encode(bins)
    assert [p.policy for p in profiles_on(body)] == ["a", "b"]
