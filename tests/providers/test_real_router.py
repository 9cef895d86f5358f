"""Both providers against the REAL Sluice router (in-process ONNX backends, real HTTP, the example models).

What the providers report must equal what the clients saw: every response names the version that answered it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.providers.conftest import Prometheus
from tests.support.traffic import send

from sluice.providers import Window
from sluice.providers.builtin import BuiltinProvider
from sluice.providers.prometheus import PrometheusProvider
from sluice.rollout.measurements import NoData, Value
from sluice.rollout.statistics import psi
from sluice.serving.config import ServingConfig
from sluice.serving.launch import RunningPlane, start_data_plane

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"


def config(canary_uri: str, canary_weight: int) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [
                {"name": "stable", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": 100 - canary_weight},
                {"name": "canary", "version": "v2", "uri": canary_uri, "weight": canary_weight},
            ],
        }
    )


@pytest.fixture(scope="module")
def plane() -> Iterator[RunningPlane]:
    p = start_data_plane(config("file:fraud-v2-bad.onnx", 40), "onnx", MODELS, ready_timeout_s=60)
    try:
        yield p
    finally:
        p.stop()


async def test_builtin_counts_what_clients_saw(plane: RunningPlane) -> None:
    provider = BuiltinProvider(plane.metrics_url)
    try:
        window = Window(model="fraud", interval_s=30)
        assert isinstance(await provider.sample(window), NoData)
        seen = await send(plane, 300, seed=1)
        result = await provider.sample(window)
        assert isinstance(result, Value)
        s = result.value
        assert (s.stable.requests, s.canary.requests) == (seen["v1"], seen["v2"])
        assert s.stable.errors == 0
        assert s.canary.errors == 0
        assert s.canary.scores is not None
        assert s.stable.scores is not None
        # the degraded model's scores differ from v1's on the same traffic: drift is visible in the router's buckets
        assert psi(s.stable.scores.counts, s.canary.scores.counts) > 0.25
    finally:
        await provider.close()


async def test_prometheus_reads_the_real_router(plane: RunningPlane, prometheus_server: Prometheus) -> None:
    prometheus_server.scrape("sluice-router", plane.url.removeprefix("http://"))
    provider = PrometheusProvider(prometheus_server.url)
    try:
        query = 'sum(sluice_requests_total{job="sluice-router",model="fraud",variant="canary"})'
        deadline = time.monotonic() + 20
        before = await provider.query(query)
        while not isinstance(before, Value) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            before = await provider.query(query)
        assert isinstance(before, Value), before
        seen = await send(plane, 200, seed=2)
        expected = before.value + seen["v2"]
        now: object = None
        while time.monotonic() < deadline + 10:
            now = await provider.query(query)
            if isinstance(now, Value) and now.value == expected:
                break
            await asyncio.sleep(0.25)
        assert now == Value(expected)
        result = await provider.sample(Window(model="fraud", interval_s=30, selector='job="sluice-router"'))
        assert isinstance(result, Value)
        assert result.value.canary.requests > 0
        assert result.value.canary.scores is not None
    finally:
        await provider.close()
