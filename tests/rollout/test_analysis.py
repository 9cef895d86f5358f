"""Check evaluation on interval measurements: verdicts, messages, and sample-size awareness."""

from __future__ import annotations

import math

import pytest
from tests.rollout.helpers import T0, make_spec

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, Verdict, VersionRef
from sluice.rollout.analysis import custom_queries, evaluate, render_query
from sluice.rollout.measurements import Histogram, MetricError, NoData, TrafficSample, Value, VariantSample

BOUNDS = (0.25, 0.5, 0.75, 1.0, math.inf)


def spec_with(*checks: dict[str, object], min_requests: int = 50) -> ModelDeploymentSpec:
    """A shadow rollout analysed through Prometheus, so that every check type is allowed by the API."""
    return make_spec(
        "v2",
        rollout={"strategy": "shadow"},
        analysis={
            "minRequests": min_requests,
            "checks": list(checks),
            "provider": {"type": "prometheus", "address": "http://prometheus:9090"},
        },
    )


def sample(
    nc: float = 1000,
    ec: float = 10,
    ns: float = 9000,
    es: float = 90,
    c_scores: tuple[float, ...] = (250, 250, 250, 250, 0),
    s_scores: tuple[float, ...] = (2250, 2250, 2250, 2250, 0),
    **kw: float,
) -> Value[TrafficSample]:
    return Value(
        TrafficSample(
            stable=VariantSample(ns, es, scores=Histogram(BOUNDS, s_scores)),
            canary=VariantSample(nc, ec, scores=Histogram(BOUNDS, c_scores)),
            **kw,
        )
    )


def test_too_few_canary_requests_is_no_data_for_every_check() -> None:
    spec = spec_with(
        {"name": "err", "type": "error-rate", "maxRatioToStable": 2},
        {"name": "q", "type": "promql", "query": "up", "max": 1},
    )
    out = evaluate(spec, ModelDeploymentStatus(), sample(nc=20, ec=20), {"q": Value(5.0)}, T0)
    assert [r.verdict for r in out.results] == [Verdict.NO_DATA, Verdict.NO_DATA]
    assert "fewer than minRequests 50" in out.results[0].message
    assert out.verdict is Verdict.NO_DATA


def test_error_ratio_accumulates_evidence_across_intervals() -> None:
    spec = spec_with({"name": "err", "type": "error-rate", "maxRatioToStable": 1.5})
    status = ModelDeploymentStatus()
    verdicts = []
    for _ in range(4):
        out = evaluate(spec, status, sample(nc=500, ec=12, ns=4500, es=45), {}, T0)  # 2.4% vs 1%
        status.check_states = list(out.check_states)
        verdicts.append(out.verdict)
    # leaning towards 'worse' but not yet decisive: hold (never a pass), then fail once the evidence suffices
    assert verdicts[0] is Verdict.NO_DATA
    assert "inconclusive" in evaluate(spec, ModelDeploymentStatus(), sample(nc=500, ec=12), {}, T0).results[0].message
    assert verdicts[-1] is Verdict.FAIL
    assert status.check_states[0].analyses == 4
    assert "SPRT" in out.results[0].message


def test_advancing_while_inconclusive_is_an_explicit_choice() -> None:
    spec = spec_with({"name": "err", "type": "error-rate", "maxRatioToStable": 1.5})
    out = evaluate(spec, ModelDeploymentStatus(), sample(nc=500, ec=12, ns=4500, es=45), {}, T0, accept_llr=math.inf)
    assert out.verdict is Verdict.PASS


def test_equal_error_rates_pass_and_drive_evidence_down() -> None:
    spec = spec_with({"name": "err", "type": "error-rate", "maxRatioToStable": 1.5})
    out = evaluate(spec, ModelDeploymentStatus(), sample(), {}, T0)
    assert out.verdict is Verdict.PASS
    assert out.check_states[0].log_likelihood_ratio < 0


def test_absolute_error_rate_uses_a_binomial_test() -> None:
    spec = spec_with({"name": "err", "type": "error-rate", "max": 0.01})
    # 2/60 is above 1% but 60 requests cannot show it; 40/1000 can.
    assert evaluate(spec, ModelDeploymentStatus(), sample(nc=60, ec=2), {}, T0).verdict is Verdict.PASS
    failing = evaluate(spec, ModelDeploymentStatus(), sample(nc=1000, ec=40), {}, T0).results[0]
    assert failing.verdict is Verdict.FAIL
    assert failing.value == pytest.approx(0.04)
    assert failing.threshold == "<= 0.01"


def test_latency_p99_absolute_and_relative() -> None:
    slow = Histogram((0.1, 0.5, 1.0, math.inf), (800, 100, 100, 0))
    fast = Histogram((0.1, 0.5, 1.0, math.inf), (990, 10, 0, 0))
    s = Value(TrafficSample(stable=VariantSample(1000, 0, latency=fast), canary=VariantSample(1000, 0, latency=slow)))
    spec = spec_with({"name": "lat", "type": "latency-p99", "max": 2.0, "maxRatioToStable": 2})
    r = evaluate(spec, ModelDeploymentStatus(), s, {}, T0).results[0]
    assert r.verdict is Verdict.FAIL
    assert "x stable" in r.message
    assert r.value == pytest.approx(0.95)


