"""The pure statistics against scipy, and the properties the decisions rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats

from sluice.rollout import statistics as st


@settings(max_examples=200, deadline=None)
@given(n=hst.integers(1, 5000), p=hst.floats(0.001, 0.999), frac=hst.floats(0, 1))
def test_binomial_sf_matches_scipy(n: int, p: float, frac: float) -> None:
    k = round(frac * n)
    assert st.binomial_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-6, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(x=hst.floats(0.001, 400), df=hst.integers(1, 60))
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    assert st.chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-7, abs=1e-14)


def test_chi2_homogeneity_matches_scipy_contingency() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(0, 200, 12).astype(float)
        b = rng.integers(0, 200, 12).astype(float)
        a[3] = b[3] = 0  # a bin empty in both is dropped, as scipy would refuse it
        stat, df, p = st.chi2_homogeneity(list(a), list(b))
        keep = (a + b) > 0
        ref = stats.chi2_contingency(np.vstack([a[keep], b[keep]]), correction=False)
        assert stat == pytest.approx(ref.statistic)
        assert df == ref.dof
        assert p == pytest.approx(ref.pvalue)


def test_psi_matches_its_definition_and_null_expectation() -> None:
    e, a = [10.0, 20.0, 70.0], [30.0, 30.0, 40.0]
    pe = (np.array(e) + 0.5) / (100 + 1.5)
    pa = (np.array(a) + 0.5) / (100 + 1.5)
    assert st.psi(e, a) == pytest.approx(float(np.sum((pa - pe) * np.log(pa / pe))))
    assert st.psi(e, e) == 0.0
    # two samples of one distribution: the mean PSI is about the null expectation
    rng = np.random.default_rng(7)
    probs = np.full(10, 0.1)
    values = [st.psi(list(rng.multinomial(200, probs)), list(rng.multinomial(800, probs))) for _ in range(2000)]
    assert float(np.mean(values)) == pytest.approx(st.psi_null_expectation(200, 800, 10), rel=0.1)


def test_rate_ratio_llr_is_the_binomial_log_likelihood_ratio() -> None:
    ec, nc, es, ns, r = 12.0, 1000.0, 40.0, 4000.0, 2.0
    p0, p1 = nc / (nc + ns), nc * r / (nc * r + ns)
    expected = stats.binom.logpmf(12, 52, p1) - stats.binom.logpmf(12, 52, p0)
    assert st.rate_ratio_llr(ec, nc, es, ns, r) == pytest.approx(expected)
    assert st.rate_ratio_llr(0, 0, 5, 100, 2.0) == 0.0


def test_sprt_false_alarm_is_bounded_under_equal_rates() -> None:
    """Ville: crossing ln(1/alpha) at ANY of many looks has probability <= alpha when the canary is as good."""
    rng = np.random.default_rng(3)
    bound = st.sprt_reject_bound(0.01)
    crossed = 0
    runs = 2000
    for _ in range(runs):
        llr = 0.0
        for _ in range(30):
            nc, ns = 500, 4500
            llr += st.rate_ratio_llr(rng.binomial(nc, 0.01), nc, rng.binomial(ns, 0.01), ns, 2.0)
            if llr >= bound:
                crossed += 1
                break
    assert crossed / runs <= 0.01


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = [0.1, 0.2, 0.4, math.inf]
    assert st.histogram_quantile(0.5, bounds, [0, 10, 10, 0]) == pytest.approx(0.2)
    assert st.histogram_quantile(0.75, bounds, [0, 10, 10, 0]) == pytest.approx(0.3)
    assert st.histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == pytest.approx(0.4)
    assert st.histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: st.chi2_sf(1.0, 0), "degrees of freedom"),
        (lambda: st.psi([1.0], [1.0, 2.0]), "bin count"),
        (lambda: st.sprt_reject_bound(1.5), "alpha"),
        (lambda: st.histogram_quantile(2.0, [1.0], [1.0]), "quantile"),
    ],
)
def test_bad_input_names_the_problem(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_histogram_exceedances_inverts_the_quantile() -> None:
    bounds = [0.1, 0.2, 0.4, math.inf]
    counts = [50.0, 30.0, 15.0, 5.0]
    for q in (0.5, 0.8, 0.9, 0.95):
        x = st.histogram_quantile(q, bounds, counts)
        assert x is not None
        assert st.histogram_exceedances(x, bounds, counts) == pytest.approx((1 - q) * 100)
    assert st.histogram_exceedances(0.0, bounds, counts) == 100
    assert st.histogram_exceedances(1.0, bounds, counts) == 5
