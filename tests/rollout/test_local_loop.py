"""The local rollout loop: real step(), real builtin provider over a live /metrics, a data plane test double.

The double implements the DataPlaneHandle protocol (update/stop) and records every ServingConfig it is given;
the test sends traffic into the router's own metrics class as the config it was last given would split it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.rollout.helpers import Clock, make_spec
from tests.support import wait_for_async
from tests.support.router_metrics import exported_router_metrics

from sluice.api.status import Phase
from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.platform import Platform
from sluice.engine.routing import Routing, serving_config
from sluice.local.modeldeployment import LocalPlatform
from sluice.providers.builtin import BuiltinProvider
from sluice.serving.config import ServingConfig
from sluice.serving.metrics import RouterMetrics

MODEL = "fraud"


class RecordingHandle:
    """Test double of the data plane handle: accepts every config and remembers it."""

    def __init__(self) -> None:
        self.configs: list[ServingConfig] = []
        self.stopped = False

    def update(self, config: ServingConfig) -> None:
        self.configs.append(config)

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def router_metrics() -> Iterator[tuple[RouterMetrics, str]]:
    with exported_router_metrics(MODEL) as exporter:
        yield exporter.metrics, exporter.url


def send(metrics: RouterMetrics, config: ServingConfig, n: int, canary_error_rate: float) -> None:
    """n requests split as `config` says; the canary fails a share of its requests with 500."""
    for variant in config.variants:
        count = n * variant.weight // 100
        errors = round(count * canary_error_rate) if variant.name == "canary" else count // 100
        for i in range(count):
            metrics.request(variant.version, variant.name, 500 if i < errors else 200, 0.01)


async def run_rollout(
    metrics: RouterMetrics, url: str, canary_error_rate: float
) -> tuple[RolloutLoop, RecordingHandle]:
    spec_v1 = make_spec("v1", analysis={"interval": "30s", "minRequests": 20, "failureThreshold": 2})
    spec_v1.rollout.canary.steps = spec_v1.rollout.canary.steps[1:]  # one step: 50%
    handle = RecordingHandle()
    platform = LocalPlatform(spec_v1, handle)
    assert isinstance(platform, Platform)
    clock = Clock()
    provider = BuiltinProvider(url)
    loop = RolloutLoop(spec_v1, platform, provider, name="fraud", clock=clock)
    try:
        await loop.tick()  # Initializing
        await loop.tick()  # Stable
        assert loop.status.phase is Phase.STABLE
        spec_v2 = spec_v1.model_copy(update={"model": spec_v1.model.model_copy(update={"version": "v2"})})
        loop.set_spec(spec_v2, 2)
        await loop.tick()  # rollout starts; canary deployed at 0%
        await loop.tick()  # canary ready: gets 50%
        assert loop.status.canary_weight == 50
        clock.advance(1)
        await loop.tick()  # baseline scrape
        for _ in range(6):
            if loop.status.phase not in (Phase.PROGRESSING, Phase.PAUSED):
                break
            send(metrics, handle.configs[-1], 400, canary_error_rate)
            clock.advance(30)
            await loop.tick()
        await loop.tick()
    finally:
        await provider.close()
    return loop, handle


async def test_bad_canary_is_rolled_back_on_the_data_plane(router_metrics: tuple[RouterMetrics, str]) -> None:
    loop, handle = await run_rollout(*router_metrics, canary_error_rate=0.3)
    assert loop.status.phase is Phase.ROLLED_BACK
    final = handle.configs[-1]
    assert [(v.name, v.version, v.weight) for v in final.variants] == [("stable", "v1", 100)]
    assert loop.status.failed_checks[0].name == "error-rate"
    assert loop.status.failed_checks[0].value == pytest.approx(0.3, abs=0.01)
    assert any(e.reason == "AnalysisFailed" for e in loop.platform.events)  # type: ignore[attr-defined]


async def test_good_canary_is_promoted_on_the_data_plane(router_metrics: tuple[RouterMetrics, str]) -> None:
    loop, handle = await run_rollout(*router_metrics, canary_error_rate=0.01)
    assert loop.status.phase is Phase.SUCCEEDED
    weights = [tuple((v.name, v.weight) for v in c.variants) for c in handle.configs]
    assert (("stable", 50), ("canary", 50)) in weights
    assert [(v.name, v.version, v.weight) for v in handle.configs[-1].variants] == [("stable", "v2", 100)]


async def test_run_stops_when_asked(router_metrics: tuple[RouterMetrics, str]) -> None:
    spec = make_spec("v1")
    provider = BuiltinProvider(router_metrics[1])
    loop = RolloutLoop(spec, LocalPlatform(spec, RecordingHandle()), provider, name="fraud", poll_s=0.01)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(loop.run(stop))
        await wait_for_async("the loop's first round", lambda: loop.status.phase is Phase.STABLE, 5, 0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert loop.status.phase is Phase.STABLE
    finally:
        await provider.close()


def test_serving_config_needs_a_stable_version() -> None:
    with pytest.raises(ValueError, match="no stable version"):
        serving_config(make_spec("v1"), Routing())
