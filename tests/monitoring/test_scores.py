"""Drift scores: each equals its scipy counterpart (or its written formula) on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from stalwart.errors import ConfigError
from stalwart.monitoring import scores

TOL = 1e-9


def _samples(seed: int, n1: int, n2: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, n1), rng.normal(0.3, 1.4, n2)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return a, b


SIZES = [(5, 8), (200, 333), (1000, 1000, True), (9_000, 12_000), (20_000, 15_001, True)]


@pytest.mark.parametrize("case", SIZES)
def test_ks_equals_scipy(case: tuple[int, ...]) -> None:
    """Statistic and p-value equal scipy.stats.ks_2samp, on the exact and the asymptotic path, with ties."""
    a, b = _samples(1, case[0], case[1], ties=len(case) > 2)
    expected = stats.ks_2samp(a, b)
    d, p = scores.ks(a, b)
    assert d == pytest.approx(expected.statistic, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)


@pytest.mark.parametrize("case", SIZES)
def test_wasserstein_normed_equals_scipy(case: tuple[int, ...]) -> None:
    """W1 / std(reference) equals scipy.stats.wasserstein_distance / numpy.std (ddof 0)."""
    a, b = _samples(2, case[0], case[1], ties=len(case) > 2)
    expected = stats.wasserstein_distance(a, b) / np.std(a)
    assert scores.wasserstein_normed(a, b) == pytest.approx(expected, abs=TOL)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    st.lists(st.integers(-20, 20), min_size=1, max_size=60),
)
def test_linear_time_wasserstein_matches_scipy_on_any_samples(a: list[int], b: list[int]) -> None:
    """The merge by integer arithmetic gives scipy's W1 for any sizes and ties."""
    ra, rb = np.sort(np.array(a, dtype=float) / 3), np.sort(np.array(b, dtype=float) / 3)
    assert scores.wasserstein_sorted(ra, rb) == pytest.approx(stats.wasserstein_distance(ra, rb), abs=TOL)


def test_a_constant_reference_normalises_to_zero_or_infinity() -> None:
    """No spread in the reference: equal samples score 0, anything else inf (not a division error)."""
    assert scores.wasserstein_normed([1.0, 1.0], [1.0]) == 0.0
    assert scores.wasserstein_normed([1.0, 1.0], [2.0]) == math.inf


@pytest.mark.parametrize("seed", range(5))
def test_js_distance_equals_scipy_base_2(seed: int) -> None:
    """Jensen-Shannon distance equals scipy's jensenshannon(p, q, base=2), counts or shares alike."""
    rng = np.random.default_rng(seed)
    p, q = rng.integers(0, 40, 10), rng.integers(1, 40, 10)
    assert scores.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=TOL)
    assert 0.0 <= scores.js_distance(p, q) <= 1.0


def test_js_distance_is_one_for_disjoint_and_zero_for_equal() -> None:
    """The base-2 distance spans [0, 1]."""
    assert scores.js_distance([3, 0], [0, 5]) == pytest.approx(1.0, abs=TOL)
    assert scores.js_distance([2, 6], [1, 3]) == pytest.approx(0.0, abs=TOL)


def test_psi_follows_its_formula_with_the_stated_epsilon() -> None:
    """PSI = sum (q - p) ln(q / p) on shares, empty cells raised to 1e-4, so an empty cell is finite."""
    ref, cur = np.array([30, 50, 20, 0]), np.array([10, 50, 30, 10])
    p = np.maximum(ref / ref.sum(), 1e-4)
    q = np.maximum(cur / cur.sum(), 1e-4)
    assert scores.PSI_EPSILON == 1e-4
    assert scores.psi(ref, cur) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), abs=TOL)
    assert scores.psi(ref, cur) == pytest.approx(scores.psi(cur, ref), abs=TOL)  # symmetric
    assert math.isfinite(scores.psi(ref, cur))


@pytest.mark.parametrize("seed", range(5))
def test_hellinger_equals_the_bhattacharyya_form(seed: int) -> None:
    """H = sqrt(1 - sum sqrt(p q)), in [0, 1]; 1 for disjoint distributions."""
    rng = np.random.default_rng(seed)
    p, q = rng.random(8), rng.random(8)
    pp, qq = p / p.sum(), q / q.sum()
    assert scores.hellinger(p, q) == pytest.approx(math.sqrt(1 - np.sum(np.sqrt(pp * qq))), abs=TOL)
    assert scores.hellinger([1, 0], [0, 1]) == pytest.approx(1.0, abs=TOL)


def test_linf_is_the_largest_share_difference() -> None:
    """TFDV's L-infinity: max |p_i - q_i| on normalised counts."""
    assert scores.linf([60, 30, 10], [40, 30, 30]) == pytest.approx(0.2, abs=TOL)


@pytest.mark.parametrize("seed", range(4))
def test_chi2_equals_scipy_contingency_without_correction(seed: int) -> None:
    """Statistic and p-value equal scipy.stats.chi2_contingency([ref, cur], correction=False)."""
    rng = np.random.default_rng(seed)
    ref, cur = rng.integers(1, 200, 6), rng.integers(1, 200, 6)
    expected = stats.chi2_contingency(np.array([ref, cur]), correction=False)
    statistic, p = scores.chi2(ref, cur)
    assert statistic == pytest.approx(expected.statistic, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)


def test_chi2_is_defined_with_a_new_category_and_ignores_empty_cells() -> None:
    """A category only the current sample has is a drift signal, not a division by zero."""
    statistic, p = scores.chi2([50, 50, 0, 0], [40, 40, 20, 0])
    expected = stats.chi2_contingency(np.array([[50, 50, 0], [40, 40, 20]]), correction=False)
    assert statistic == pytest.approx(expected.statistic, abs=TOL)
    assert p < 0.001


def test_proportion_z_squared_is_the_two_by_two_chi2() -> None:
    """The two-proportion z-test agrees with the 2x2 chi-squared test: z^2 = X^2, same p-value."""
    z, p = scores.proportion_z(30, 100, 45, 120)
    expected = stats.chi2_contingency(np.array([[30, 70], [45, 75]]), correction=False)
    assert z * z == pytest.approx(expected.statistic, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)
    assert scores.proportion_z(0, 10, 0, 10) == (0.0, 1.0)


def test_new_category_share_counts_current_values_the_reference_never_had() -> None:
    """Share of current values in unseen categories."""
    assert scores.new_category_share(["a", "b"], {"a": 6, "b": 2, "c": 2}) == pytest.approx(0.2)
    assert scores.new_category_share(["a"], {}) == 0.0


def test_misaligned_or_empty_inputs_are_config_errors() -> None:
    """Cells must line up and each side needs values; the error says so."""
    with pytest.raises(ConfigError, match="aligned cell by cell"):
        scores.psi([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="one side is empty"):
        scores.js_distance([0, 0], [1, 1])
    with pytest.raises(ConfigError, match="at least one value on each side"):
        scores.ks([], [1.0])
