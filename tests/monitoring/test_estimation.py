"""CBPE: estimated performance from calibrated probabilities agrees with the realised
performance the labels later show, under covariate shift too, and calibration repairs a
model whose scores are not probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from stalwart.monitoring.estimation import CBPE, Calibrator, expected_roc_auc

# Windows of 5 000 rows: the standard error of a realised accuracy near 0.85 is 0.005, so
# an unbiased estimate lies within 0.02 (four standard errors) of it.
N = 5_000
TOLERANCE = 0.02
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def _world(rng: np.random.Generator, n: int, mean: float, spread: float) -> tuple[Any, Any]:
    """Inputs from N(mean, spread²) and labels from P(y=1 | x) = sigmoid(2x - 1): the
    concept is fixed, only the inputs move."""
    x = rng.normal(mean, spread, n)
    p = 1 / (1 + np.exp(-(2 * x - 1)))
    y = (rng.uniform(size=n) < p).astype(int)
    return p, y


def _realised(y: Any, yhat: Any, score: Any) -> dict[str, float]:
    return {
        "accuracy": accuracy_score(y, yhat),
        "precision": precision_score(y, yhat, zero_division=0),
        "recall": recall_score(y, yhat, zero_division=0),
        "f1": f1_score(y, yhat, zero_division=0),
        "roc_auc": roc_auc_score(y, score),
    }


def test_a_calibrated_model_is_estimated_within_tolerance_of_its_realised_metrics() -> None:
    """Probabilities that are the true P(y | x): every estimated metric is within 0.02 of
    what the labels show for the same window."""
    rng = np.random.default_rng(1)
    reference_p, reference_y = _world(rng, 20_000, 0.5, 1.0)
    cbpe = CBPE.fit(reference_p, reference_y)
    p, y = _world(rng, N, 0.5, 1.0)
    yhat = (p >= 0.5).astype(int)
    estimated = cbpe.estimate(p, yhat)
    realised = _realised(y, yhat, p)
    for metric in METRICS:
        assert estimated[metric] == pytest.approx(realised[metric], abs=TOLERANCE), metric


def test_under_covariate_shift_the_estimate_tracks_the_realised_change() -> None:
    """Inputs drift toward the decision boundary (and elsewhere): accuracy and the rest
    change by far more than the tolerance, and the estimate follows each window within it."""
    rng = np.random.default_rng(2)
    reference_p, reference_y = _world(rng, 20_000, 0.5, 1.0)
    cbpe = CBPE.fit(reference_p, reference_y)
    accuracies = []
    for mean, spread in [(0.5, 1.0), (0.5, 0.3), (1.5, 0.8), (-1.0, 0.7)]:
        p, y = _world(rng, N, mean, spread)
        yhat = (p >= 0.5).astype(int)
        estimated = cbpe.estimate(p, yhat)
        realised = _realised(y, yhat, p)
        for metric in ("accuracy", "roc_auc"):
            assert estimated[metric] == pytest.approx(realised[metric], abs=TOLERANCE), (mean, spread, metric)
        accuracies.append(realised["accuracy"])
    assert max(accuracies) - min(accuracies) > 0.15  # the shift did move performance


def test_isotonic_calibration_repairs_scores_that_are_not_probabilities() -> None:
    """A model whose score is p³ (ranks right, probabilities wrong): uncalibrated the
    estimate is far off; calibrated on a labelled reference it is within tolerance."""
    rng = np.random.default_rng(3)
    reference_p, reference_y = _world(rng, 20_000, 0.5, 1.0)
    p, y = _world(rng, N, 0.5, 1.0)
    score = p**3
    yhat = (score >= 0.5).astype(int)
    realised = _realised(y, yhat, score)
    raw = CBPE.fit(reference_p**3, reference_y, calibration="none").estimate(score, yhat)
    assert abs(raw["accuracy"] - realised["accuracy"]) > 0.1
    for method in ("isotonic", "platt"):
        calibrated = CBPE.fit(reference_p**3, reference_y, calibration=method).estimate(score, yhat)
        assert calibrated["accuracy"] == pytest.approx(realised["accuracy"], abs=TOLERANCE), method
        assert calibrated["roc_auc"] == pytest.approx(realised["roc_auc"], abs=TOLERANCE), method


def test_isotonic_fit_equals_scikit_learn() -> None:
    """The pool-adjacent-violators fit gives scikit-learn's IsotonicRegression values
    (ties included), to 1e-12."""
    rng = np.random.default_rng(4)
    s = np.round(rng.uniform(size=3_000), 2)  # many ties
    y = (rng.uniform(size=s.size) < s**2).astype(float)
    ours = Calibrator.fit(s, y, "isotonic").apply(s)
    theirs = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y).predict(s)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_expected_auc_with_certain_labels_is_the_realised_auc() -> None:
    """With probabilities 0 or 1 (labels known), the expected ROC AUC is scikit-learn's
    ROC AUC of the scores, ties counted one half."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.uniform(size=500) + 0.3 * y, 1)
    assert expected_roc_auc(y.astype(float), scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_multiclass_estimates_macro_averages() -> None:
    """Three classes with calibrated softmax probabilities: estimated accuracy and macro
    precision, recall, F1 and one-vs-rest ROC AUC within tolerance of the realised ones."""
    rng = np.random.default_rng(6)

    def world(n: int, shift: float) -> tuple[Any, Any]:
        logits = rng.normal(0, 1.5, (n, 3)) + np.array([shift, 0, 0])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(3, p=row) for row in p])
        return p, y

    cbpe = CBPE.fit(*world(20_000, 0.0))
    p, y = world(N, 1.0)
    yhat = p.argmax(axis=1)
    estimated = cbpe.estimate(p, yhat)
    assert estimated["accuracy"] == pytest.approx(accuracy_score(y, yhat), abs=TOLERANCE)
    for metric, realised in [
        ("precision", precision_score(y, yhat, average="macro", zero_division=0)),
        ("recall", recall_score(y, yhat, average="macro", zero_division=0)),
        ("f1", f1_score(y, yhat, average="macro", zero_division=0)),
        ("roc_auc", roc_auc_score(y, p, multi_class="ovr", average="macro")),
    ]:
        assert estimated[metric] == pytest.approx(realised, abs=TOLERANCE), metric
