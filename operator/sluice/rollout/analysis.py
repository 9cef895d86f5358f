"""Pure evaluation of a ModelDeployment's checks on one interval's measurements.

Every verdict is sample-size aware: fewer than `analysis.minRequests` canary requests is NoData (holds progress,
never passes or fails); error rates are judged by tests on the counts (a sequential probability ratio test across
intervals for the ratio to stable, an exact binomial test for absolute bounds); prediction drift must exceed
its threshold by more than the PSI that sampling noise alone produces, and a chi-square homogeneity test must agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sluice.api.model_deployment import Analysis, Check, CheckType, ModelDeploymentSpec
from sluice.api.status import CheckResult, CheckState, ModelDeploymentStatus, Verdict
from sluice.rollout import statistics as st
from sluice.rollout.measurements import Histogram, Measurement, MetricError, NoData, TrafficSample, Value

ALPHA = 0.01
"""False-alarm level of every statistical test (per check and rollout for the sequential one)."""
SPRT_ACCEPT_LLR = 0.0
"""A canary advances on the error-ratio test only once the evidence leans towards 'as good as stable' (log-LR at or
below this); between it and the reject bound the test is inconclusive and holds the step, like too little data."""
DEFAULT_PSI_MAX = 0.2
"""Prediction-drift threshold when a check names none (PSI above 0.2 is the usual 'significant shift')."""


def default_checks() -> list[Check]:
    """The checks run when `analysis.checks` is empty."""
    return [
        Check(name="error-rate", type=CheckType.ERROR_RATE, max_ratio_to_stable=2.0),
        Check(name="latency-p99", type=CheckType.LATENCY_P99, max_ratio_to_stable=2.0),
    ]


def effective_checks(analysis: Analysis) -> list[Check]:
    return list(analysis.checks) if analysis.checks else default_checks()


def check_problems(analysis: Analysis) -> list[str]:
    """What makes the configured checks impossible to evaluate, one sentence each (empty when fine)."""
    problems: list[str] = []
    seen: set[str] = set()
    for c in effective_checks(analysis):
        if c.name in seen:
            problems.append(f"check name {c.name!r} is used twice")
        seen.add(c.name)
        bounded = c.max is not None or c.min is not None or c.max_ratio_to_stable is not None
        if c.type is CheckType.PROMQL:
            if not c.query:
                problems.append(f"check {c.name!r} of type promql needs a query")
            if c.max is None and c.min is None:
                problems.append(f"check {c.name!r} of type promql needs max or min")
            if c.max_ratio_to_stable is not None:
                problems.append(f"check {c.name!r}: maxRatioToStable is not supported for promql")
            continue
        if c.query:
            problems.append(f"check {c.name!r}: query is only used by type promql")
        if c.min is not None:
            problems.append(f"check {c.name!r}: min is only supported for type promql")
        if c.type in (CheckType.ERROR_RATE, CheckType.LATENCY_P99) and not bounded:
            problems.append(f"check {c.name!r} of type {c.type.value} needs max or maxRatioToStable")
        if c.type is CheckType.SHADOW_DISAGREEMENT and c.max is None:
            problems.append(f"check {c.name!r} of type shadow-disagreement needs max")
        if c.type in (CheckType.SHADOW_DISAGREEMENT, CheckType.PREDICTION_DRIFT) and c.max_ratio_to_stable:
            problems.append(f"check {c.name!r}: maxRatioToStable is not supported for {c.type.value}")
    return problems


_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
QUERY_VARIABLES = ("namespace", "name", "version", "variant", "interval")


def render_query(template: str, variables: Mapping[str, str]) -> str:
    """Substitute `{{name}}`-style variables; an unknown variable raises ValueError naming it."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in variables:
            raise ValueError(f"unknown variable {{{{{key}}}}} in query; known: {', '.join(sorted(variables))}")
        return variables[key]

    return _VARIABLE.sub(sub, template)


