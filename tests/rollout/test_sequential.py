"""Anytime-valid comparisons: looking after every batch keeps false positives within alpha
(where a fixed-sample z-test peeked at as often does not), real degradations are found, and
the formulas agree with each other and with their written form.

The simulations run the shipped vectorised functions over whole arrays of runs x looks.
Figures quoted in docs/rollouts.md come from these (``pytest -s`` prints them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stalwart.errors import ConfigError
from stalwart.rollout.sequential import (
    Moments,
    Proportion,
    always_valid_p,
    compare,
    half_width,
    mixture_log_lr,
    two_means,
    two_proportions,
)

ALPHA = 0.05
RUNS, LOOKS = 2_000, 200
MIN_N = 200

Array = npt.NDArray[np.float64]


def _rates(
    rng: np.random.Generator, p_c: float, p_p: float, b_c: int, b_p: int
) -> tuple[npt.NDArray[Any], ...]:
    """Cumulative events and counts per run and look, a batch of b_c and b_p per look."""
    looks = np.arange(1, LOOKS + 1)
    x_c = rng.binomial(b_c, p_c, (RUNS, LOOKS)).cumsum(axis=1)
    x_p = rng.binomial(b_p, p_p, (RUNS, LOOKS)).cumsum(axis=1)
    return x_c, b_c * looks, x_p, b_p * looks


def _log_latency_sums(
    rng: np.random.Generator, mu: float, sigma: float, b: int
) -> tuple[Array, Array, Array]:
    """Cumulative n, sum and sum of squares of b normal values per look, drawn exactly
    through the batch mean and the chi-squared sum of squared deviations."""
    means = rng.normal(mu, sigma / math.sqrt(b), (RUNS, LOOKS))
    deviations = sigma**2 * rng.chisquare(b - 1, (RUNS, LOOKS))
    sums = (b * means).cumsum(axis=1)
    squares = (deviations + b * means**2).cumsum(axis=1)
    return b * np.arange(1, LOOKS + 1, dtype=np.float64), sums, squares


def _peeked_z(estimate: Array, variance: Array) -> Array:
    """A fixed-sample two-sided z-test at 5 %, read at every look."""
    return np.asarray(np.abs(estimate) > 1.959963984540054 * np.sqrt(variance))


def _pooled_variance(x_c: Array, n_c: Array, x_p: Array, n_p: Array) -> Array:
    """The classical two-proportion z-test's variance under no difference."""
    pooled = (x_c + x_p) / (n_c + n_p)
    return np.asarray(pooled * (1 - pooled) * (1 / n_c + 1 / n_p))


@pytest.mark.parametrize(
    ("rate", "batch_c", "batch_p", "tolerance"),
    [(0.02, 50, 50, 0.005), (0.2, 100, 100, 0.02), (0.01, 10, 90, 0.005)],
    ids=["2%-even", "20%-even", "1%-canary-at-10%"],
)
def test_aa_rates_false_positives_within_alpha_while_peeked_z_test_is_not(
    rate: float, batch_c: int, batch_p: int, tolerance: float
) -> None:
    """With canary = primary and a look after every batch (2,000 runs x 200 looks), the
    always-valid p-value ever reaches alpha in at most alpha of runs, and so does the interval
    ever excluding 0; a z-test read at the same looks rejects in far more."""
    rng = np.random.default_rng(11)
    x_c, n_c, x_p, n_p = _rates(rng, rate, rate, batch_c, batch_p)
    estimate, variance = two_proportions(x_c, n_c, x_p, n_p)
    looked = np.minimum(n_c, n_p) >= MIN_N
    p = always_valid_p(estimate, variance, tolerance)[:, looked]
    width = half_width(variance, tolerance, ALPHA)[:, looked]
    sequential = (p <= ALPHA).any(axis=1).mean()
    missed = (np.abs(estimate[:, looked]) > width).any(axis=1).mean()
    z_variance = _pooled_variance(x_c, n_c, x_p, n_p)
    peeked = _peeked_z(estimate, z_variance)[:, looked].any(axis=1).mean()
    final = _peeked_z(estimate, z_variance)[:, -1].mean()
    print(f"\nA/A rate {rate} ({batch_c}:{batch_p}): mSPRT {sequential:.4f}, peeked z {peeked:.4f}, z at the last look only {final:.4f}")
    assert sequential <= ALPHA
    assert missed == sequential  # the interval excludes 0 exactly when p <= alpha
    assert peeked > 4 * ALPHA


