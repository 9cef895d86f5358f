"""Every function of sluice.experiment.statistics against scipy / statsmodels (to 1e-6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from sluice.experiment import statistics as st

TOL = 1e-6


def sample_of(values: np.ndarray) -> st.Sample:
    return st.Sample(float(len(values)), float(values.sum()), float((values**2).sum()))


@pytest.mark.parametrize(("t", "df"), [(0.0, 3), (1.3, 2.5), (-2.2, 7.0), (4.0, 40.3), (10.0, 1.0), (0.5, 1e4)])
def test_t_sf_and_ppf_match_scipy(t: float, df: float) -> None:
    assert st.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), abs=TOL)
    for q in (0.025, 0.5, 0.9, 0.975, 0.999):
        assert st.t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), abs=TOL)


@pytest.mark.parametrize(("a", "b", "x"), [(0.5, 0.5, 0.3), (2, 3, 0.9), (50, 70, 0.4), (1000.5, 0.5, 0.999)])
def test_betainc_matches_scipy(a: float, b: float, x: float) -> None:
    from scipy.special import betainc

    assert st.betainc(a, b, x) == pytest.approx(betainc(a, b, x), abs=TOL)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(120, 1000, 100, 1000), (5, 40, 9, 55), (300, 2000, 330, 2100)])
def test_two_proportion_ztest_matches_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    control, treatment = st.Sample(n1, x1, x1), st.Sample(n2, x2, x2)
    test = st.two_proportion_ztest(control, treatment, alpha=0.05)
    z, p = proportions_ztest([x2, x1], [n2, n1])
    assert test.statistic == pytest.approx(z, abs=TOL)
    assert test.p_value == pytest.approx(p, abs=TOL)
    low, high = confint_proportions_2indep(x2, n2, x1, n1, method="wald", compare="diff", alpha=0.05)
    assert (test.low, test.high) == pytest.approx((low, high), abs=TOL)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_ttest_matches_scipy_and_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(10, 2, 40 + seed * 7), rng.normal(10.8, 3.5, 55)
    test = st.welch_ttest(sample_of(a), sample_of(b), alpha=0.1)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert test.statistic == pytest.approx(ref.statistic, abs=TOL)
    assert test.p_value == pytest.approx(ref.pvalue, abs=TOL)
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=0.1, usevar="unequal")
    assert (test.low, test.high) == pytest.approx((low, high), abs=TOL)


def test_sample_variance_from_sums_matches_numpy() -> None:
    values = np.random.default_rng(4).normal(3, 1.5, 500)
    s = sample_of(values)
    assert s.mean == pytest.approx(values.mean(), abs=TOL)
    assert s.variance == pytest.approx(values.var(ddof=1), abs=TOL)


@pytest.mark.parametrize(("p1", "p2"), [(0.12, 0.10), (0.5, 0.55), (0.01, 0.0105)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_required_sample_size_matches_normal_ind_power(p1: float, p2: float, alpha: float) -> None:
    es = st.proportion_effectsize(p1, p2)
    assert es == pytest.approx(proportion_effectsize(p1, p2), abs=TOL)
    expected = NormalIndPower().solve_power(effect_size=es, alpha=alpha, power=0.8, ratio=1.0)
    assert st.required_sample_size(es, alpha, 0.8) == pytest.approx(expected, rel=TOL)
    assert st.normal_power(es, 1234.0, alpha) == pytest.approx(
        NormalIndPower().power(es, nobs1=1234.0, alpha=alpha, ratio=1.0), abs=TOL
    )


@pytest.mark.parametrize(("diff", "var", "tau2"), [(0.01, 1e-4, 4e-4), (-0.3, 0.02, 0.01), (0.0, 1.0, 0.5)])
def test_msprt_is_the_mixture_integral(diff: float, var: float, tau2: float) -> None:
    """The closed-form log LR equals the likelihood ratio integrated over the N(0, tau2) mixing prior."""

    def integrand(delta: float) -> float:
        return stats.norm.pdf(diff, delta, math.sqrt(var)) * stats.norm.pdf(delta, 0, math.sqrt(tau2))

    sd = math.sqrt(var + tau2)
    mixture, _ = integrate.quad(integrand, -40 * sd, 40 * sd, points=[0.0, diff], limit=400)
    expected = math.log(mixture / stats.norm.pdf(diff, 0, math.sqrt(var)))
    assert st.msprt_log_lr(diff, var, tau2) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(("diff", "var", "tau2", "alpha"), [(0.02, 1e-4, 4e-4, 0.05), (-0.3, 0.02, 0.01, 0.1)])
def test_confidence_sequence_is_the_set_the_msprt_does_not_reject(
    diff: float, var: float, tau2: float, alpha: float
) -> None:
    low, high = st.confidence_sequence(diff, var, tau2, alpha)
    for edge in (low, high):  # at the edges the shifted test sits exactly on its bound
        assert st.msprt_log_lr(diff - edge, var, tau2) == pytest.approx(math.log(1 / alpha), abs=TOL)
    assert st.msprt_log_lr(diff - (low + high) / 2, var, tau2) < math.log(1 / alpha)


def test_holm_matches_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.2, 0.0001, 0.04]
    _, expected, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert st.holm(p) == pytest.approx(list(expected), abs=TOL)


@pytest.mark.parametrize(("a1", "b1", "a2", "b2"), [(11, 91, 15, 87), (3, 5, 2, 9), (101, 901, 121, 881)])
def test_beta_probability_greater_matches_scipy_integral(a1: float, b1: float, a2: int, b2: float) -> None:
    def integrand(x: float) -> float:
        return stats.beta.pdf(x, a2, b2) * stats.beta.cdf(x, a1, b1)

    expected, _ = integrate.quad(integrand, 0, 1, limit=400, epsabs=1e-12)
    assert st.beta_probability_greater(a1, b1, a2, b2) == pytest.approx(expected, abs=TOL)


def test_normal_closed_forms_match_scipy() -> None:
    m1, v1, m2, v2 = 1.0, 0.04, 1.1, 0.09
    assert st.normal_probability_greater(m1, v1, m2, v2) == pytest.approx(
        stats.norm.sf(0, m2 - m1, math.sqrt(v1 + v2)), abs=TOL
    )
    expected, _ = integrate.quad(lambda d: d * stats.norm.pdf(d, m2 - m1, math.sqrt(v1 + v2)), 0, np.inf)
    assert st.normal_expected_loss(m1, v1, m2, v2) == pytest.approx(expected, abs=TOL)


def test_monte_carlo_posteriors_agree_with_the_closed_forms() -> None:
    """The Monte Carlo estimates are within four standard errors of the exact values."""
    rng = np.random.default_rng(7)
    draws_n = 200_000
    control, treatment = st.Sample(1000, 100, 100), st.Sample(1000, 120, 120)
    draws = st.posterior_draws([control, treatment], conversion=True, rng=rng, draws=draws_n)
    best = st.probability_best(draws)
    exact = st.beta_probability_greater(101, 901, 121, 881)
    assert best[1] == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / draws_n))
    assert sum(best) == pytest.approx(1.0)

    a, b = st.Sample(400, 400 * 5.0, 400 * (25 + 4)), st.Sample(300, 300 * 5.2, 300 * (5.2**2 + 9))
    draws = st.posterior_draws([a, b], conversion=False, rng=rng, draws=draws_n)
    va, vb = a.variance / a.n, b.variance / b.n
    assert st.probability_best(draws)[1] == pytest.approx(st.normal_probability_greater(5.0, va, 5.2, vb), abs=0.005)
    loss = st.expected_loss(draws)
    assert loss[0] == pytest.approx(st.normal_expected_loss(5.0, va, 5.2, vb), rel=0.02)
    lower = st.expected_loss(draws, higher_is_better=False)
    assert lower[0] == pytest.approx(st.normal_expected_loss(5.2, vb, 5.0, va), rel=0.02)
    assert lower[1] == pytest.approx(st.normal_expected_loss(5.0, va, 5.2, vb), rel=0.02)


def test_same_seed_same_answer() -> None:
    samples = [st.Sample(50, 5, 5), st.Sample(60, 9, 9), st.Sample(70, 7, 7)]
    first = st.probability_best(st.posterior_draws(samples, True, np.random.default_rng(3), 5000))
    again = st.probability_best(st.posterior_draws(samples, True, np.random.default_rng(3), 5000))
    assert first == again