def custom_queries(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, namespace: str, name: str
) -> dict[str, str]:
    """The rendered PromQL of each promql check, keyed by check name."""
    variables = {
        "namespace": namespace,
        "name": name,
        "version": status.canary.version if status.canary else spec.model.version,
        "variant": "canary",
        "interval": spec.analysis.interval,
    }
    return {
        c.name: render_query(c.query, variables)
        for c in effective_checks(spec.analysis)
        if c.type is CheckType.PROMQL and c.query
    }


@dataclass(frozen=True)
class AnalysisOutcome:
    """The checks of one analysis and the sequential evidence to carry to the next one."""

    time: datetime
    results: tuple[CheckResult, ...]
    check_states: tuple[CheckState, ...] = field(default=())

    @property
    def verdict(self) -> Verdict:
        """Fail beats Error beats NoData beats Pass: one failing check fails the analysis."""
        verdicts = {r.verdict for r in self.results}
        for v in (Verdict.FAIL, Verdict.ERROR, Verdict.NO_DATA):
            if v in verdicts:
                return v
        return Verdict.PASS


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _result(check: Check, verdict: Verdict, value: float | None, threshold: str, message: str) -> CheckResult:
    return CheckResult(name=check.name, verdict=verdict, value=value, threshold=threshold, message=message)


def _error_rate(
    check: Check, s: TrafficSample, min_requests: int, state: CheckState, accept_llr: float
) -> tuple[CheckResult, CheckState]:
    n_c, e_c, n_s, e_s = s.canary.requests, s.canary.errors, s.stable.requests, s.stable.errors
    bounds = []
    if check.max is not None:
        bounds.append(f"<= {_fmt(check.max)}")
    if check.max_ratio_to_stable is not None:
        bounds.append(f"<= {_fmt(check.max_ratio_to_stable)}x stable")
    threshold = ", ".join(bounds)
    if n_c < max(min_requests, 1):
        msg = f"canary served {n_c:.0f} requests, fewer than minRequests {min_requests}"
        return _result(check, Verdict.NO_DATA, None, threshold, msg), state
    rate = e_c / n_c
    failures: list[str] = []
    notes: list[str] = []
    if check.max is not None:
        p = st.binomial_sf(round(e_c), round(n_c), check.max)
        notes.append(f"{e_c:.0f}/{n_c:.0f} errors, binomial p={p:.3g} against rate {_fmt(check.max)}")
        if p < ALPHA:
            failures.append(f"error rate {_fmt(rate)} above {_fmt(check.max)} (p={p:.3g} < {ALPHA})")
    if check.max_ratio_to_stable is not None:
        llr = state.log_likelihood_ratio + st.rate_ratio_llr(e_c, n_c, e_s, n_s, check.max_ratio_to_stable)
        state = CheckState(name=check.name, log_likelihood_ratio=llr, analyses=state.analyses + 1)
        bound = st.sprt_reject_bound(ALPHA)
        stable_rate = e_s / n_s if n_s > 0 else 0.0
        notes.append(
            f"stable {e_s:.0f}/{n_s:.0f} ({_fmt(stable_rate)}); SPRT log-LR {llr:.2f} vs reject bound {bound:.2f}"
        )
        if llr >= bound:
            failures.append(
                f"canary error rate {_fmt(rate)} vs stable {_fmt(stable_rate)}: SPRT favours "
                f"{_fmt(check.max_ratio_to_stable)}x stable (log-LR {llr:.2f} >= {bound:.2f})"
            )
    if failures:
        return _result(check, Verdict.FAIL, rate, threshold, "; ".join(failures)), state
    if check.max_ratio_to_stable is not None and state.log_likelihood_ratio > accept_llr:
        msg = f"inconclusive, holding for more requests: {'; '.join(notes)}"
        return _result(check, Verdict.NO_DATA, rate, threshold, msg), state
    return _result(check, Verdict.PASS, rate, threshold, "; ".join(notes)), state


def _slow_share_test(limit: float, hist: Histogram) -> tuple[float, float]:
    """(requests slower than `limit`, p-value of 'at most 1% are'): p99 <= limit exactly when <= 1% exceed it."""
    slow = st.histogram_exceedances(limit, hist.upper_bounds, hist.counts)
    return slow, st.binomial_sf(round(slow), round(hist.total), 0.01)


