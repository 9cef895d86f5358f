"""`primaryMetric.query`: outcomes recorded elsewhere, read per arm and statistic through the provider's `query()`
by the real ExperimentLoop and core. Prometheus for real (scraping an exporter of the shop's own gauges); the
builtin provider, which cannot run PromQL, is refused with the condition OutcomesRead=False."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tests.experiment.helpers import T0, make_spec
from tests.providers.conftest import (  # noqa: F401  (exporter, prometheus_server: a real Prometheus, as fixtures)
    Exporter,
    Prometheus,
    exporter,
    prometheus_server,
)

from sluice.api.experiment import ExperimentPhase, ExperimentStatus
from sluice.engine.experiment import ExperimentLoop, TargetView
from sluice.experiment.actions import Action
from sluice.providers.base import MetricProvider
from sluice.providers.builtin import BuiltinProvider
from sluice.providers.prometheus import PrometheusProvider
from sluice.rollout.measurements import Value

QUERY = 'sum(shop_checkout{arm="$variant", stat="$stat"})'
COUNTS = {"control": (5000.0, 500.0), "treatment": (5000.0, 800.0)}  # (visits, checkouts): 10% vs 16%


class MemoryPlatform:
    """The ExperimentPlatform of a target that exists and is stable; keeps what the loop did."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.saved: list[ExperimentStatus] = []

    async def target(self) -> TargetView:
        return TargetView()

    async def carry_out(self, action: Action) -> None:
        self.actions.append(action)

    async def save(self, status: ExperimentStatus) -> None:
        self.saved.append(status)


async def two_ticks(provider: MetricProvider) -> ExperimentStatus:
    """Start (Pending -> Running), then one look a minute later."""
    spec = make_spec(primaryMetric={"name": "checkout", "query": QUERY}, endPolicy="manual")
    times = iter([T0, T0 + timedelta(minutes=1)])
    loop = ExperimentLoop(spec, MemoryPlatform(), provider, name="shop", uid="uid-1", clock=lambda: next(times))
    await loop.tick()
    assert loop.status.phase is ExperimentPhase.RUNNING
    await loop.tick()
    return loop.status


@pytest.fixture(scope="module")
def shop_exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    gauge = Gauge("shop_checkout", "visits (count) and checkouts (sum) per arm", ["arm", "stat"], registry=registry)
    for arm, (count, total) in COUNTS.items():
        gauge.labels(arm, "count").set(count)
        gauge.labels(arm, "sum").set(total)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_port
        yield Exporter(None, f"http://127.0.0.1:{port}/metrics", f"127.0.0.1:{port}")  # type: ignore[arg-type]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.prometheus
async def test_query_outcomes_from_prometheus_reach_a_verdict(
    shop_exporter: Exporter,
    prometheus_server: Prometheus,  # noqa: F811
) -> None:
    prometheus_server.scrape("shop", shop_exporter.address)
    provider = PrometheusProvider(prometheus_server.url)
    try:
        probe = 'sum(shop_checkout{arm="treatment", stat="sum"})'
        for _ in range(40):  # the first scrape: at most 20 s
            if isinstance(await provider.query(probe), Value):
                break
            await asyncio.sleep(0.5)
        status = await two_ticks(provider)
    finally:
        await provider.close()
    assert [(v.name, v.samples) for v in status.variants] == [("control", 5000), ("treatment", 5000)]
    assert status.variants[0].value == pytest.approx(0.10)
    assert status.variants[1].value == pytest.approx(0.16)
    assert status.phase is ExperimentPhase.CONCLUDED, status.message
    assert status.winner == "treatment"
    assert all(c.type != "OutcomesRead" for c in status.conditions)


async def test_the_builtin_providers_refusal_is_a_condition(shop_exporter: Exporter) -> None:
    provider = BuiltinProvider(shop_exporter.url)
    try:
        status = await two_ticks(provider)
    finally:
        await provider.close()
    assert status.phase is ExperimentPhase.RUNNING
    condition = next(c for c in status.conditions if c.type == "OutcomesRead")
    assert (condition.status, condition.reason) == ("False", "OutcomesUnreadable")
    assert condition.message.startswith("spec.primaryMetric.query for control ($stat=count): ")
    assert "prometheus" in condition.message
    assert all(v.samples == 0 for v in status.variants)
