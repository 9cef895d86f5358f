"""Every drift statistic against its scipy / statsmodels counterpart, to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.multitest import multipletests

from sluice.drift import statistics as st

TOL = 1e-9

counts_pairs = hst.integers(2, 30).flatmap(
    lambda k: hst.tuples(
        hst.lists(hst.integers(0, 10_000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
        hst.lists(hst.integers(0, 10_000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
    )
)


@settings(max_examples=200, deadline=None)
@given(pair=counts_pairs)
def test_psi_is_symmetric_kl_of_smoothed_proportions(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = (np.asarray(c, dtype=float) for c in pair)
    p = (ref + st.PSEUDO_COUNT) / (ref + st.PSEUDO_COUNT).sum()
    q = (cur + st.PSEUDO_COUNT) / (cur + st.PSEUDO_COUNT).sum()
    expected = stats.entropy(p, q) + stats.entropy(q, p)
    assert st.psi(ref, cur) == pytest.approx(expected, abs=TOL, rel=TOL)


@settings(max_examples=200, deadline=None)
@given(pair=counts_pairs)
def test_js_matches_scipy_jensenshannon(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = pair
    assert st.js(ref, cur) == pytest.approx(jensenshannon(ref, cur, base=2), abs=TOL)


def _expand(counts: list[int]) -> np.ndarray:
    """Values that are their bin's index, as many as the count: the data a binned KS stands for."""
    return np.repeat(np.arange(len(counts), dtype=float), counts)


@settings(max_examples=80, deadline=None)
@given(pair=counts_pairs)
def test_binned_ks_matches_scipy_on_bin_indices(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = pair
    d, p = st.ks_binned(ref, cur)
    expected = stats.ks_2samp(_expand(ref), _expand(cur), method="asymp")
    assert d == pytest.approx(expected.statistic, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)


def test_binned_functions_score_a_feature_matrix_row_by_row() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 500, size=(7, 10))
    cur = rng.integers(0, 500, size=(7, 10))
    psis, js = st.psi(ref, cur), st.js(ref, cur)
    ds, ps = st.ks_binned(ref, cur)
    for i in range(7):
        assert psis[i] == pytest.approx(st.psi(ref[i], cur[i]), abs=TOL)
        assert js[i] == pytest.approx(st.js(ref[i], cur[i]), abs=TOL)
        assert (ds[i], ps[i]) == pytest.approx(st.ks_binned(ref[i], cur[i]), abs=TOL)


@settings(max_examples=150, deadline=None)
@given(pair=counts_pairs)
def test_chi2_matches_scipy_contingency(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = (np.asarray(c) for c in pair)
    v, statistic, p = st.chi2(ref, cur)
    keep = (ref + cur) > 0
    table = np.vstack([ref[keep], cur[keep]])
    if table.shape[1] < 2:
        assert (v, statistic, p) == (0.0, 0.0, 1.0)
        return
    expected = stats.chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=TOL, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)
    assert v == pytest.approx(stats.contingency.association(table, method="cramer", correction=False), abs=TOL)


def test_chi2_goodness_of_fit_agrees_with_scipy_chisquare_when_the_reference_is_huge() -> None:
    """With a reference many times the window, homogeneity tends to goodness of fit against its proportions."""
    ref = np.array([400_000, 300_000, 200_000, 100_000]) * 1000
    cur = np.array([420, 290, 190, 100])
    _, statistic, _ = st.chi2(ref, cur)
    expected = stats.chisquare(cur, f_exp=ref / ref.sum() * cur.sum())
    assert statistic == pytest.approx(expected.statistic, rel=1e-3)


@settings(max_examples=100, deadline=None)
@given(pair=counts_pairs, width=hst.floats(0.1, 10))
def test_binned_wasserstein_matches_scipy_on_bin_points(pair: tuple[list[int], list[int]], width: float) -> None:
    ref, cur = pair
    edges = np.cumsum(np.full(len(ref) - 1, width)) - 3.0
    points = st.bin_points(edges)
    expected = stats.wasserstein_distance(points, points, ref, cur)
    assert st.wasserstein_binned(ref, cur, edges) == pytest.approx(expected, abs=TOL, rel=TOL)


samples = hst.lists(hst.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300)
tied_samples = hst.lists(hst.integers(-5, 5).map(float), min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(a=hst.one_of(samples, tied_samples), b=hst.one_of(samples, tied_samples))
def test_exact_ks_equals_scipy_ks_2samp(a: list[float], b: list[float]) -> None:
    result = st.ks_exact(a, b)
    expected = stats.ks_2samp(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=TOL)
    assert result.p_value == pytest.approx(expected.pvalue, abs=TOL)
    assert st.ks_statistic_sorted(np.sort(a), np.sort(b)) == pytest.approx(expected.statistic, abs=TOL)


@pytest.mark.parametrize(("n1", "n2", "shift", "ties"), [(20_000, 15_000, 0.0, False), (12_000, 50_000, 0.03, True)])
def test_exact_ks_on_large_samples_equals_scipy_asymptotic(n1: int, n2: int, shift: float, ties: bool) -> None:
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=n1), rng.normal(shift, size=n2)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    result = st.ks_exact(np.sort(a), b, reference_sorted=True)
    expected = stats.ks_2samp(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=TOL)
    assert result.p_value == pytest.approx(expected.pvalue, abs=TOL)


@settings(max_examples=150, deadline=None)
@given(a=hst.one_of(samples, tied_samples), b=hst.one_of(samples, tied_samples))
def test_exact_wasserstein_matches_scipy(a: list[float], b: list[float]) -> None:
    assert st.wasserstein_exact(a, b) == pytest.approx(stats.wasserstein_distance(a, b), abs=1e-9, rel=1e-9)


@settings(max_examples=40, deadline=None)  # multipletests costs ~0.1 s a call here
@given(p=hst.lists(hst.floats(0, 1), min_size=1, max_size=60))
def test_holm_matches_statsmodels(p: list[float]) -> None:
    expected = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(st.holm(p), expected, atol=TOL, rtol=0)


def test_bad_counts_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="bins"):
        st.psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="negative"):
        st.js([1, -2], [1, 2])
    with pytest.raises(ValueError, match="at least one value"):
        st.ks_exact([], [1.0])


def test_identical_distributions_score_zero() -> None:
    counts = [10, 20, 30]
    assert st.psi(counts, counts) == pytest.approx(0.0, abs=TOL)
    assert st.js(counts, counts) == pytest.approx(0.0, abs=TOL)
    assert st.ks_binned(counts, counts)[0] == pytest.approx(0.0, abs=TOL)
    assert st.chi2(counts, counts)[2] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [150, 5_000, 60_000, 250_000])
@pytest.mark.parametrize("z", [0.5, 1.0, 1.49, 1.5, 2.0, 3.0, 8.0, 19.0, 20.0])
def test_kolmogorov_sf_equals_scipy_kstwo_in_every_branch(n: int, z: float) -> None:
    d = z / np.sqrt(n)
    assert st._kstwo_sf(d, n) == pytest.approx(stats.kstwo.sf(d, n), abs=TOL, rel=1e-8)