def test_latency_p99_needs_enough_slow_requests_to_fail() -> None:
    """Two slow requests in 100 put the p99 above the bound, but 2% slow is no evidence that more than 1% are."""
    buckets = (0.1, 0.5, 1.0, math.inf)
    s = Value(
        TrafficSample(
            stable=VariantSample(100, 0, latency=Histogram(buckets, (100, 0, 0, 0))),
            canary=VariantSample(100, 0, latency=Histogram(buckets, (98, 0, 2, 0))),
        )
    )
    spec = spec_with({"name": "lat", "type": "latency-p99", "max": 0.5})
    r = evaluate(spec, ModelDeploymentStatus(), s, {}, T0).results[0]
    assert r.value is not None
    assert r.value > 0.5
    assert r.verdict is Verdict.PASS


def test_prediction_drift_fails_on_a_real_shift() -> None:
    spec = spec_with({"name": "drift", "type": "prediction-drift", "max": 0.2})
    r = evaluate(spec, ModelDeploymentStatus(), sample(c_scores=(50, 100, 250, 600, 0)), {}, T0).results[0]
    assert r.verdict is Verdict.FAIL
    assert r.value is not None
    assert r.value > 0.2
    assert "chi2" in r.message


def test_prediction_drift_discounts_small_sample_noise() -> None:
    """60 canary scores over 4 bins: a raw PSI above the threshold that sampling noise explains passes."""
    spec = spec_with({"name": "drift", "type": "prediction-drift", "max": 0.1})
    r = evaluate(spec, ModelDeploymentStatus(), sample(nc=60, c_scores=(8, 22, 12, 18, 0)), {}, T0).results[0]
    assert r.value is not None
    assert r.value > 0.1
    assert r.verdict is Verdict.PASS


def test_prediction_drift_with_different_buckets_is_an_error() -> None:
    spec = spec_with({"name": "drift", "type": "prediction-drift", "max": 0.2})
    other = Histogram((0.5, 1.0, math.inf), (500, 500, 0))
    s = Value(
        TrafficSample(
            stable=VariantSample(1000, 0, scores=other),
            canary=VariantSample(1000, 0, scores=Histogram(BOUNDS, (250, 250, 250, 250, 0))),
        )
    )
    r = evaluate(spec, ModelDeploymentStatus(), s, {}, T0).results[0]
    assert r.verdict is Verdict.ERROR
    assert "buckets" in r.message


def test_shadow_disagreement() -> None:
    spec = spec_with({"name": "dis", "type": "shadow-disagreement", "max": 0.02})
    ok = evaluate(spec, ModelDeploymentStatus(), sample(shadow_agree=990, shadow_disagree=10), {}, T0)
    bad = evaluate(spec, ModelDeploymentStatus(), sample(shadow_agree=900, shadow_disagree=100), {}, T0)
    few = evaluate(spec, ModelDeploymentStatus(), sample(shadow_agree=5, shadow_disagree=5), {}, T0)
    assert (ok.verdict, bad.verdict, few.verdict) == (Verdict.PASS, Verdict.FAIL, Verdict.NO_DATA)


def test_promql_bounds_and_readings() -> None:
    spec = spec_with({"name": "q", "type": "promql", "query": "x", "min": 0.5, "max": 2})
    status = ModelDeploymentStatus()

    def verdict(reading: object) -> Verdict:
        return evaluate(spec, status, sample(), {"q": reading}, T0).verdict  # type: ignore[dict-item]

    assert verdict(Value(1.0)) is Verdict.PASS
    assert verdict(Value(3.0)) is Verdict.FAIL
    assert verdict(Value(0.1)) is Verdict.FAIL
    assert verdict(NoData("empty")) is Verdict.NO_DATA
    assert verdict(MetricError("timeout")) is Verdict.ERROR
    assert evaluate(spec, status, sample(), {}, T0).verdict is Verdict.ERROR


def test_provider_no_data_and_error_propagate() -> None:
    spec = spec_with({"name": "err", "type": "error-rate", "max": 0.1})
    assert evaluate(spec, ModelDeploymentStatus(), NoData("first scrape"), {}, T0).verdict is Verdict.NO_DATA
    out = evaluate(spec, ModelDeploymentStatus(), MetricError("connection refused"), {}, T0)
    assert out.verdict is Verdict.ERROR
    assert out.results[0].message == "connection refused"


def test_fail_beats_error_beats_no_data() -> None:
    spec = spec_with(
        {"name": "err", "type": "error-rate", "max": 0.01},
        {"name": "q", "type": "promql", "query": "x", "max": 1},
    )
    out = evaluate(spec, ModelDeploymentStatus(), sample(nc=1000, ec=100), {"q": MetricError("down")}, T0)
    assert out.verdict is Verdict.FAIL


def test_default_checks_when_none_configured() -> None:
    out = evaluate(make_spec("v2"), ModelDeploymentStatus(), sample(), {}, T0)
    assert [r.name for r in out.results] == ["error-rate", "latency-p99"]


def test_query_rendering() -> None:
    assert (
        render_query(
            "rate(x{ns='{{namespace}}', v='{{ version }}'}[{{interval}}])",
            {"namespace": "prod", "version": "v2", "interval": "30s"},
        )
        == "rate(x{ns='prod', v='v2'}[30s])"
    )
    with pytest.raises(ValueError, match=r"unknown variable \{\{model\}\}"):
        render_query("{{model}}", {"name": "x"})
    spec = spec_with({"name": "q", "type": "promql", "query": "a{n='{{name}}',v='{{version}}'}", "max": 1})
    status = ModelDeploymentStatus(canary=VersionRef(version="v9", uri="file:x"))
    assert custom_queries(spec, status, "prod", "fraud") == {"q": "a{n='fraud',v='v9'}"}
