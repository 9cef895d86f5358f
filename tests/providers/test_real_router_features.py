"""Both providers read a drift policy's feature bin counters from the REAL router: equal to numpy's own binning of
the rows the client sent, on the profile's edges.

Named to run after test_prometheus.py: the session's Prometheus keeps every scrape target a test adds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tests.providers.conftest import Prometheus
from tests.support.traffic import MODELS

from sluice.api.drift_policy import DriftPolicySpec
from sluice.drift.profile import build_profile, count_values
from sluice.engine.driftpolicy import router_profile
from sluice.providers.builtin import BuiltinProvider
from sluice.providers.prometheus import PrometheusProvider
from sluice.rollout.measurements import Value
from sluice.serving.config import ServingConfig
from sluice.serving.launch import RunningPlane, start_data_plane

SPEC = DriftPolicySpec.model_validate(
    {
        "target": {"name": "fraud"},
        "reference": {"uri": "file:///p.json"},
        "features": [{"name": "features", "index": i} for i in range(4)],
    }
)
RNG = np.random.default_rng(5)
PROFILE = build_profile({f"features[{j}]": RNG.normal(size=5000) for j in range(4)}, bins=6)


@pytest.fixture(scope="module")
def plane() -> Iterator[RunningPlane]:
    config = ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [{"name": "stable", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": 100}],
            "drift": [router_profile("fraud-drift", SPEC, PROFILE).model_dump()],
        }
    )
    p = start_data_plane(config, "onnx", MODELS, ready_timeout_s=60)
    try:
        yield p
    finally:
        p.stop()


def _send(plane: RunningPlane, x: np.ndarray) -> None:
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    httpx.post(f"{plane.url}/v2/models/fraud/infer", json=body, timeout=30).raise_for_status()


def _expected(x: np.ndarray) -> dict[str, dict[int, float]]:
    out = {}
    for j in range(4):
        counts = count_values(PROFILE.feature(f"features[{j}]"), x[:, j].astype(np.float64))
        out[f"features[{j}]"] = {i: float(c) for i, c in enumerate(counts) if c}
    return out


async def test_builtin_feature_bins_equal_numpy_binning(plane: RunningPlane) -> None:
    provider = BuiltinProvider(plane.metrics_url)
    try:
        before = await provider.feature_bins("fraud", "fraud-drift")
        assert isinstance(before, Value)
        x = RNG.normal(0.3, 1.2, size=(700, 4)).astype(np.float32)
        _send(plane, x)
        after = await provider.feature_bins("fraud", "fraud-drift")
        assert isinstance(after, Value)
        delta = {
            k: {
                i: v - before.value.get(k, {}).get(i, 0.0)
                for i, v in bins.items()
                if v - before.value.get(k, {}).get(i, 0.0)
            }
            for k, bins in after.value.items()
        }
        assert delta == _expected(x)
        other = await provider.feature_bins("fraud", "another-policy")
        assert other == Value({})
    finally:
        await provider.close()


@pytest.mark.prometheus
async def test_prometheus_feature_bins_equal_the_builtin_reading(
    plane: RunningPlane, prometheus_server: Prometheus
) -> None:
    prometheus_server.scrape("sluice-router-features", plane.url.removeprefix("http://"))
    _send(plane, RNG.normal(size=(300, 4)).astype(np.float32))
    builtin, prometheus = BuiltinProvider(plane.metrics_url), PrometheusProvider(prometheus_server.url)
    try:
        direct = await builtin.feature_bins("fraud", "fraud-drift")
        assert isinstance(direct, Value)
        deadline, seen = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            seen = await prometheus.feature_bins("fraud", "fraud-drift")
            if seen == direct:
                break
            await asyncio.sleep(0.25)
        assert seen == direct
    finally:
        await builtin.close()
        await prometheus.close()
