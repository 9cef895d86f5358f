"""The builtin provider against a live /metrics endpoint publishing the router's metrics."""

from __future__ import annotations

import math

import pytest
from tests.providers.conftest import MODEL
from tests.support import free_port
from tests.support.router_metrics import Exporter

from sluice.api.model_deployment import ProviderSpec
from sluice.providers import Window, create_provider
from sluice.providers.builtin import BuiltinProvider, difference, parse_snapshot, to_sample
from sluice.rollout.measurements import MetricError, NoData, Value
from sluice.serving import metric_names as mn


def traffic(exporter: Exporter, variant: str, version: str, n: int, errors: int, score: float, seconds: float) -> None:
    m = exporter.metrics
    for i in range(n):
        m.request(version, variant, 500 if i < errors else 200, seconds)
        m.scores(version, variant, [score])


async def test_first_scrape_is_a_baseline_then_exact_deltas(exporter: Exporter) -> None:
    provider = BuiltinProvider(exporter.url)
    try:
        window = Window(model=MODEL, interval_s=30)
        first = await provider.sample(window)
        assert isinstance(first, NoData)
        assert "baseline" in first.reason
        traffic(exporter, "stable", "v1", 400, 4, 0.30, 0.020)
        traffic(exporter, "canary", "v2", 100, 7, 0.82, 0.300)
        m = exporter.metrics
        m.shadow_outcome("v2", "canary", "agree")
        m.shadow_outcome("v2", "canary", "disagree")
        result = await provider.sample(window)
        assert isinstance(result, Value)
        s = result.value
        assert (s.stable.requests, s.stable.errors) == (400, 4)
        assert (s.canary.requests, s.canary.errors) == (100, 7)
        assert (s.shadow_agree, s.shadow_disagree) == (1, 1)
        assert s.canary.latency is not None
        assert s.canary.latency.total == 100
        assert s.canary.scores is not None
        assert s.stable.scores is not None
        assert s.canary.scores.upper_bounds == s.stable.scores.upper_bounds  # shared edges, as PSI needs
        assert math.isinf(s.canary.scores.upper_bounds[-1])
        # every canary score (0.82) lies in the (0.80, 0.85] bucket
        idx = s.canary.scores.upper_bounds.index(0.85)
        assert s.canary.scores.counts[idx] == 100
        nothing = await provider.sample(window)  # no new traffic: deltas are zero
        assert isinstance(nothing, Value)
        assert nothing.value.canary.requests == 0
    finally:
        await provider.close()


async def test_other_models_are_not_counted(exporter: Exporter) -> None:
    provider = BuiltinProvider(exporter.url)
    try:
        window = Window(model="no-such-model", interval_s=30)
        await provider.sample(window)
        result = await provider.sample(window)
        assert isinstance(result, NoData)
        assert "no-such-model" in result.reason
    finally:
        await provider.close()


async def test_unreachable_and_non_metrics_urls_are_errors(exporter: Exporter) -> None:
    gone = BuiltinProvider(f"http://127.0.0.1:{free_port()}/metrics", timeout_s=1)
    try:
        result = await gone.sample(Window(MODEL, 30))
        assert isinstance(result, MetricError)
        assert "unreachable" in result.message
    finally:
        await gone.close()


def test_counter_reset_counts_the_new_value() -> None:
    assert difference({("a",): 5.0, ("b",): 10.0}, {("a",): 50.0, ("b",): 4.0}) == {("a",): 5.0, ("b",): 6.0}


def test_parse_snapshot_reads_exactly_the_contract() -> None:
    text = (
        f'{mn.REQUESTS_TOTAL}{{model="m",version="v2",variant="canary",code="503"}} 3\n'
        f'{mn.REQUESTS_TOTAL}{{model="m",version="v2",variant="canary",code="200"}} 97\n'
        f'{mn.REQUESTS_TOTAL}{{model="x",version="v2",variant="canary",code="200"}} 1000\n'
    )
    sample = to_sample(parse_snapshot(text, "m"))
    assert (sample.canary.requests, sample.canary.errors, sample.stable.requests) == (100, 3, 0)
    with pytest.raises(ValueError):
        parse_snapshot("this is { not metrics", "m")


def test_factory_builds_and_rejects() -> None:
    assert isinstance(create_provider(ProviderSpec(), metrics_url="http://127.0.0.1:1/metrics"), BuiltinProvider)
    with pytest.raises(ValueError, match="metrics URL"):
        create_provider(ProviderSpec())
    with pytest.raises(ValueError, match="unknown metric provider type 'datadog'"):
        create_provider(ProviderSpec.model_construct(type="datadog", address=None))
