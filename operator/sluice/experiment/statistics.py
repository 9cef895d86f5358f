"""The statistics behind an Experiment's verdict: pure functions on per-arm counts, sums and sums of squares.

Only the standard library and numpy (for the Monte Carlo posteriors, with a Generator passed in): scipy and
statsmodels are the reference the tests check every function against, not runtime dependencies.

- fixed horizon: two-proportion z-test, Welch t-test, the sample size for 80% power at the MDE;
- always valid: the normal-mixture SPRT (mSPRT, Johari et al. 2017; Robbins 1970) and its confidence sequence,
  so a verdict may be read at every look with type-I error <= alpha;
- Bayesian: Beta-Binomial and normal posteriors, probability of being best and expected loss;
- more than two arms: Holm's step-down correction of the treatment-vs-control p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

_N = NormalDist()


def norm_cdf(x: float) -> float:
    return _N.cdf(x)


def norm_ppf(q: float) -> float:
    return _N.inv_cdf(q)


# -- Student t through the regularised incomplete beta function ------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df may be fractional, as Welch's is)."""
    if math.isinf(df):
        return 1.0 - norm_cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t, by bisection on `t_sf` (monotone, so it cannot miss)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {q}")
    lo, hi = -1.0, 1.0
    while 1.0 - t_sf(lo, df) > q:
        lo *= 2.0
    while 1.0 - t_sf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 1.0 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


# -- per-arm summaries --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """What the router exports per arm for one metric: count, sum and sum of squares of the reported values."""

    n: float
    total: float
    squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def readable(self) -> bool:
        """All three sums finite and the count non-negative. An overflowed sum (one huge value makes the sum of
        squares inf) carries no information: no statistic is computed from it, so it can never force a verdict."""
        return self.n >= 0 and all(math.isfinite(x) for x in (self.n, self.total, self.squares))

    @property
    def variance(self) -> float:
        """Unbiased sample variance (ddof=1) from the three sums; 0 below two observations; nan when unreadable
        (never 0, which would read as a certain difference)."""
        if not self.readable:
            return math.nan
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class Test:
    """A treatment-vs-control comparison: the difference (treatment - control), its interval and p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    statistic: float


def two_proportion_ztest(control: Sample, treatment: Sample, alpha: float) -> Test:
    """Two-sided z-test of equal rates with the pooled variance (statsmodels `proportions_ztest`) and the Wald
    interval of the difference (statsmodels `confint_proportions_2indep(method='wald')`)."""
    p1, p2 = treatment.mean, control.mean
    pooled = (treatment.total + control.total) / (treatment.n + control.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / treatment.n + 1 / control.n))
    diff = p1 - p2
    z = diff / se0 if se0 > 0 else 0.0
    p = 2 * (1 - norm_cdf(abs(z)))
    se = math.sqrt(p1 * (1 - p1) / treatment.n + p2 * (1 - p2) / control.n)
    half = norm_ppf(1 - alpha / 2) * se
    return Test(diff, diff - half, diff + half, p, z)


def welch_ttest(control: Sample, treatment: Sample, alpha: float) -> Test:
    """Two-sided Welch t-test (scipy `ttest_ind_from_stats(equal_var=False)`) with the Welch-Satterthwaite
    interval of the difference (statsmodels `CompareMeans.tconfint_diff(usevar='unequal')`)."""
    v1, v2 = treatment.variance / treatment.n, control.variance / control.n
    diff = treatment.mean - control.mean
    se = math.sqrt(v1 + v2)
    if se == 0:
        return Test(diff, diff, diff, 1.0 if diff == 0 else 0.0, 0.0)
    df = (v1 + v2) ** 2 / (v1 * v1 / (treatment.n - 1) + v2 * v2 / (control.n - 1))
    t = diff / se
    p = min(1.0, 2 * t_sf(abs(t), df))
    half = t_ppf(1 - alpha / 2, df) * se
    return Test(diff, diff - half, diff + half, p, t)


def proportion_effectsize(p1: float, p2: float) -> float:
    """Cohen's h (statsmodels `proportion_effectsize`): the arcsine-transformed difference of two rates."""
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2))


def normal_power(effect_size: float, n: float, alpha: float) -> float:
    """Power of the two-sided two-sample z-test with n per arm (statsmodels `NormalIndPower().power`, ratio 1)."""
    crit = norm_ppf(1 - alpha / 2)
    shift = abs(effect_size) * math.sqrt(n / 2.0)
    return (1 - norm_cdf(crit - shift)) + norm_cdf(-crit - shift)


