"""Estimated performance before labels arrive: confidence-based performance estimation.

CBPE (as NannyML describes it): if a classifier's probabilities are calibrated, a
prediction of class ``k`` made with probability ``p`` is right with probability ``p``, so
the confusion matrix of a window of predictions can be *expected* without a single label,
and every metric computed from it. Probabilities are first calibrated on a labelled
reference (a validation split, or the labelled predictions of earlier windows): each
class's score column is mapped through an isotonic (default) or Platt fit of "was it this
class" on the reference.

Binary, with ``p_i`` the calibrated probability of the positive class and ``ŷ_i`` the
predicted class (1 = positive)::

    TP = Σ ŷ_i p_i     FP = Σ ŷ_i (1 - p_i)     FN = Σ (1 - ŷ_i) p_i     TN = Σ (1 - ŷ_i)(1 - p_i)
    accuracy = (TP + TN) / n    precision = TP / (TP + FP)    recall = TP / (TP + FN)
    F1 = 2 TP / (2 TP + FP + FN)

ROC AUC is the expected share of (positive, negative) pairs the raw scores order right,
with row ``i`` positive with probability ``p_i`` independently of the others (pairs of a
row with itself left out; ties count one half)::

    AUC = Σ_{i≠j} p_i (1 - p_j) ([s_i > s_j] + ½[s_i = s_j]) / Σ_{i≠j} p_i (1 - p_j)

Multiclass: the calibrated columns are renormalised to sum to 1 per row; accuracy is the
mean calibrated probability of the predicted class; precision, recall, F1 and ROC AUC are
each class's one-vs-rest binary estimate, macro-averaged over every class of the model.

Estimates hold under covariate shift (the inputs move, P(y | x) does not) and fail under
concept drift (P(y | x) changes), which no label-free method can see; they are expected
values, so small windows scatter around them as the realised metrics do.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = rng.uniform(size=20_000); y = (rng.uniform(size=p.size) < p).astype(int)
>>> cbpe = CBPE.fit(p, y, calibration="none")
>>> round(cbpe.estimate(p, (p >= 0.5).astype(int))["accuracy"], 2)
0.75
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stalwart.errors import ConfigError

__all__ = ["CBPE", "Calibration", "Calibrator", "expected_roc_auc"]

Calibration = Literal["isotonic", "platt", "none"]
Array = np.ndarray[Any, Any]

_EPS = 1e-12


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from a score to a calibrated probability, fitted on a labelled
    reference: ``isotonic`` (pool-adjacent-violators, linear between the fitted steps,
    constant beyond them), ``platt`` (a logistic fit on the score's logit) or ``none``."""

    method: Calibration
    x: Array  # isotonic: the step points; platt: [a, b]
    y: Array

    @classmethod
    def fit(cls, scores: Array, outcomes: Array, method: Calibration = "isotonic") -> Calibrator:
        """Fit on ``scores`` (probabilities in [0, 1]) and ``outcomes`` (0 or 1)."""
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(outcomes, dtype=np.float64)
        if method == "none":
            return cls("none", np.empty(0), np.empty(0))
        if method == "isotonic":
            x, fitted = _isotonic(s, y)
            return cls("isotonic", x, fitted)
        if method == "platt":
            return cls("platt", _platt(s, y), np.empty(0))
        raise ConfigError(f"calibration: {method!r} is not a method; use isotonic, platt or none")

    def apply(self, scores: Array) -> Array:
        """The calibrated probabilities of ``scores``."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "none":
            return np.clip(s, 0.0, 1.0)
        if self.method == "isotonic":
            return np.interp(s, self.x, self.y)
        a, b = self.x
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * (a * _logit(s) + b))))


@dataclass(frozen=True)
class CBPE:
    """A fitted estimator: one calibrator per score column (one for binary).

    Classes are indices ``0 .. n_classes - 1``: the columns of the scores; binary scores
    are the positive class's (index 1) probability, one number per row.
    """

    n_classes: int
    calibrators: tuple[Calibrator, ...]

    @classmethod
    def fit(cls, scores: Array, labels: Array, *, calibration: Calibration = "isotonic") -> CBPE:
        """Calibrate on a labelled reference: ``scores`` (``(n,)`` positive-class
        probabilities for a binary model, ``(n, k)`` class probabilities otherwise) and
        ``labels`` (class indices). ConfigError when the reference is empty."""
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if s.shape[0] == 0 or s.shape[0] != y.shape[0]:
            raise ConfigError(f"CBPE needs labelled reference rows, as many labels as scores (got {s.shape[0]} and {y.shape[0]})")
        if s.ndim == 1:
            return cls(2, (Calibrator.fit(s, y == 1, calibration),))
        return cls(s.shape[1], tuple(Calibrator.fit(s[:, k], y == k, calibration) for k in range(s.shape[1])))

    def probabilities(self, scores: Array) -> Array:
        """Calibrated probabilities: ``(n,)`` of the positive class (binary) or ``(n, k)``
        rows summing to 1."""
        s = np.asarray(scores, dtype=np.float64)
        if self.n_classes == 2 and s.ndim == 1:
            return self.calibrators[0].apply(s)
        columns = np.column_stack([c.apply(s[:, k]) for k, c in enumerate(self.calibrators)])
        total = columns.sum(axis=1, keepdims=True)
        uniform = np.full_like(columns, 1.0 / self.n_classes)
        return np.where(total > _EPS, columns / np.maximum(total, _EPS), uniform)

    def estimate(self, scores: Array, predicted: Array) -> dict[str, float]:
        """Estimated accuracy, precision, recall, F1 and ROC AUC of one window: ``scores``
        as for :meth:`fit`, ``predicted`` the class indices the model answered. Empty
        windows estimate nothing (an empty dict)."""
        s = np.asarray(scores, dtype=np.float64)
        yhat = np.asarray(predicted, dtype=np.int64)
        if s.shape[0] == 0:
            return {}
        p = self.probabilities(s)
        if p.ndim == 1:
            return _binary(p, yhat == 1, s)
        per_class = [_binary(p[:, k], yhat == k, s[:, k]) for k in range(self.n_classes)]
        estimated = {"accuracy": float(np.mean(p[np.arange(len(yhat)), np.clip(yhat, 0, self.n_classes - 1)]))}
        for metric in ("precision", "recall", "f1", "roc_auc"):
            values = [c[metric] for c in per_class if metric in c]
            if values:
                estimated[metric] = float(np.mean(values))
        return estimated


def expected_roc_auc(probabilities: Array, scores: Array) -> float | None:
    """The expected ROC AUC of ``scores`` when row ``i`` is positive with probability
    ``probabilities[i]`` (see the module docstring); None when no pair can be told apart."""
    p = np.asarray(probabilities, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order]
    q = 1.0 - p
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(p, starts)
    neg = np.add.reduceat(q, starts)
    self_pairs = np.add.reduceat(p * q, starts)
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negative mass strictly below each tie group
    numerator = float(np.sum(pos * below) + 0.5 * np.sum(pos * neg - self_pairs))
    denominator = float(p.sum() * q.sum() - np.sum(p * q))
    return numerator / denominator if denominator > _EPS else None


def _binary(p: Array, predicted_positive: Array, scores: Array) -> dict[str, float]:
    yhat = predicted_positive.astype(np.float64)
    tp = float(np.sum(yhat * p))
    fp = float(np.sum(yhat * (1 - p)))
    fn = float(np.sum((1 - yhat) * p))
    tn = float(np.sum((1 - yhat) * (1 - p)))
    n = len(p)
    out = {
        "accuracy": (tp + tn) / n,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    auc = expected_roc_auc(p, scores)
    if auc is not None:
        out["roc_auc"] = auc
    return out


def _ratio(numerator: float, denominator: float) -> float:
    # As scikit-learn with zero_division=0: a metric whose denominator is empty is 0.
    return numerator / denominator if denominator > _EPS else 0.0


def _isotonic(s: Array, y: Array) -> tuple[Array, Array]:
    """Pool adjacent violators on (s, y) sorted by s, ties pooled first: the unique
    scores and their non-decreasing fitted means."""
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    xs = s[starts]
    sums = np.add.reduceat(y, starts)
    weights = np.diff(np.r_[starts, len(s)]).astype(np.float64)
    # A stack of blocks (sum, weight, first index); merged while a block's mean is below
    # the one before it.
    block_sum: list[float] = []
    block_weight: list[float] = []
    block_start: list[int] = []
    for i in range(len(xs)):
        total, weight, first = float(sums[i]), float(weights[i]), i
        while block_sum and block_sum[-1] * weight >= total * block_weight[-1]:
            total += block_sum.pop()
            weight += block_weight.pop()
            first = block_start.pop()
        block_sum.append(total)
        block_weight.append(weight)
        block_start.append(first)
    fitted = np.empty(len(xs))
    bounds = [*block_start, len(xs)]
    for b in range(len(block_start)):
        fitted[bounds[b] : bounds[b + 1]] = block_sum[b] / block_weight[b]
    return xs, fitted


def _logit(s: Array) -> Array:
    clipped = np.clip(s, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(clipped) - np.log1p(-clipped))


def _platt(s: Array, y: Array) -> Array:
    """``[a, b]`` of ``P(y = 1) = sigmoid(a · logit(s) + b)`` by Newton's method on the
    log-likelihood, each step halved until it improves the fit (a tiny ridge keeps
    separable data finite)."""
    design = np.column_stack([_logit(s), np.ones(len(s))])
    ridge = 1e-6

    def objective(w: Array) -> float:
        z = design @ w
        # log(1 + e^z) - y z, computed without overflow; plus the ridge.
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * (w @ w))

    w = np.array([1.0, 0.0])
    current = objective(w)
    for _ in range(100):
        mu = 0.5 * (1.0 + np.tanh(0.5 * (design @ w)))  # the sigmoid, without overflow
        gradient = design.T @ (mu - y) + ridge * w
        hessian = (design * (mu * (1 - mu))[:, None]).T @ design + ridge * np.eye(2)
        delta = np.linalg.solve(hessian, gradient)
        step = 1.0
        while step > 1e-8:
            candidate = w - step * delta
            value = objective(candidate)
            if value <= current:
                break
            step /= 2
        else:
            break
        w, improvement, current = candidate, current - value, value
        if improvement < 1e-12 * max(1.0, abs(current)):
            break
    return w
