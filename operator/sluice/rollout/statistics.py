"""Sample-size-aware comparisons of a canary with its stable version. Pure math on counts, numpy-free.

Tested against scipy, which the runtime does not need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space from the side with the small tail."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)

    def term(i: int) -> float:
        return math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)

    mode = int((n + 1) * p)
    if k > mode:  # terms fall from k upward
        total, i = 0.0, k
        while i <= n:
            t = term(i)
            total += t
            if t < total * 1e-17:
                break
            i += 1
        return min(1.0, total)
    total, i = 0.0, k - 1  # 1 - P(X <= k-1); terms fall from k-1 downward
    while i >= 0:
        t = term(i)
        total += t
        if t < total * 1e-17:
            break
        i -= 1
    return max(0.0, 1.0 - total)


def _gamma_series(s: float, x: float) -> float:
    """Regularised lower incomplete gamma P(s, x) by its power series (x < s + 1)."""
    term = total = 1.0 / s
    a = s
    for _ in range(10_000):
        a += 1.0
        term *= x / a
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + s * math.log(x) - math.lgamma(s))


def _gamma_continued_fraction(s: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(s, x) by Lentz's continued fraction (x >= s + 1)."""
    tiny = 1e-300
    b = x + 1.0 - s
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - s)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + s * math.log(x) - math.lgamma(s)) * h


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if x <= 0.0:
        return 1.0
    s = df / 2.0
    half = x / 2.0
    if half < s + 1.0:
        return max(0.0, 1.0 - _gamma_series(s, half))
    return min(1.0, _gamma_continued_fraction(s, half))


def chi2_homogeneity(a: Sequence[float], b: Sequence[float]) -> tuple[float, int, float]:
    """Pearson chi-square test that two histograms over the same bins come from one distribution.

    Bins empty in both are dropped. Returns (statistic, degrees of freedom, p-value).
    """
    if len(a) != len(b):
        raise ValueError(f"histograms differ in bin count: {len(a)} vs {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x + y > 0]
    na, nb = sum(x for x, _ in pairs), sum(y for _, y in pairs)
    if len(pairs) < 2 or na <= 0 or nb <= 0:
        return 0.0, 0, 1.0
    n = na + nb
    stat = 0.0
    for x, y in pairs:
        col = x + y
        ea, eb = col * na / n, col * nb / n
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    df = len(pairs) - 1
    return stat, df, chi2_sf(stat, df)


def psi(expected: Sequence[float], actual: Sequence[float], pseudo_count: float = 0.5) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over shared bins.

    A pseudo-count per bin keeps empty bins finite; bins empty in both carry no information and are dropped.
    """
    if len(expected) != len(actual):
        raise ValueError(f"histograms differ in bin count: {len(expected)} vs {len(actual)}")
    pairs = [(e, a) for e, a in zip(expected, actual, strict=True) if e + a > 0]
    if not pairs:
        return 0.0
    ne = sum(e for e, _ in pairs) + pseudo_count * len(pairs)
    na = sum(a for _, a in pairs) + pseudo_count * len(pairs)
    total = 0.0
    for e, a in pairs:
        pe, pa = (e + pseudo_count) / ne, (a + pseudo_count) / na
        total += (pa - pe) * math.log(pa / pe)
    return total


def psi_null_expectation(n_expected: float, n_actual: float, bins: int) -> float:
    """Expected PSI of two samples from ONE distribution: (bins - 1) * (1/n1 + 1/n2).

    PSI is the symmetric KL divergence; for identical distributions n_eff * PSI is ~ chi-square(bins - 1) with
    1/n_eff = 1/n1 + 1/n2. Small samples therefore show a PSI of this size from noise alone.
    """
    if n_expected <= 0 or n_actual <= 0 or bins < 2:
        return math.inf
    return (bins - 1) * (1.0 / n_expected + 1.0 / n_actual)


def rate_ratio_llr(
    canary_events: float, canary_total: float, stable_events: float, stable_total: float, ratio: float
) -> float:
    """Log likelihood ratio of 'canary rate = ratio x stable rate' against 'equal rates' for one interval.

    Conditioned on the interval's total events, the canary's share is Binomial with p = n_c*r / (n_c*r + n_s);
    the stable rate drops out, so the test needs no estimate of it. Summed over intervals this is Wald's SPRT;
    under equal rates its exponential is a martingale, so crossing ln(1/alpha) has probability <= alpha however
    often it is looked at (Ville's inequality).
    """
    if canary_total <= 0 or stable_total <= 0 or canary_events + stable_events <= 0:
        return 0.0
    p0 = canary_total / (canary_total + stable_total)
    p1 = canary_total * ratio / (canary_total * ratio + stable_total)
    return canary_events * math.log(p1 / p0) + stable_events * math.log((1 - p1) / (1 - p0))


def sprt_reject_bound(alpha: float) -> float:
    """The log likelihood ratio at which the SPRT rejects 'canary as good' at false-alarm level alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return math.log(1.0 / alpha)


def histogram_quantile(q: float, upper_bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile from per-bucket counts, linear within the bucket (as Prometheus does); None when empty.

    A quantile in the +Inf bucket answers the highest finite bound.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    lower = 0.0
    for bound, count in zip(upper_bounds, counts, strict=True):
        if count > 0 and cum + count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - cum) / count
        cum += count
        if not math.isinf(bound):
            lower = bound
    return lower


def histogram_exceedances(limit: float, upper_bounds: Sequence[float], counts: Sequence[float]) -> float:
    """How many observations exceed `limit`, linear within the bucket that holds it (the inverse of the quantile)."""
    above = 0.0
    lower = 0.0
    for bound, count in zip(upper_bounds, counts, strict=True):
        if lower >= limit:
            above += count
        elif bound > limit:
            width = bound - lower
            above += count if math.isinf(width) else count * (bound - limit) / width
        if not math.isinf(bound):
            lower = bound
    return above