def required_sample_size(effect_size: float, alpha: float, power: float = 0.8) -> float:
    """Units per arm for `power` at `effect_size` (statsmodels `NormalIndPower().solve_power`, ratio 1)."""
    if effect_size == 0:
        return math.inf
    lo, hi = 1e-6, 2.0
    while normal_power(effect_size, hi, alpha) < power:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if normal_power(effect_size, mid, alpha) < power:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# -- always valid: the normal-mixture SPRT -----------------------------------------------------------------------
def msprt_log_lr(difference: float, variance: float, tau2: float) -> float:
    """Log of the mixture likelihood ratio of 'difference ~ N(0, tau2)' against 'difference = 0'.

    `variance` is the variance of the estimated difference (s1^2/n1 + s2^2/n2). Under the null, the ratio is a
    martingale, so by Ville's inequality it ever exceeds 1/alpha with probability <= alpha: the test may be read
    at every look.
    """
    if variance <= 0:
        return 0.0
    return 0.5 * math.log(variance / (variance + tau2)) + difference * difference * tau2 / (
        2 * variance * (variance + tau2)
    )


def confidence_sequence(difference: float, variance: float, tau2: float, alpha: float) -> tuple[float, float]:
    """The set of differences the mSPRT does not reject at level alpha: an always-valid interval."""
    if variance <= 0:
        return difference, difference
    half = math.sqrt(variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log1p(tau2 / variance)))
    return difference - half, difference + half


def msprt_test(control: Sample, treatment: Sample, alpha: float, tau2: float) -> Test:
    """The always-valid comparison: p-value 1/LR (callers keep the running minimum) and the confidence sequence."""
    diff = treatment.mean - control.mean
    variance = treatment.variance / treatment.n + control.variance / control.n
    llr = msprt_log_lr(diff, variance, tau2)
    low, high = confidence_sequence(diff, variance, tau2, alpha)
    return Test(diff, low, high, min(1.0, math.exp(-llr)), llr)


# -- multiple arms --------------------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (statsmodels `multipletests(method='holm')`); reject where <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# -- Bayesian posteriors --------------------------------------------------------------------------------------
def posterior_draws(
    samples: Sequence[Sample], conversion: bool, rng: np.random.Generator, draws: int
) -> npt.NDArray[np.float64]:
    """Posterior draws of each arm's value, shape (draws, arms).

    conversion: Beta(1 + successes, 1 + failures) (uniform prior). mean: the normal approximation
    N(mean, variance / n) (flat prior); an arm with fewer than two observations gets a very wide posterior.
    """
    cols = []
    for s in samples:
        if conversion:
            cols.append(rng.beta(1.0 + s.total, 1.0 + max(0.0, s.n - s.total), size=draws))
        else:
            sd = math.sqrt(s.variance / s.n) if s.n >= 2 else 1e6
            cols.append(rng.normal(s.mean, sd, size=draws))
    return np.column_stack(cols)


def probability_best(draws: npt.NDArray[np.float64], higher_is_better: bool = True) -> list[float]:
    """Share of posterior draws in which each arm is the best."""
    pick = np.argmax(draws, axis=1) if higher_is_better else np.argmin(draws, axis=1)
    counts = np.bincount(pick, minlength=draws.shape[1])
    return [float(c) / draws.shape[0] for c in counts]


def expected_loss(draws: npt.NDArray[np.float64], higher_is_better: bool = True) -> list[float]:
    """Expected loss of choosing each arm: E[best value - this arm's value] over the posterior."""
    best = draws.max(axis=1, keepdims=True) if higher_is_better else draws.min(axis=1, keepdims=True)
    loss = np.abs(best - draws)
    return [float(v) for v in loss.mean(axis=0)]


def beta_probability_greater(a1: float, b1: float, a2: int, b2: float) -> float:
    """Exact P(X2 > X1) for X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2) with integer a2 (Evan Miller's sum).

    The closed form the Monte Carlo estimate is checked against for two conversion arms.
    """

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    base = lbeta(a1, b1)
    return sum(math.exp(lbeta(a1 + i, b1 + b2) - math.log(b2 + i) - lbeta(1 + i, b2) - base) for i in range(a2))


def normal_probability_greater(mean1: float, var1: float, mean2: float, var2: float) -> float:
    """Exact P(X2 > X1) for independent normals."""
    return norm_cdf((mean2 - mean1) / math.sqrt(var1 + var2))


def normal_expected_loss(mean1: float, var1: float, mean2: float, var2: float) -> float:
    """Exact E[max(X2 - X1, 0)]: the expected loss of keeping arm 1 when arm 2 may be better."""
    mu, sd = mean2 - mean1, math.sqrt(var1 + var2)
    return mu * norm_cdf(mu / sd) + sd * _N.pdf(mu / sd)
