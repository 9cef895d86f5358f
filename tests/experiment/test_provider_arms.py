"""`arms()` of both providers on the router's own metric classes: per-arm outcomes (count, sum, squares) joined by the
router's outcomes store, requests, errors and latency. Builtin reads the /metrics text; Prometheus scrapes it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from prometheus_client import start_http_server
from tests.providers.conftest import (  # noqa: F401  (exporter, prometheus_server: a real Prometheus, as fixtures)
    Exporter,
    Prometheus,
    exporter,
    prometheus_server,
)

from sluice.providers.base import Window
from sluice.providers.builtin import BuiltinProvider
from sluice.providers.prometheus import PrometheusProvider
from sluice.rollout.measurements import NoData, Value
from sluice.serving.config import OutcomesConfig
from sluice.serving.metrics import RouterMetrics
from sluice.serving.outcomes import Outcome, Outcomes

MODEL = "exp-arms"


@pytest.fixture(scope="module")
def arms_exporter() -> Iterator[Exporter]:
    """RouterMetrics with the outcomes collector registered, as the router does, with a known history."""
    metrics = RouterMetrics(MODEL)
    outcomes = Outcomes(OutcomesConfig(metrics={"converted": "conversion", "revenue": "mean"}), lambda: MODEL)
    metrics.registry.register(outcomes.totals)
    for i in range(100):
        arm, version = ("control", "v1") if i % 2 == 0 else ("treatment", "v2")
        metrics.request(version, arm, 500 if i in (1, 3) else 200, 0.01 if arm == "control" else 0.3)
        outcomes.record(f"r{i}", None, arm, version)
    items = [Outcome(f"r{i}", "converted", 1.0 if i % 10 in (0, 1, 3) else 0.0) for i in range(100)]
    items += [Outcome(f"r{i}", "revenue", float(i)) for i in range(0, 10, 2)]
    items.append(Outcome("unknown", "converted", 1.0))
    outcomes.report(items)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        port = server.server_port
        yield Exporter(metrics, f"http://127.0.0.1:{port}/metrics", f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _check(reading: dict[str, object]) -> None:
    control, treatment = reading["control"], reading["treatment"]
    # 50 control outcomes (even ids): conversions where i % 10 == 0 -> 10; treatment (odd ids): i % 10 in (1, 3) -> 20
    assert (control.outcomes.n, control.outcomes.total, control.outcomes.squares) == (50, 10, 10)  # type: ignore[attr-defined]
    assert (treatment.outcomes.n, treatment.outcomes.total) == (50, 20)  # type: ignore[attr-defined]
    assert (treatment.requests, treatment.errors) == (50, 2)  # type: ignore[attr-defined]
    assert control.errors == 0  # type: ignore[attr-defined]
    assert treatment.latency is not None  # type: ignore[attr-defined]
    assert treatment.latency.total == 50  # type: ignore[attr-defined]


async def test_builtin_reads_cumulative_arms(arms_exporter: Exporter) -> None:
    provider = BuiltinProvider(arms_exporter.url)
    try:
        got = await provider.arms(Window(model=MODEL, interval_s=1), "converted")
        assert isinstance(got, Value), got
        _check(got.value)  # type: ignore[arg-type]
        revenue = await provider.arms(Window(model=MODEL, interval_s=1), "revenue")
        assert isinstance(revenue, Value), revenue
        r = revenue.value["control"].outcomes
        assert (r.n, r.total, r.squares) == (5, 0 + 2 + 4 + 6 + 8, 0 + 4 + 16 + 36 + 64)
        missing = await provider.arms(Window(model="no-such-model", interval_s=1), "converted")
        assert isinstance(missing, NoData)
    finally:
        await provider.close()


@pytest.mark.prometheus
async def test_prometheus_reads_the_same_numbers(arms_exporter: Exporter, prometheus_server: Prometheus) -> None:  # noqa: F811
    prometheus_server.scrape("arms", arms_exporter.address)
    provider = PrometheusProvider(prometheus_server.url)
    try:
        deadline, got = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            got = await provider.arms(Window(model=MODEL, interval_s=1), "converted")
            if isinstance(got, Value) and "treatment" in got.value and got.value["treatment"].requests == 50:
                break
            await asyncio.sleep(0.5)
        assert isinstance(got, Value), got
        _check(got.value)  # type: ignore[arg-type]
    finally:
        await provider.close()
