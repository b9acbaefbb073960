"""Column and dataset drift: exact mode equals scipy, sketch mode stays within its stated bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from stalwart.errors import ConfigError
from stalwart.monitoring import scores
from stalwart.monitoring.drift import (
    ColumnDrift,
    column_drift,
    dataset_drift,
    default_method,
    prepare_reference,
)
from stalwart.monitoring.profiles import FeatureProfile, Profile

TOL = 1e-9
BINNED = ("psi", "js", "hellinger", "linf", "chi2")


def _bins(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Counts in (-inf, e1], (e1, e2], ..., (ek, inf): the cells drift scores on."""
    ordered = np.sort(values[np.isfinite(values)])
    return np.diff(np.concatenate(([0], np.searchsorted(ordered, edges, side="right"), [ordered.size])))


def _exact_binned(method: str, ref: np.ndarray, cur: np.ndarray, edges: tuple[float, ...]) -> float:
    a, b = _bins(ref, edges), _bins(cur, edges)
    if method == "psi":
        return scores.psi(a, b)
    if method == "js":
        return float(jensenshannon(a, b, base=2))
    if method == "hellinger":
        return scores.hellinger(a, b)
    if method == "linf":
        return scores.linf(a, b)
    keep = (a + b) > 0
    return float(stats.chi2_contingency(np.array([a[keep], b[keep]]), correction=False).statistic)


# -- exact mode -------------------------------------------------------------------------


def test_exact_numeric_scores_equal_scipy_on_the_same_data() -> None:
    """KS, Wasserstein/std, and the binned scores on the reference's deciles equal scipy."""
    rng = np.random.default_rng(7)
    ref, cur = rng.lognormal(0, 1, 3_000), rng.lognormal(0.2, 1, 2_500)
    ks = column_drift(ref, cur, method="ks")
    expected = stats.ks_2samp(ref, cur)
    assert (ks.score, ks.p_value) == pytest.approx((expected.statistic, expected.pvalue), abs=TOL)
    w = column_drift(ref, cur, method="wasserstein")
    assert w.score == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), abs=TOL)
    deciles = tuple(np.quantile(ref, np.arange(1, 10) / 10, method="inverted_cdf"))
    for method in BINNED:
        result = column_drift(ref, cur, method=method)
        assert result.edges == pytest.approx(deciles, abs=0)
        assert result.score == pytest.approx(_exact_binned(method, ref, cur, deciles), abs=TOL), method
        assert result.error_bound == 0.0
        assert result.mode == "exact"


def test_exact_categorical_scores_equal_scipy() -> None:
    """Categories: chi-squared (contingency), JS base 2, L-infinity, new-category share."""
    ref = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    cur = np.array(["a"] * 30 + ["b"] * 30 + ["d"] * 40, dtype=object)
    chi = column_drift(ref, cur, method="chi2")
    table = np.array([[50, 30, 20, 0], [30, 30, 0, 40]])
    expected = stats.chi2_contingency(table, correction=False)
    assert (chi.score, chi.p_value) == pytest.approx((expected.statistic, expected.pvalue), abs=TOL)
    assert column_drift(ref, cur, method="js").score == pytest.approx(jensenshannon(table[0], table[1], base=2), abs=TOL)
    assert column_drift(ref, cur, method="linf").score == pytest.approx(0.4, abs=TOL)
    assert chi.out_of_schema == pytest.approx(0.4)  # "d" is new


