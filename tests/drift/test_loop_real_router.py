"""DriftLoop on the REAL router: the router bins requests on the profile's edges, the builtin provider reads its
/metrics, the loop turns two readings into a window and the core decides. Shifted traffic drifts and rolls back.

The platform here only records what the loop asks (the actions' effect on a cluster is not built yet).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support.traffic import MODELS

from sluice.api.base import get_condition
from sluice.api.drift_policy import DriftPolicySpec, DriftPolicyStatus, DriftState
from sluice.drift.actions import Action, EmitEvent, RollbackTarget
from sluice.drift.profile import build_profile
from sluice.engine.driftpolicy import DriftLoop, router_profile
from sluice.providers.builtin import BuiltinProvider
from sluice.serving.config import ServingConfig
from sluice.serving.launch import RunningPlane, start_data_plane


def _load_traffic() -> Any:
    """The examples' traffic generator (the distribution the example models were trained on)."""
    spec = importlib.util.spec_from_file_location("example_traffic", MODELS / "traffic.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


traffic = _load_traffic()
POLICY = "fraud-drift"
SPEC = DriftPolicySpec.model_validate(
    {
        "target": {"name": "fraud"},
        "reference": {"uri": "file:///profiles/fraud.json"},
        "features": [{"name": "features", "index": i} for i in range(4)],
        "window": "10m",
        "interval": "1m",
        "minSamples": 500,
        "action": {"type": "rollback", "cooldown": "1h"},
    }
)
PROFILE = build_profile({f"features[{j}]": traffic.features(20_000, seed=99)[:, j] for j in range(4)})
# A policy on a column the model's input does not have (features is [N, 4]): the router counts its rows as missing.
MISSING_SPEC = SPEC.model_copy(
    update={"features": [SPEC.features[0], SPEC.features[0].model_copy(update={"index": 9})], "min_samples": 100}
)
MISSING_PROFILE = build_profile({f"features[{j}]": np.random.default_rng(j).normal(size=1000) for j in (0, 9)})


class Recorder:
    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.saved: list[DriftPolicyStatus] = []

    async def carry_out(self, action: Action) -> None:
        self.actions.append(action)

    async def save(self, status: DriftPolicyStatus) -> None:
        self.saved.append(status)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def plane() -> Iterator[RunningPlane]:
    config = ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [{"name": "stable", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": 100}],
            "drift": [
                router_profile(POLICY, SPEC, PROFILE).model_dump(),
                router_profile("fraud-missing", MISSING_SPEC, MISSING_PROFILE).model_dump(),
            ],
        }
    )
    p = start_data_plane(config, "onnx", MODELS, ready_timeout_s=60)
    try:
        yield p
    finally:
        p.stop()


async def _send(plane: RunningPlane, rows: int, seed: int, shift: float = 0.0) -> None:
    x = traffic.features(rows, seed=seed)
    x[:, 0] += shift
    async with httpx.AsyncClient(timeout=30) as client:
        for chunk in np.array_split(x, 4):
            resp = await client.post(f"{plane.url}/v2/models/fraud/infer", json=traffic.v2_request(chunk))
            resp.raise_for_status()


async def test_loop_reads_the_router_and_drifts_on_shifted_traffic(plane: RunningPlane) -> None:
    recorder, clock = Recorder(), Clock()
    provider = BuiltinProvider(plane.metrics_url)
    loop = DriftLoop(SPEC, recorder, provider, PROFILE, name=POLICY, model="fraud", clock=clock)
    try:
        await loop.tick()  # baseline reading
        assert loop.status.state == DriftState.NO_DATA
        await _send(plane, 2000, seed=1)
        clock.now += timedelta(minutes=1)
        await loop.tick()
        assert loop.status.state == DriftState.OK, loop.status.message
        assert [f.samples for f in loop.status.features] == [2000] * 4
        await _send(plane, 4000, seed=2, shift=1.5)
        clock.now += timedelta(minutes=11)  # a fresh window: only the shifted rows
        actions = await loop.tick()
        assert loop.status.state == DriftState.DRIFTED, loop.status.message
        states: dict[str, Any] = {f.name: f.state for f in loop.status.features}
        assert states["features[0]"] == DriftState.DRIFTED
        assert states["features[1]"] == DriftState.OK
        assert loop.status.samples == 4000
        assert RollbackTarget("fraud", actions[1].reason) in actions  # type: ignore[union-attr]
        assert any(isinstance(a, EmitEvent) and a.reason == "DriftDrifted" for a in actions)
        assert recorder.saved[-1] == loop.status

        # The operator restarts: a new loop from the saved status holds it (no step, nothing saved) while its own
        # history is short and has fewer than minSamples rows, instead of reading the gap as NoData.
        after, drifted = Recorder(), loop.status
        resumed = DriftLoop(SPEC, after, provider, PROFILE, name=POLICY, model="fraud", status=drifted, clock=clock)
        clock.now += timedelta(minutes=2)
        assert await resumed.tick() == []  # its baseline
        await _send(plane, 400, seed=3, shift=1.5)
        clock.now += timedelta(minutes=1)
        assert await resumed.tick() == []  # 400 rows < minSamples, 1 of 10 minutes
        assert after.saved == []
        assert resumed.status == drifted
        await _send(plane, 400, seed=4, shift=1.5)
        clock.now += timedelta(minutes=1)
        actions = await resumed.tick()  # 800 rows: evaluated, still Drifted, no state change, in cooldown
        assert resumed.status.state == DriftState.DRIFTED
        assert resumed.status.samples == 800
        assert actions == []
        assert after.saved == [resumed.status]
    finally:
        await provider.close()


async def test_unreachable_router_is_a_condition_and_no_action() -> None:
    recorder = Recorder()
    provider = BuiltinProvider("http://127.0.0.1:9/metrics", timeout_s=1)
    loop = DriftLoop(SPEC, recorder, provider, PROFILE, name=POLICY, model="fraud", clock=Clock())
    try:
        actions = await loop.tick()
        condition = get_condition(loop.status.conditions, "Evaluated")
        assert condition is not None
        assert condition.reason == "NoCounts"
        assert "unreachable" in condition.message
        assert [type(a) for a in actions] == [EmitEvent]
    finally:
        await provider.close()


async def test_a_feature_missing_from_the_profile_names_it_and_reads_nothing() -> None:
    spec = SPEC.model_copy(update={"features": [*SPEC.features, SPEC.features[0].model_copy(update={"index": 9})]})
    recorder = Recorder()
    provider = BuiltinProvider("http://127.0.0.1:9/metrics", timeout_s=1)
    loop = DriftLoop(spec, recorder, provider, PROFILE, name=POLICY, model="fraud", clock=Clock())
    try:
        await loop.tick()
        assert "spec.features[4]" in loop.status.message
        assert "features[9]" in loop.status.message
        assert not any(isinstance(a, RollbackTarget) for a in recorder.actions)
    finally:
        await provider.close()


def test_router_profile_carries_the_profile_edges_categories_and_prediction() -> None:
    rng = np.random.default_rng(3)
    profile = build_profile(
        {"prediction": rng.uniform(0, 5, 1000), "kind": rng.choice(["a", "b"], 1000), "x[1]": rng.normal(size=1000)}
    )
    spec = SPEC.model_copy(
        update={
            "features": [
                SPEC.features[0].model_copy(update={"name": "x", "index": 1}),
                SPEC.features[0].model_copy(update={"name": "kind", "index": None, "type": "categorical"}),
                SPEC.features[0].model_copy(update={"name": "prediction", "index": None}),
            ]
        }
    )
    config = router_profile("p", spec, profile)
    assert [f.key for f in config.features] == ["x[1]", "kind"]
    assert config.features[0].edges == tuple(profile.feature("x[1]").edges)  # type: ignore[union-attr]
    assert config.features[1].categories == tuple(profile.feature("kind").categories)  # type: ignore[union-attr]
    assert config.prediction is not None
    assert config.prediction.edges == tuple(profile.feature("prediction").edges)  # type: ignore[union-attr]


async def test_a_column_the_requests_lack_is_named_not_left_no_data(plane: RunningPlane) -> None:
    recorder, clock = Recorder(), Clock()
    provider = BuiltinProvider(plane.metrics_url)
    loop = DriftLoop(
        MISSING_SPEC, recorder, provider, MISSING_PROFILE, name="fraud-missing", model="fraud", clock=clock
    )
    try:
        await loop.tick()
        await _send(plane, 400, seed=5)
        clock.now += timedelta(minutes=1)
        actions = await loop.tick()
        condition = get_condition(loop.status.conditions, "Evaluated")
        assert condition is not None
        assert condition.reason == "FeatureMissing"
        assert condition.message.startswith(
            "spec.features[1]: none of the 400 rows in the window had input 'features' column 9"
        )
        assert [type(a) for a in actions] == [EmitEvent]
    finally:
        await provider.close()