@pytest.mark.parametrize(("batch_c", "batch_p"), [(50, 50), (10, 90)], ids=["even", "canary-at-10%"])
def test_aa_log_latency_false_positives_within_alpha(batch_c: int, batch_p: int) -> None:
    """Log-normal latencies alike in both arms, a look after every batch: the mean-difference
    test ever rejects in at most alpha of runs; the peeked z-test in far more."""
    rng = np.random.default_rng(12)
    n_c, s_c, q_c = _log_latency_sums(rng, -3.0, 0.6, batch_c)
    n_p, s_p, q_p = _log_latency_sums(rng, -3.0, 0.6, batch_p)
    estimate, variance = two_means(n_c, s_c, q_c, n_p, s_p, q_p)
    looked = np.minimum(n_c, n_p) >= MIN_N
    tolerance = math.log1p(0.10)
    sequential = (always_valid_p(estimate, variance, tolerance)[:, looked] <= ALPHA).any(axis=1).mean()
    peeked = _peeked_z(estimate, variance)[:, looked].any(axis=1).mean()
    print(f"\nA/A log-latency ({batch_c}:{batch_p}): mSPRT {sequential:.4f}, peeked z {peeked:.4f}")
    assert sequential <= ALPHA
    assert peeked > 4 * ALPHA


def test_interval_covers_a_real_difference_at_every_look() -> None:
    """With a real difference (3 % against 2 %), the interval contains it at every one of
    200 looks in at least 1 - alpha of runs: time-uniform coverage, not just under the null."""
    rng = np.random.default_rng(13)
    x_c, n_c, x_p, n_p = _rates(rng, 0.03, 0.02, 50, 50)
    estimate, variance = two_proportions(x_c, n_c, x_p, n_p)
    looked = np.minimum(n_c, n_p) >= MIN_N
    width = half_width(variance, 0.005, ALPHA)[:, looked]
    missed = (np.abs(estimate[:, looked] - 0.01) > width).any(axis=1).mean()
    print(f"\ncoverage miss rate at 3% vs 2%: {missed:.4f}")
    assert missed <= ALPHA