def test_missing_and_out_of_schema_rates() -> None:
    """Missing = None and NaN; out of schema = values of another type, infinities, new categories."""
    ref = np.array([1.0, 2.0, 3.0, None, 5.0, 6.0, 7.0, 8.0], dtype=object)
    cur = np.array([1.0, "oops", np.inf, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=object)
    result = column_drift(ref, cur, method="ks")
    assert result.kind == "numeric"
    assert result.missing_reference == pytest.approx(1 / 8)
    assert result.missing_current == pytest.approx(1 / 10)
    assert result.out_of_schema == pytest.approx(2 / 10)
    assert (result.reference_count, result.current_count) == (8, 10)


def test_a_shifted_column_drifts_and_a_stationary_one_does_not() -> None:
    """The default verdicts separate a 1-sigma shift from a resample of the same distribution."""
    rng = np.random.default_rng(3)
    for n in (500, 5_000):
        ref = rng.normal(0, 1, n)
        assert not column_drift(ref, rng.normal(0, 1, n)).drifted
        assert column_drift(ref, rng.normal(1, 1, n)).drifted


@pytest.mark.parametrize(
    ("kind", "size", "n_unique", "method"),
    [
        ("numeric", 500, 100, "ks"),
        ("numeric", 500, 4, "chi2"),
        ("numeric", 500, 2, "z"),
        ("numeric", 5_000, 100, "wasserstein"),
        ("numeric", 5_000, 4, "js"),
        ("categorical", 500, 7, "chi2"),
        ("categorical", 500, 2, "z"),
        ("categorical", 5_000, 7, "js"),
        ("categorical", 5_000, 2, "js"),
        ("numeric", 1_000, None, "ks"),
        ("numeric", 1_001, None, "wasserstein"),
    ],
)
def test_default_method_follows_the_documented_table(kind: str, size: int, n_unique: int | None, method: str) -> None:
    """Type, reference size (<= 1000) and distinct values pick the method, as Evidently does."""
    assert default_method(kind, size, n_unique) == method  # type: ignore[arg-type]


def test_column_drift_picks_the_default_method_from_the_data() -> None:
    """A small numeric column gets KS, a large one Wasserstein, booleans the z-test, strings chi2/JS."""
    rng = np.random.default_rng(4)
    assert column_drift(rng.normal(size=300), rng.normal(size=300)).method == "ks"
    assert column_drift(rng.normal(size=3000), rng.normal(size=300)).method == "wasserstein"
    flags = column_drift(rng.random(400) < 0.3, rng.random(400) < 0.6)
    assert (flags.method, flags.kind, flags.drifted) == ("z", "categorical", True)
    cities = np.array(["oslo", "lima", "pune"], dtype=object)
    assert column_drift(rng.choice(cities, 300), rng.choice(cities, 300)).method == "chi2"
    assert column_drift(rng.choice(cities, 3000), rng.choice(cities, 300)).method == "js"
    assert column_drift(rng.integers(0, 3, 3000), rng.integers(0, 3, 300)).method == "js"


def test_thresholds_decide_by_p_value_for_tests_and_by_score_for_distances() -> None:
    """ks/chi2/z drift when p < threshold; distances when score >= threshold."""
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(0, 1, 2000), rng.normal(0.15, 1, 2000)
    w = column_drift(ref, cur, method="wasserstein", threshold=0.1)
    assert w.drifted == (w.score >= 0.1)
    assert w.p_value is None
    assert column_drift(ref, cur, method="wasserstein", threshold=10.0).drifted is False
    k = column_drift(ref, cur, method="ks", threshold=1e-12)
    assert k.drifted == (k.p_value is not None and k.p_value < 1e-12)


def test_dataset_drift_share_and_verdict() -> None:
    """The share of drifted columns decides the dataset's verdict against its threshold."""
    rng = np.random.default_rng(6)
    ref = {f"x{i}": rng.normal(size=2000) for i in range(4)}
    cur = {f"x{i}": rng.normal(1.0 if i < 2 else 0.0, 1, 2000) for i in range(4)}
    result = dataset_drift(ref, cur)
    assert [c.drifted for c in result.columns] == [True, True, False, False]
    assert (result.share, result.threshold, result.drifted) == (0.5, 0.5, True)
    assert dataset_drift(ref, cur, share=0.75).drifted is False
    per_column = dataset_drift(ref, cur, methods={"x0": "psi"}, thresholds={"x1": 100.0})
    assert per_column.columns[0].method == "psi"
    assert not per_column.columns[1].drifted


def test_a_prepared_reference_scores_like_the_raw_one() -> None:
    """Sorting the reference once for many windows changes no score."""
    rng = np.random.default_rng(8)
    ref = {"a": rng.normal(size=4000), "b": rng.choice(np.array(["x", "y"], dtype=object), 4000)}
    cur = {"a": rng.normal(0.2, 1, 3000), "b": rng.choice(np.array(["x", "y"], dtype=object), 3000)}
    assert dataset_drift(prepare_reference(ref), cur) == dataset_drift(ref, cur)


def test_results_serialise_to_strict_json() -> None:
    """to_dict is JSON without NaN or Infinity: an unknown bound or an empty side is null."""
    rng = np.random.default_rng(9)
    profile = dataset_drift(
        Profile.of({"a": rng.normal(size=50_000)}), Profile.of({"a": rng.normal(size=50_000)}), methods="chi2"
    )
    empty = column_drift(np.array([1.0, 2.0]), np.array([np.nan]), column="e")
    data = json.loads(json.dumps([profile.to_dict(), empty.to_dict()], allow_nan=False))
    assert data[0]["columns"][0]["error_bound"] is None  # chi2 on an estimating sketch: no bound
    assert data[1]["score"] is None
    assert data[1]["drifted"] is False


def test_misuse_is_a_config_error_that_says_what_to_do() -> None:
    """Unknown methods, numeric-only methods on categories, mixed modes, missing columns."""
    cats = np.array(["a", "b"], dtype=object)
    with pytest.raises(ConfigError, match="unknown drift method 'kl'"):
        column_drift([1.0, 2.0], [1.0, 2.0], method="kl")
    with pytest.raises(ConfigError, match="ks needs numbers"):
        column_drift(cats, cats, method="ks")
    with pytest.raises(ConfigError, match="profile with a profile"):
        column_drift(FeatureProfile.of([1.0, 2.0]), [1.0, 2.0])
    with pytest.raises(ConfigError, match="no column 'b'"):
        dataset_drift({"a": [1.0], "b": [2.0]}, {"a": [1.0]})


# -- sketch mode ------------------------------------------------------------------------


def test_sketch_mode_equals_exact_mode_while_the_sketches_hold_every_value() -> None:
    """Small samples (no compaction) and few categories: every method scores as exact mode, bound 0."""
    rng = np.random.default_rng(10)
    ref, cur = rng.normal(0, 1, 150), rng.normal(0.4, 1, 120)
    for method in ("psi", "js", "ks", "wasserstein", "hellinger", "chi2", "linf", "z"):
        exact = column_drift(ref, cur, method=method)
        sketch = column_drift(FeatureProfile.of(ref), FeatureProfile.of(cur), method=method)
        assert sketch.mode == "sketch"
        assert sketch.error_bound == 0.0
        assert sketch.score == pytest.approx(exact.score, abs=TOL), method
        assert (sketch.p_value or 0.0) == pytest.approx(exact.p_value or 0.0, abs=TOL), method
    cities = np.array(["oslo", "lima", "pune", "rome"], dtype=object)
    a, b = rng.choice(cities, 40_000, p=[0.4, 0.3, 0.2, 0.1]), rng.choice(cities[:3], 30_000)
    for method in ("chi2", "js", "linf", "hellinger", "psi"):
        exact = column_drift(a, b, method=method)
        sketch = column_drift(FeatureProfile.of(a), FeatureProfile.of(b), method=method)
        assert sketch.error_bound == 0.0
        assert sketch.score == pytest.approx(exact.score, abs=TOL)
        assert sketch.out_of_schema == exact.out_of_schema


DISTRIBUTIONS = {
    "normal": lambda rng, n, s: rng.normal(s, 1, n),
    "lognormal": lambda rng, n, s: rng.lognormal(s, 0.8, n),
    "bimodal": lambda rng, n, s: np.where(rng.random(n) < 0.3, rng.normal(-2, 0.5, n), rng.normal(2 + s, 1, n)),
    "discrete": lambda rng, n, s: rng.poisson(3 + 2 * s, n).astype(float),
    "uniform": lambda rng, n, s: rng.uniform(0, 1 + s, n),
}


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(DISTRIBUTIONS)),
    shift=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_sketch_scores_stay_within_their_stated_bound(name: str, shift: float, seed: int) -> None:
    """From merged profiles of 40k/30k values: |sketch - exact| <= error_bound for KS and
    Wasserstein, and for the binned scores on the same (sketch-chosen) decile bins."""
    rng = np.random.default_rng(seed)
    draw = DISTRIBUTIONS[name]
    ref, cur = draw(rng, 40_000, 0.0), draw(rng, 30_000, shift)
    ref_profile = FeatureProfile.of(ref[:25_000]).merge(FeatureProfile.of(ref[25_000:]))
    cur_profile = FeatureProfile.of(cur)
    for method in ("ks", "wasserstein"):
        exact = column_drift(ref, cur, method=method)
        sketch = column_drift(ref_profile, cur_profile, method=method)
        assert 0 < sketch.error_bound < math.inf
        assert abs(sketch.score - exact.score) <= sketch.error_bound, method
    for method in ("psi", "js", "hellinger", "linf"):
        sketch = column_drift(ref_profile, cur_profile, method=method)
        exact_score = _exact_binned(method, ref, cur, sketch.edges)
        assert abs(sketch.score - exact_score) <= sketch.error_bound, method