def _latency(check: Check, s: TrafficSample, min_requests: int) -> CheckResult:
    """p99 above a bound fails only when the share of slower requests is significantly above 1% (binomial test)."""
    bounds = []
    if check.max is not None:
        bounds.append(f"<= {_fmt(check.max)}s")
    if check.max_ratio_to_stable is not None:
        bounds.append(f"<= {_fmt(check.max_ratio_to_stable)}x stable")
    threshold = ", ".join(bounds)
    hist = s.canary.latency
    n = hist.total if hist else 0.0
    if hist is None or n < max(min_requests, 1):
        return _result(check, Verdict.NO_DATA, None, threshold, f"{n:.0f} canary latencies, fewer than {min_requests}")
    p99 = st.histogram_quantile(0.99, hist.upper_bounds, hist.counts)
    assert p99 is not None  # n > 0
    limits: list[tuple[float, str]] = []
    if check.max is not None:
        limits.append((check.max, f"{_fmt(check.max)}s"))
    stable_p99 = None
    sh = s.stable.latency
    if check.max_ratio_to_stable is not None and sh is not None and sh.total >= max(min_requests, 1):
        stable_p99 = st.histogram_quantile(0.99, sh.upper_bounds, sh.counts)
        if stable_p99 is not None and stable_p99 > 0:
            limit = check.max_ratio_to_stable * stable_p99
            limits.append(
                (limit, f"{_fmt(check.max_ratio_to_stable)}x stable p99 {_fmt(stable_p99)}s = {_fmt(limit)}s")
            )
    failures: list[str] = []
    for limit, text in limits:
        if p99 > limit:
            slow, p = _slow_share_test(limit, hist)
            if p < ALPHA:
                failures.append(
                    f"canary p99 {_fmt(p99)}s above {text}: {slow:.0f}/{n:.0f} slower (binomial p={p:.3g} vs 1%)"
                )
    verdict = Verdict.FAIL if failures else Verdict.PASS
    note = f"canary p99 {_fmt(p99)}s over {n:.0f} requests" + (
        f", stable p99 {_fmt(stable_p99)}s" if stable_p99 is not None else ""
    )
    return _result(check, verdict, p99, threshold, "; ".join(failures) or note)


def _drift(check: Check, s: TrafficSample, min_requests: int) -> CheckResult:
    limit = check.max if check.max is not None else DEFAULT_PSI_MAX
    threshold = f"PSI - noise <= {_fmt(limit)}"
    c, b = s.canary.scores, s.stable.scores
    nc, nb = (c.total if c else 0.0), (b.total if b else 0.0)
    if c is None or b is None or min(nc, nb) < max(min_requests, 1):
        msg = f"{nc:.0f} canary and {nb:.0f} stable scores, need {min_requests} each"
        return _result(check, Verdict.NO_DATA, None, threshold, msg)
    if c.upper_bounds != b.upper_bounds:
        return _result(check, Verdict.ERROR, None, threshold, "canary and stable score histograms differ in buckets")
    value = st.psi(b.counts, c.counts)
    bins = sum(1 for x, y in zip(b.counts, c.counts, strict=True) if x + y > 0)
    noise = st.psi_null_expectation(nb, nc, bins)
    stat, df, p = st.chi2_homogeneity(b.counts, c.counts)
    detail = f"PSI {value:.4f}, noise {noise:.4f} (n={nc:.0f}/{nb:.0f}), chi2 {stat:.1f} df={df} p={p:.3g}"
    if value - noise > limit and p < ALPHA:
        return _result(check, Verdict.FAIL, value, threshold, f"prediction drift: {detail}")
    return _result(check, Verdict.PASS, value, threshold, detail)