def _first_look(hit: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Index of each run's first true look, LOOKS when never."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), LOOKS)


def test_ab_error_rate_rise_is_detected_early() -> None:
    """An error rate that rises from 2 % to 4 % against a tolerance of 0.5 pp: the interval's
    lower end passes the tolerance (a fail) in at least 95 % of runs within 10,000 requests
    per arm, and a good canary is never failed in those runs' counterparts."""
    rng = np.random.default_rng(14)
    x_c, n_c, x_p, n_p = _rates(rng, 0.04, 0.02, 50, 50)
    estimate, variance = two_proportions(x_c, n_c, x_p, n_p)
    lower = estimate - half_width(variance, 0.005, ALPHA)
    fail = (lower > 0.005) & (np.minimum(n_c, n_p) >= MIN_N)
    first = _first_look(fail)
    detected = first < LOOKS
    median_n = float(np.median(n_c[first[detected]]))
    print(f"\nA/B 2% -> 4%: detected in {detected.mean():.4f} of runs, median n per arm {median_n:.0f}")
    assert detected.mean() >= 0.95
    assert median_n < n_c[-1] / 2


def test_ab_latency_rise_is_detected_early() -> None:
    """A canary 30 % slower (geometric mean) against a tolerance of 10 %: failed in at least
    95 % of runs; the median requests per arm at detection is reported."""
    rng = np.random.default_rng(15)
    n_c, s_c, q_c = _log_latency_sums(rng, -3.0 + math.log(1.3), 0.6, 50)
    n_p, s_p, q_p = _log_latency_sums(rng, -3.0, 0.6, 50)
    estimate, variance = two_means(n_c, s_c, q_c, n_p, s_p, q_p)
    tolerance = math.log1p(0.10)
    lower = estimate - half_width(variance, tolerance, ALPHA)
    first = _first_look((lower > tolerance) & (np.minimum(n_c, n_p) >= MIN_N))
    detected = first < LOOKS
    median_n = float(np.median(n_c[first[detected]]))
    print(f"\nA/B latency +30%: detected in {detected.mean():.4f} of runs, median n per arm {median_n:.0f}")
    assert detected.mean() >= 0.95
    assert median_n < n_c[-1] / 2


def test_good_canary_is_eventually_cleared_and_never_failed() -> None:
    """Canary = primary at 2 % errors, tolerance 0.5 pp: at most alpha/2 of runs ever fail
    it, and at least 90 % reach a pass (upper end within the tolerance) by 50,000 requests
    per arm; the median requests per arm to a pass is reported."""
    rng = np.random.default_rng(16)
    x_c, n_c, x_p, n_p = _rates(rng, 0.02, 0.02, 250, 250)
    estimate, variance = two_proportions(x_c, n_c, x_p, n_p)
    width = half_width(variance, 0.005, ALPHA)
    looked = np.minimum(n_c, n_p) >= MIN_N
    failed = ((estimate - width > 0.005)[:, looked]).any(axis=1).mean()
    passed = _first_look((estimate + width <= 0.005) & looked)
    cleared = passed < LOOKS
    print(f"\nA/A: failed in {failed:.4f} of runs; passed in {cleared.mean():.4f}, median n per arm {np.median(n_c[passed[cleared]]):.0f}")
    assert failed <= ALPHA / 2
    assert cleared.mean() >= 0.9


def test_interval_is_the_inversion_of_the_test() -> None:
    """d0 lies outside the interval exactly when the mixture likelihood ratio of (d - d0)
    reaches 1/alpha, at many estimates and variances."""
    rng = np.random.default_rng(17)
    estimate = rng.normal(0.0, 0.02, 10_000)
    variance = rng.uniform(1e-6, 1e-3, 10_000)
    width = half_width(variance, 0.01, ALPHA)
    for d0 in (0.0, 0.01, -0.02):
        outside = np.abs(estimate - d0) > width
        rejected = mixture_log_lr(estimate - d0, variance, 0.01) >= math.log(1 / ALPHA)
        boundary = np.isclose(np.abs(estimate - d0), width, rtol=1e-9)
        assert np.array_equal(outside[~boundary], rejected[~boundary])


def test_formulas_match_their_written_form() -> None:
    """log Λ and the half-width equal docs/rollouts.md's formulas at one hand-picked point."""
    d, v, tau, alpha = 0.012, 2.5e-5, 0.005, 0.05
    expected_log_lr = 0.5 * math.log(v / (v + tau**2)) + tau**2 * d**2 / (2 * v * (v + tau**2))
    expected_width = math.sqrt(v * (v + tau**2) / tau**2 * (math.log((v + tau**2) / v) + 2 * math.log(1 / alpha)))
    assert float(mixture_log_lr(d, v, tau)) == pytest.approx(expected_log_lr, rel=1e-12)
    assert float(half_width(v, tau, alpha)) == pytest.approx(expected_width, rel=1e-12)
    assert float(always_valid_p(d, v, tau)) == pytest.approx(min(1.0, math.exp(-expected_log_lr)), rel=1e-12)


def test_compare_reads_the_sufficient_statistics() -> None:
    """compare() on Moments built from raw values gives numpy's means and Welch's variance;
    on Proportions the raw rates; merged Moments equal Moments of the concatenation."""
    rng = np.random.default_rng(18)
    a, b = rng.normal(1.0, 2.0, 3_000), rng.normal(1.2, 1.5, 1_000)
    half = Moments.of(a[:1_234]).merge(Moments.of(a[1_234:]))
    whole = Moments.of(a)
    assert half.n == whole.n
    assert half.total == pytest.approx(whole.total)
    assert half.total_sq == pytest.approx(whole.total_sq)
    assert whole.variance == pytest.approx(np.var(a, ddof=1), rel=1e-9)
    found = compare(Moments.of(b), whole, alpha=ALPHA, scale=0.1)
    assert found is not None
    assert found.effect == pytest.approx(b.mean() - a.mean(), rel=1e-9)
    se = math.sqrt(np.var(b, ddof=1) / b.size + np.var(a, ddof=1) / a.size)
    assert found.z == pytest.approx(found.effect / se, rel=1e-6)
    assert found.lower < found.effect < found.upper
    rates = compare(Proportion(400, 20), Proportion(600, 12), alpha=ALPHA, scale=0.01)
    assert rates is not None
    assert rates.canary == 0.05
    assert rates.primary == 0.02


def test_too_few_to_estimate_is_none_and_bad_input_is_refused() -> None:
    """No observations (a rate) or one (a mean) cannot be compared; impossible counts and
    mixed kinds are a ConfigError that says what is wrong."""
    assert compare(Proportion(0, 0), Proportion(100, 1), alpha=ALPHA, scale=0.01) is None
    assert compare(Moments.of([1.0]), Moments.of([1.0, 2.0]), alpha=ALPHA, scale=0.01) is None
    with pytest.raises(ConfigError, match="events <= n"):
        Proportion(10, 11)
    with pytest.raises(ConfigError, match="finite"):
        Moments.of([1.0, math.inf])
    with pytest.raises(ConfigError, match="two Proportions or two Moments"):
        compare(Proportion(10, 1), Moments.of([1.0, 2.0]), alpha=ALPHA, scale=0.01)
    with pytest.raises(ConfigError, match="alpha"):
        compare(Proportion(10, 1), Proportion(10, 1), alpha=1.5, scale=0.01)