def test_the_ks_bound_is_the_sum_of_the_rank_errors() -> None:
    """KS from sketches is within eps_ref + eps_cur, the KLL's normalised rank errors."""
    rng = np.random.default_rng(11)
    a, b = FeatureProfile.of(rng.normal(size=100_000)), FeatureProfile.of(rng.normal(size=80_000))
    result = column_drift(a, b, method="ks")
    assert result.error_bound == pytest.approx(a.rank_error + b.rank_error)


def test_categories_beyond_the_sketch_capacity_are_bounded() -> None:
    """Thousands of categories (counts no longer exact): distances carry a finite bound that holds."""
    rng = np.random.default_rng(12)
    ref = np.array([f"c{i}" for i in rng.zipf(1.3, 60_000) % 3000], dtype=object)
    cur = np.array([f"c{i}" for i in (rng.zipf(1.3, 40_000) + 1) % 3000], dtype=object)
    ref_profile, cur_profile = FeatureProfile.of(ref), FeatureProfile.of(cur)
    assert not ref_profile.frequencies_exact
    result = column_drift(ref_profile, cur_profile, method="js")
    assert 0 < result.error_bound < 1
    # Exact JS on the same cells: the sketch's listed categories, the rest pooled.
    names = sorted(set(ref_profile.frequencies()) | set(cur_profile.frequencies()))
    known = set(names)

    def cells(values: np.ndarray) -> np.ndarray:
        counts = {n: 0 for n in names}
        rest = 0
        for v in values.tolist():
            if v in known:
                counts[v] += 1
            else:
                rest += 1
        return np.array([*counts.values(), rest])

    exact = jensenshannon(cells(ref), cells(cur), base=2)
    assert abs(result.score - exact) <= result.error_bound


def test_dataset_drift_from_profiles() -> None:
    """Profiles per feature give a dataset verdict the same way raw columns do."""
    rng = np.random.default_rng(13)
    ref = Profile.of({"a": rng.normal(size=20_000), "b": rng.choice(np.array(["x", "y", "z"], dtype=object), 20_000)})
    cur = Profile.of({"a": rng.normal(2, 1, 20_000), "b": rng.choice(np.array(["x", "y", "z"], dtype=object), 20_000)})
    result = dataset_drift(ref, cur)
    assert [(c.column, c.method, c.drifted, c.mode) for c in result.columns] == [
        ("a", "wasserstein", True, "sketch"),
        ("b", "js", False, "sketch"),
    ]
    assert isinstance(result.columns[0], ColumnDrift)
    assert result.share == 0.5
