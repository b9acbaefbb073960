"""The paired comparison a user reads to decide on a shadow: its statistics equal scipy's and
scikit-learn's on the same pairs, and replicas' reports merge into the report of all pairs."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix

from stalwart.errors import ConfigError
from stalwart.rollout import paired
from stalwart.rollout.paired import EXACT_BELOW, OTHER, Answer, PairedReport, mcnemar

RANK_ERROR = 0.02  # KLL k=200: ~1.3% normalised rank error, with margin


def _pairs(rng: np.random.Generator, n: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Primary and shadow classes (the shadow agrees ~80% of the time) and scores (the
    shadow's shifted by +0.02 with noise)."""
    primary = rng.integers(0, classes, n)
    flip = rng.random(n) < 0.2
    shadow = np.where(flip, rng.integers(0, classes, n), primary)
    x = rng.random(n)
    y = x + 0.02 + rng.normal(0.0, 0.05, n)
    return primary, shadow, x, y


def _report(primary: np.ndarray, shadow: np.ndarray, x: np.ndarray, y: np.ndarray, max_classes: int = 20) -> PairedReport:
    report = PairedReport(max_classes)
    for p, s, a, b in zip(primary.tolist(), shadow.tolist(), x.tolist(), y.tolist(), strict=True):
        report.add(Answer(label=p, score=a), Answer(label=s, score=b))
    return report


def _rank(values: np.ndarray, value: float) -> float:
    return float(np.searchsorted(np.sort(values), value, side="right")) / len(values)


def test_agreement_and_confusion_equal_sklearn() -> None:
    """Agreement is accuracy of the shadow against the primary; the table is sklearn's."""
    primary, shadow, x, y = _pairs(np.random.default_rng(1), 5000)
    report = _report(primary, shadow, x, y)
    assert report.agreement == pytest.approx(accuracy_score(primary, shadow), abs=1e-12)
    assert report.labels() == ["0", "1", "2", "3"]
    assert report.confusion() == confusion_matrix(primary, shadow, labels=[0, 1, 2, 3]).tolist()
    assert report.labelled == report.answered == report.pairs == 5000


def test_classes_beyond_the_bound_are_other_and_agreement_stays_exact() -> None:
    """Past max_classes the table gains one OTHER row and column, never more; agreement
    still counts two equal unnamed classes as agreeing."""
    primary, shadow, x, y = _pairs(np.random.default_rng(2), 4000, classes=12)
    report = _report(primary, shadow, x, y, max_classes=3)
    labels = report.labels()
    assert len(labels) == 4
    assert labels[-1] == OTHER
    table = np.array(report.confusion())
    assert table.sum() == 4000
    assert report.agreement == pytest.approx(accuracy_score(primary, shadow), abs=1e-12)
    named = [int(c) for c in labels[:-1]]
    truth = confusion_matrix(primary, shadow, labels=list(range(12)))
    assert table[:3, :3].tolist() == truth[np.ix_(named, named)].tolist()


