"""The Prometheus provider against a real Prometheus scraping the router's metrics every second."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from tests.providers.conftest import MODEL
from tests.support import free_port
from tests.support.router_metrics import Exporter

from sluice.api.model_deployment import ProviderSpec
from sluice.providers import Window, create_provider
from sluice.providers.prometheus import PrometheusProvider
from sluice.rollout.measurements import MetricError, NoData, Value
from sluice.serving import metric_names as mn

pytestmark = pytest.mark.prometheus

PROM_MODEL = "scoring"  # its own model label, so builtin tests sharing the exporter do not interfere


async def query_until(provider: PrometheusProvider, promql: str, expected: float, within_s: float = 15) -> float:
    """Query until the answer is `expected` (scrapes land every second); fail naming the last answer."""
    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        last = await provider.query(promql)
        if isinstance(last, Value) and last.value == expected:
            return last.value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{promql} never reached {expected}: last {last}")


async def one_more_scrape(provider: PrometheusProvider) -> None:
    """Wait for the exporter's next scrape to be stored (the count of its `up` samples grows by one)."""
    samples = 'count_over_time(up{job="exporter"}[10m])'
    now = await provider.query(samples)
    assert isinstance(now, Value), now
    await query_until(provider, samples, now.value + 1)


async def test_sample_reads_interval_increases(exporter: Exporter, prometheus: str) -> None:
    m = exporter.metrics
    m.model = PROM_MODEL
    try:
        # series exist at zero before the traffic, as they do in a router that has just started
        for variant, version in (("stable", "v1"), ("canary", "v2")):
            for code in ("200", "500"):
                m.requests.labels(PROM_MODEL, version, variant, code)
            m.latency.labels(PROM_MODEL, version, variant)
            m.score.labels(PROM_MODEL, version, variant)
        provider = PrometheusProvider(prometheus)
        try:
            total = f'sum({mn.REQUESTS_TOTAL}{{model="{PROM_MODEL}"}})'
            await query_until(provider, total, 0)
            await one_more_scrape(provider)  # a second sample at zero: increase() sees the traffic start from 0
            for i in range(900):
                m.request("v1", "stable", 500 if i < 9 else 200, 0.02)
                m.scores("v1", "stable", [0.3])
            for i in range(100):
                m.request("v2", "canary", 500 if i < 10 else 200, 0.2)
                m.scores("v2", "canary", [0.9])
            assert await query_until(provider, total, 1000) == 1000
            await one_more_scrape(provider)
            result = await provider.sample(Window(model=PROM_MODEL, interval_s=30))
            assert isinstance(result, Value), result
            s = result.value
            # increase() extrapolates to the window's edges; the shares are what analysis relies on
            assert s.stable.requests == pytest.approx(900, rel=0.3)
            assert s.canary.requests == pytest.approx(100, rel=0.3)
            assert s.canary.errors / s.canary.requests == pytest.approx(0.10, rel=0.05)
            assert s.stable.errors / s.stable.requests == pytest.approx(0.01, rel=0.05)
            assert s.canary.scores is not None
            assert s.stable.scores is not None
            assert s.canary.scores.upper_bounds == s.stable.scores.upper_bounds
            top = s.canary.scores.upper_bounds.index(0.9)
            assert s.canary.scores.counts[top] == pytest.approx(s.canary.scores.total)
            assert s.canary.latency is not None
            assert s.canary.latency.total == pytest.approx(s.canary.requests, rel=0.05)
        finally:
            await provider.close()
    finally:
        m.model = MODEL


async def test_query_outcomes_are_data(prometheus: str) -> None:
    provider = PrometheusProvider(prometheus)
    try:
        assert await provider.query("1 + 1") == Value(2.0)
        assert isinstance(await provider.query('up{job="no-such-job"}'), NoData)
        refused = await provider.query("sum(")
        assert isinstance(refused, MetricError)
        assert "refused" in refused.message
        missing = await provider.sample(Window(model="no-such-model", interval_s=30))
        assert isinstance(missing, NoData)
    finally:
        await provider.close()


async def test_multiple_series_is_an_error(prometheus: str) -> None:
    provider = PrometheusProvider(prometheus)
    try:
        result = await provider.query('up or label_replace(up, "job", "copy", "", "")')
        assert isinstance(result, MetricError)
        assert "2 series" in result.message
    finally:
        await provider.close()


async def test_unreachable_prometheus_is_an_error() -> None:
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    try:
        result = await provider.query("1")
        assert isinstance(result, MetricError)
        assert "unreachable" in result.message
        assert isinstance(await provider.sample(Window(MODEL, 30)), MetricError)
    finally:
        await provider.close()


async def test_non_prometheus_server_is_an_error(exporter: Exporter) -> None:
    provider = PrometheusProvider(exporter.url.removesuffix("/metrics"))
    try:
        result = await provider.query("1")
        assert isinstance(result, MetricError)
    finally:
        await provider.close()


def test_factory_requires_an_address() -> None:
    spec = ProviderSpec(type="prometheus", address="http://127.0.0.1:9090")
    assert isinstance(create_provider(spec), PrometheusProvider)
    with pytest.raises(ValueError, match="needs address"):
        create_provider(ProviderSpec.model_construct(type="prometheus", address=None))


def test_readiness_endpoint_is_real(prometheus: str) -> None:
    assert httpx.get(f"{prometheus}/api/v1/status/buildinfo").json()["status"] == "success"
