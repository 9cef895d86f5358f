"""One whole rollout on the REAL local data plane (router + in-process ONNX backends + the example models).

Real step(), real loop, real builtin provider over the router's /metrics, real HTTP traffic. Only the clock is
driven by the test, so a 30 s analysis interval takes no wall time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.rollout.helpers import Clock
from tests.support.traffic import send

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import Phase
from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.routing import Routing, serving_config
from sluice.local.modeldeployment import LocalPlatform
from sluice.providers.builtin import BuiltinProvider
from sluice.rollout.core import version_ref
from sluice.serving.launch import RunningPlane, start_data_plane

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"


def spec(uri: str, version: str) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "fraud", "uri": uri, "version": version},
            "rollout": {"strategy": "canary", "canary": {"steps": [{"weight": 50}]}},
            "analysis": {
                "interval": "30s",
                "minRequests": 30,
                "failureThreshold": 2,
                "checks": [
                    {"name": "errors", "type": "error-rate", "maxRatioToStable": 2},
                    {"name": "drift", "type": "prediction-drift", "max": 0.2},
                ],
            },
        }
    )


V1 = spec("file:fraud-v1.onnx", "v1")


@pytest.fixture
def plane() -> Iterator[RunningPlane]:
    p = start_data_plane(serving_config(V1, Routing(stable=version_ref(V1.model))), "onnx", MODELS, ready_timeout_s=60)
    try:
        yield p
    finally:
        p.stop()


async def rollout(plane: RunningPlane, candidate: ModelDeploymentSpec) -> RolloutLoop:
    clock = Clock()
    provider = BuiltinProvider(plane.metrics_url)
    loop = RolloutLoop(V1, LocalPlatform(V1, plane), provider, name="fraud", clock=clock)
    try:
        await loop.tick()
        await loop.tick()
        assert loop.status.phase is Phase.STABLE
        loop.set_spec(candidate, 2)
        await loop.tick()  # the candidate is loaded beside v1 with no traffic
        await loop.tick()  # ready: 50%
        clock.advance(1)
        await loop.tick()  # baseline
        for i in range(4):
            if loop.status.phase is not Phase.PROGRESSING:
                break
            seen = await send(plane, 120, seed=i)
            assert seen["v2"] > 0
            clock.advance(30)
            await loop.tick()
        await loop.tick()
    finally:
        await provider.close()
    return loop


async def test_drifting_model_is_rolled_back_on_the_real_router(plane: RunningPlane) -> None:
    loop = await rollout(plane, spec("file:fraud-v2-bad.onnx", "v2"))
    assert loop.status.phase is Phase.ROLLED_BACK, loop.status.message
    assert loop.status.failed_checks[0].name == "drift"
    assert "prediction drift" in loop.status.history[0].reason
    assert await send(plane, 30, seed=9) == Counter({"v1": 30})


async def test_good_model_is_promoted_on_the_real_router(plane: RunningPlane) -> None:
    loop = await rollout(plane, spec("file:fraud-v2.onnx", "v2"))
    assert loop.status.phase is Phase.SUCCEEDED, loop.status.message
    assert await send(plane, 30, seed=9) == Counter({"v2": 30})