def test_declared_classes_are_kept_and_labels_normalised() -> None:
    """Declared classes have rows from the start; 1, 1.0, numpy's 1 and "1" are one class."""
    report = PairedReport(max_classes=2, classes=["1", "0"])
    report.add(Answer(label=7), Answer(label=7))
    report.add(Answer(label=1.0), Answer(label=np.int64(1)))
    report.add(Answer(label="1"), Answer(label=np.float32(0.0)))
    assert report.labels() == ["0", "1", OTHER]
    assert report.confusion() == [[0, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report.agreement == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="max_classes"):
        PairedReport(max_classes=1, classes=["a", "b"])


def test_score_test_equals_ttest_rel() -> None:
    """The paired t-test, its interval, the mean and sd of differences and the correlation
    equal scipy's on the raw pairs."""
    _, _, x, y = _pairs(np.random.default_rng(3), 3000)
    report = _report(np.zeros(3000, int), np.zeros(3000, int), x, y)
    test = report.score_test()
    expected = stats.ttest_rel(y, x)
    interval = expected.confidence_interval(0.95)
    assert test.t == pytest.approx(expected.statistic, rel=1e-9)
    assert test.p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert test.df == 2999
    assert (test.ci_low, test.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert test.mean == pytest.approx(np.mean(y - x), rel=1e-12)
    assert test.sd == pytest.approx(np.std(y - x, ddof=1), rel=1e-9)
    summary = report.to_dict()["summary"]["scores"]
    assert summary["correlation"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-9)
    assert summary["primary_mean"] == pytest.approx(np.mean(x), rel=1e-12)


def test_a_small_sample_t_test_equals_scipy_too() -> None:
    """Ten pairs with no real difference: the same t and p as scipy, not significant."""
    rng = np.random.default_rng(4)
    x = rng.random(10)
    y = x + rng.normal(0.0, 0.1, 10)
    test = _report(np.zeros(10, int), np.zeros(10, int), x, y).score_test()
    expected = stats.ttest_rel(y, x)
    assert test.t == pytest.approx(expected.statistic, rel=1e-9)
    assert test.p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_difference_quantiles_within_the_sketch_rank_error() -> None:
    """Quantiles of the differences and of each side's latency are within KLL's rank error."""
    rng = np.random.default_rng(5)
    n = 50_000
    x = rng.random(n)
    y = x + rng.standard_t(3, n) * 0.01
    lat_p, lat_s = rng.lognormal(-5, 0.5, n), rng.lognormal(-4, 0.7, n)
    report = PairedReport()
    for a, b, lp, ls in zip(x.tolist(), y.tolist(), lat_p.tolist(), lat_s.tolist(), strict=True):
        report.add(Answer(score=a, latency=lp), Answer(score=b, latency=ls))
    quantiles = report.score_difference_quantiles()
    assert quantiles is not None
    for q, value in zip(paired.QUANTILES, quantiles, strict=True):
        assert abs(_rank(y - x, value) - q) < RANK_ERROR, q
    for side, latencies in (("primary", lat_p), ("shadow", lat_s)):
        p50, p99 = report.latency_quantiles(side) or []
        assert abs(_rank(latencies, p50) - 0.5) < RANK_ERROR
        assert abs(_rank(latencies, p99) - 0.99) < RANK_ERROR


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (3, 9), (12, 12), (7, 17), (30, 12), (200, 260), (5, 400)])
def test_mcnemar_equals_a_direct_computation(b: int, c: int) -> None:
    """Exact binomial below 25 discordant pairs, chi-squared with continuity correction above."""
    result = mcnemar(b, c)
    n = b + c
    if n < EXACT_BELOW:
        expected = stats.binomtest(b, n, 0.5).pvalue if n else 1.0
        assert result.method == "exact"
    else:
        statistic = (abs(b - c) - 1) ** 2 / n
        expected = stats.chi2.sf(statistic, 1)
        assert result.method == "chi2"
        assert result.statistic == pytest.approx(statistic)
    assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_class_tests_count_the_discordant_pairs_of_each_class() -> None:
    """For two classes the per-class test is McNemar's on the raw 2x2 disagreement table;
    a shadow that calls more positives is found."""
    rng = np.random.default_rng(6)
    primary = (rng.random(2000) < 0.3).astype(int)
    shadow = np.where(rng.random(2000) < 0.1, 1, primary)  # the shadow flips some 0s to 1
    report = _report(primary, shadow, np.zeros(2000), np.zeros(2000))
    b = int(np.sum((primary == 1) & (shadow == 0)))
    c = int(np.sum((primary == 0) & (shadow == 1)))
    tests = {label: (test, adjusted) for label, test, adjusted in report.class_tests()}
    one, adjusted = tests["1"]
    assert (one.b, one.c) == (b, c)
    assert one.p_value == pytest.approx(stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1), rel=1e-9)
    assert adjusted == pytest.approx(min(1.0, 2 * one.p_value))
    assert adjusted < 1e-6