def _disagreement(check: Check, s: TrafficSample, min_requests: int) -> CheckResult:
    limit = check.max if check.max is not None else 0.0
    threshold = f"<= {_fmt(limit)}"
    n = s.shadow_agree + s.shadow_disagree
    if n < max(min_requests, 1):
        return _result(
            check, Verdict.NO_DATA, None, threshold, f"{n:.0f} shadow comparisons, fewer than {min_requests}"
        )
    rate = s.shadow_disagree / n
    p = st.binomial_sf(round(s.shadow_disagree), round(n), limit) if limit > 0 else (0.0 if rate > 0 else 1.0)
    detail = f"{s.shadow_disagree:.0f}/{n:.0f} disagree ({_fmt(rate)}), binomial p={p:.3g}"
    if p < ALPHA:
        return _result(check, Verdict.FAIL, rate, threshold, f"shadow disagreement above {_fmt(limit)}: {detail}")
    return _result(check, Verdict.PASS, rate, threshold, detail)


def _promql(check: Check, m: Measurement[float]) -> CheckResult:
    bounds = []
    if check.min is not None:
        bounds.append(f">= {_fmt(check.min)}")
    if check.max is not None:
        bounds.append(f"<= {_fmt(check.max)}")
    threshold = ", ".join(bounds)
    if isinstance(m, NoData):
        return _result(check, Verdict.NO_DATA, None, threshold, m.reason)
    if isinstance(m, MetricError):
        return _result(check, Verdict.ERROR, None, threshold, m.message)
    v = m.value
    if math.isnan(v):
        return _result(check, Verdict.NO_DATA, None, threshold, "query returned NaN")
    if check.max is not None and v > check.max:
        return _result(check, Verdict.FAIL, v, threshold, f"{_fmt(v)} above max {_fmt(check.max)}")
    if check.min is not None and v < check.min:
        return _result(check, Verdict.FAIL, v, threshold, f"{_fmt(v)} below min {_fmt(check.min)}")
    return _result(check, Verdict.PASS, v, threshold, f"{_fmt(v)}")


def evaluate(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    sample: Measurement[TrafficSample],
    custom: Mapping[str, Measurement[float]],
    now: datetime,
    *,
    accept_llr: float = SPRT_ACCEPT_LLR,
) -> AnalysisOutcome:
    """Judge every check on one interval. `custom` holds each promql check's reading by check name.

    `accept_llr` is the sequential error-ratio test's pass line (see SPRT_ACCEPT_LLR); +inf passes every interval
    the test has not rejected (the benchmark's ablation).
    """
    min_requests = spec.analysis.min_requests
    states = {s.name: s for s in status.check_states}
    results: list[CheckResult] = []
    new_states: list[CheckState] = []
    too_little: str | None = None
    if isinstance(sample, Value) and sample.value.canary.requests < min_requests:
        too_little = f"canary served {sample.value.canary.requests:.0f} requests, fewer than minRequests {min_requests}"
    for check in effective_checks(spec.analysis):
        if check.type is CheckType.PROMQL:
            if too_little:
                results.append(_result(check, Verdict.NO_DATA, None, "", too_little))
            else:
                reading = custom.get(check.name, MetricError(f"no reading for query of check {check.name!r}"))
                results.append(_promql(check, reading))
            continue
        if isinstance(sample, NoData):
            results.append(_result(check, Verdict.NO_DATA, None, "", sample.reason))
            continue
        if isinstance(sample, MetricError):
            results.append(_result(check, Verdict.ERROR, None, "", sample.message))
            continue
        s = sample.value
        if check.type is CheckType.ERROR_RATE:
            state = states.get(check.name, CheckState(name=check.name))
            result, state = _error_rate(check, s, min_requests, state, accept_llr)
            results.append(result)
            if check.max_ratio_to_stable is not None:
                new_states.append(state)
        elif check.type is CheckType.LATENCY_P99:
            results.append(_latency(check, s, min_requests))
        elif check.type is CheckType.PREDICTION_DRIFT:
            results.append(_drift(check, s, min_requests))
        elif check.type is CheckType.SHADOW_DISAGREEMENT:
            results.append(_disagreement(check, s, min_requests))
    kept = {s.name for s in new_states}
    carried = [s for name, s in states.items() if name not in kept]
    return AnalysisOutcome(time=now, results=tuple(results), check_states=tuple(new_states + carried))


__all__ = [
    "ALPHA",
    "AnalysisOutcome",
    "Histogram",
    "check_problems",
    "custom_queries",
    "default_checks",
    "effective_checks",
    "evaluate",
    "render_query",
]