def test_errors_side_by_side_and_out_of_the_answer_statistics() -> None:
    """Each side's errors are counted with a paired test; a pair with a failure is left out
    of agreement and score differences."""
    report = PairedReport()
    for _ in range(40):
        report.add(Answer(label=1, score=0.5), Answer(error=True, latency=1.0))
    for _ in range(2):
        report.add(Answer(error=True), Answer(label=1, score=0.5))
    report.add(Answer(error=True), Answer(error=True))
    for _ in range(10):
        report.add(Answer(label=1, score=0.5), Answer(label=1, score=0.5))
    summary = report.to_dict()["summary"]
    assert summary["errors"]["primary"] == 3
    assert summary["errors"]["shadow"] == 41
    assert summary["errors"]["both"] == 1
    assert summary["errors"]["shadow_rate"] == pytest.approx(41 / 53)
    assert (summary["errors"]["test"]["b"], summary["errors"]["test"]["c"]) == (2, 40)
    assert summary["errors"]["test"]["p_value"] < 1e-6
    assert summary["answered"] == 10
    assert summary["classes"]["labelled"] == 10
    assert summary["scores"]["scored"] == 10
    difference = summary["scores"]["difference"]
    assert (difference["t"], difference["p_value"], difference["sd"]) == (None, 1.0, 0.0)


def test_replicas_merge_into_the_report_of_all_pairs() -> None:
    """Three replicas' reports, stored and read back, merge into one process's report:
    counts and tests equal, quantiles within the sketch's rank error."""
    primary, shadow, x, y = _pairs(np.random.default_rng(7), 9000)
    whole = _report(primary, shadow, x, y)
    parts = [
        PairedReport.from_dict(json.loads(json.dumps(_report(primary[i::3], shadow[i::3], x[i::3], y[i::3]).to_dict())))
        for i in range(3)
    ]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.pairs == whole.pairs
    assert merged.agreement == whole.agreement
    assert merged.confusion() == whole.confusion()
    a, b = merged.score_test(), whole.score_test()
    assert (a.t, a.p_value, a.mean, a.sd) == pytest.approx((b.t, b.p_value, b.mean, b.sd), rel=1e-9)
    quantiles = merged.score_difference_quantiles()
    assert quantiles is not None
    for q, value in zip(paired.QUANTILES, quantiles, strict=True):
        assert abs(_rank(y - x, value) - q) < RANK_ERROR
    assert merged.to_dict()["summary"]["classes"] == whole.to_dict()["summary"]["classes"]


def test_merging_more_classes_than_the_bound_keeps_the_most_frequent() -> None:
    """Two replicas that named different classes merge to the bound, the rarest folded."""
    left, right = PairedReport(max_classes=2), PairedReport(max_classes=2)
    for label, times in (("a", 5), ("b", 1)):
        for _ in range(times):
            left.add(Answer(label=label), Answer(label=label))
    for label, times in (("c", 3), ("d", 2)):
        for _ in range(times):
            right.add(Answer(label=label), Answer(label="a"))
    merged = left.merge(right)
    assert merged.labels() == ["a", "c", OTHER]
    assert merged.confusion() == [[5, 0, 0], [3, 0, 0], [2, 0, 1]]
    assert merged.agreement == pytest.approx(6 / 11)


def test_to_dict_is_json_safe_even_when_empty() -> None:
    """An empty report and a one-pair report serialise without NaN or infinity."""
    for report in (PairedReport(), PairedReport()):
        json.dumps(report.to_dict(), allow_nan=False)
        report.add(Answer(label="x", score=float("nan"), latency=float("inf")), Answer(label="y", score=1.0))
    summary = PairedReport.from_dict(report.to_dict()).to_dict()["summary"]
    json.dumps(summary, allow_nan=False)
    assert summary["scores"]["scored"] == 0
    assert summary["scores"]["difference"]["quantiles"]["p50"] is None
    assert summary["latency"]["primary"]["count"] == 0


def test_damaged_state_is_a_config_error() -> None:
    """A stored report that cannot be read says so and what to do."""
    data = PairedReport().to_dict()
    data["state"]["diff_sketch"] = "not base64!"
    with pytest.raises(ConfigError, match="rebuild"):
        PairedReport.from_dict(data)
    with pytest.raises(ConfigError, match="format"):
        PairedReport.from_dict({**data, "format": 99})


def test_the_module_example_runs() -> None:
    """The docstring's example is true."""
    assert doctest.testmod(paired).failed == 0
