"""Model quality over time: realised metrics from labels, estimated ones before labels.

:func:`quality_over_time` reads a deployment's logged predictions (the ``predictions``
table) and the labels sent for them (``feedback``, :mod:`.feedback`), joins them, and per
time bucket returns a :class:`WindowQuality`: how many prediction rows, how many are
labelled, the **realised** metrics over the labelled ones, the **estimated** metrics
(:mod:`.estimation`, CBPE) over all of them, and the label delay.

Metrics (numpy here; scikit-learn's are the tests' oracle):

- classification: ``accuracy``, ``precision``, ``recall``, ``f1`` (binary: of the positive
  class; multiclass: macro averages over the classes present in the window's labels or
  predictions, as scikit-learn's ``average="macro"``), ``roc_auc`` (multiclass: one-vs-rest,
  macro over classes present in the labels; left out when the labels hold one class),
  ``log_loss`` (natural log, probabilities clipped to [1e-15, 1 - 1e-15]) and ``brier``
  (binary: mean (p - y)²; multiclass: mean over rows of Σ_k (p_k - y_k)²), the last three
  only when the record has scores;
- regression: ``mae``, ``rmse`` and ``mape`` (mean |y - ŷ| / max(|y|, ε), as scikit-learn);
- label delay: p50, p90 and p99 of (when the label was received - when the request arrived),
  in seconds.

**Reading a record's outputs** (:class:`OutputReading`; a deployment's
``quality={...}`` declaration overrides each part): the predicted class or value is the
output ``predict`` (scikit-learn, LightGBM and XGBoost flavors all answer it); the scores are
the first output present of ``predict_proba``, ``probabilities``, ``probability``,
``score``. A score that is a list per row is one probability per class, in the order of
the sorted class labels (scikit-learn's ``classes_``; ``0, 1, ...`` when the labels are those
integers); a single number per row is the positive class's probability. Binary: the
positive class is the larger of the two (``1``, ``True``) unless ``positive`` says which.
Without a ``predict`` output, the class is the argmax of the scores (a single score: at
least ``threshold``, 0.5). The task is a classification when the record has scores or its
labels are strings or booleans, else a regression when they are numbers; ``task`` says.

>>> OutputReading.from_mapping({"score": "probability", "positive": "fraud"}, "deployment 'x'").score
'probability'
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from sqlalchemy import select

from stalwart.durations import NS, Duration, parse_ns
from stalwart.errors import ConfigError
from stalwart.monitoring.estimation import CBPE, Calibration
from stalwart.monitoring.feedback import Label, LoggedPrediction, Matcher, decode_logged
from stalwart.monitoring.prediction_reads import TimeSpec, parse_time
from stalwart.storage import Database
from stalwart.storage.tables import feedback, predictions

__all__ = [
    "DELAY_QUANTILES",
    "OutputReading",
    "WindowQuality",
    "classification_metrics",
    "classified_rows",
    "quality_over_time",
    "regression_metrics",
]

Array = np.ndarray[Any, Any]
Task = Literal["auto", "classification", "regression"]

DELAY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
SCORE_OUTPUTS = ("predict_proba", "probabilities", "probability", "score")
MAX_RECORDS = 1_000_000  # predictions read by one call, at most: narrow the range past it
MAX_BUCKETS = 10_000
MIN_REFERENCE = 50  # labelled rows needed before anything is estimated
_PAGE = 5_000
_LOG_LOSS_EPS = 1e-15


@dataclass(frozen=True)
class OutputReading:
    """How to read a prediction's class (or value) and scores from a record's outputs,
    and the labels' task (see the module docstring for the defaults)."""

    task: Task = "auto"
    predicted: str = "predict"
    score: str | None = None
    classes: tuple[Label, ...] | None = None
    positive: Label | None = None
    threshold: float = 0.5

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str) -> OutputReading:
        """A deployment's ``quality`` declaration (``{"score": "probability", "positive":
        "fraud", "classes": [...], "task": "classification", "predicted": "label",
        "threshold": 0.3}``); ConfigError naming ``where`` and the field on a mistake."""
        if not mapping:
            return cls()
        known = {"task", "predicted", "score", "classes", "positive", "threshold"}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"{where} quality: unknown field {unknown[0]!r}; it takes {', '.join(sorted(known))}")
        task = mapping.get("task", "auto")
        if task not in ("auto", "classification", "regression"):
            raise ConfigError(f"{where} quality.task: {task!r}; use classification, regression or auto")
        for name in ("predicted", "score"):
            value = mapping.get(name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where} quality.{name}: the name of a model output")
        classes = mapping.get("classes")
        if classes is not None and (not isinstance(classes, Sequence) or isinstance(classes, str) or len(classes) < 2):
            raise ConfigError(f"{where} quality.classes: the class labels in the order of the score columns (two or more)")
        threshold = mapping.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ConfigError(f"{where} quality.threshold: a probability from 0 to 1")
        return cls(
            task=task,
            predicted=mapping.get("predicted") or "predict",
            score=mapping.get("score"),
            classes=tuple(classes) if classes is not None else None,
            positive=mapping.get("positive"),
            threshold=float(threshold),
        )


@dataclass(frozen=True)
class WindowQuality:
    """One time bucket of a deployment's quality."""

    start_ns: int  # the bucket's start, ns since the epoch (UTC)
    predictions: int  # prediction rows answered in the bucket
    labelled: int  # of them, with a label
    realised: dict[str, float] = field(default_factory=dict)
    estimated: dict[str, float] = field(default_factory=dict)
    label_delay_seconds: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``bucket`` as ISO 8601 UTC, metrics by name, delay quantiles or null."""
        start = dt.datetime.fromtimestamp(self.start_ns // NS, tz=dt.UTC)
        return {
            "bucket": start.isoformat().replace("+00:00", "Z"),
            "predictions": self.predictions,
            "labelled": self.labelled,
            "realised": dict(self.realised),
            "estimated": dict(self.estimated),
            "label_delay_seconds": dict(self.label_delay_seconds) if self.label_delay_seconds is not None else None,
        }


def quality_over_time(
    database: Database,
    deployment: str,
    *,
    variant: str | None = None,
    since: TimeSpec,
    until: TimeSpec | None = None,
    bucket: Duration = "1h",
    reading: OutputReading | None = None,
    estimator: CBPE | None = None,
    calibration: Calibration = "isotonic",
    match_seconds: float = 300.0,
    max_records: int = MAX_RECORDS,
    now_ns: int | None = None,
    align: bool = True,
) -> list[WindowQuality]:
    """Quality of ``deployment`` (one ``variant``, or all) per ``bucket`` from ``since``
    (inclusive) to ``until`` (exclusive, default now), every bucket listed, empty ones too.

    Estimated metrics come from ``estimator`` when given (a :class:`~.estimation.CBPE`
    fitted on a labelled reference, e.g. the validation split); otherwise one is fitted
    on every labelled row of the range (at least 50, with two classes or more), so
    windows still waiting for labels are estimated from those already labelled. Entity
    labels not yet matched are matched here (``match_seconds``, as when stored). Buckets
    start at multiples of ``bucket`` since the epoch (``align=False``: at ``since``, so a
    bucket as wide as the range is the whole range, as an alert's window wants).

    ConfigError when the range holds more than ``max_records`` predictions or more than
    10 000 buckets (narrow the range or widen the bucket).
    """
    now = time.time_ns() if now_ns is None else now_ns
    start = parse_time(since, "since", now_ns=now)
    if start is None:
        raise ConfigError("since: give the start of the range (a duration ago, an ISO time, a datetime or ns)")
    end = parse_time(until, "until", now_ns=now) if until is not None else now
    end = now if end is None else end
    width = parse_ns(bucket, "bucket", positive=True)
    first = start - start % width if align else start
    count = -(-(end - first) // width) if end > first else 0
    if count > MAX_BUCKETS:
        raise ConfigError(f"bucket: {count} buckets from since to until, over {MAX_BUCKETS}; widen the bucket or narrow the range")
    reading = reading or OutputReading()
    records = _records(database, deployment, variant, start, end, max_records)
    labels = _labels(database, deployment, variant, start, end, records, round(match_seconds * NS))
    rows = _Rows.build(records, labels, reading, first, width)
    if estimator is None and rows.scores is not None:
        estimator = _reference_estimator(rows, calibration)
    windows = []
    for index in range(count):
        windows.append(rows.window(index, first + index * width, estimator))
    return windows


def classified_rows(
    records: Sequence[LoggedPrediction], labels: Mapping[tuple[str, int], Label], reading: OutputReading
) -> tuple[Array, Array] | None:
    """The labelled prediction rows of ``records``, read as :func:`quality_over_time` reads
    them (the predicted class from ``reading.predicted``, else the scores' argmax or
    threshold; classes matched to labels as in the module docstring): for each, the index
    of its record in ``records`` and whether its predicted class is its label.

    ``labels`` maps ``(request id, row)`` to the row's label. None when the rows are a
    regression's (their labels are numbers and there are no scores): a regression has no
    "correct". Rows whose class cannot be read are left out, as from realised metrics.
    """
    rows = _Rows.build(list(records), {key: _Label(value, 0) for key, value in labels.items()}, reading, 0, 1)
    if rows.task != "classification":
        return None
    kept = rows.labelled
    return rows.record[kept], rows.predicted[kept] == rows.label[kept]


def classification_metrics(labels: Array, predicted: Array, scores: Array | None, n_classes: int) -> dict[str, float]:
    """Realised metrics from class indices ``labels`` and ``predicted`` and, when given,
    ``scores`` (``(n,)`` positive-class probabilities for two classes, else ``(n, k)``)."""
    y = np.asarray(labels, dtype=np.int64)
    yhat = np.asarray(predicted, dtype=np.int64)
    if y.size == 0:
        return {}
    out: dict[str, float] = {"accuracy": float(np.mean(y == yhat))}
    if n_classes == 2:
        tp = float(np.sum((yhat == 1) & (y == 1)))
        fp = float(np.sum((yhat == 1) & (y == 0)))
        fn = float(np.sum((yhat == 0) & (y == 1)))
        out |= {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}
    else:
        present = np.union1d(y, yhat)
        per = []
        for k in present:
            tp = float(np.sum((yhat == k) & (y == k)))
            fp = float(np.sum((yhat == k) & (y != k)))
            fn = float(np.sum((yhat != k) & (y == k)))
            per.append((_ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)))
        out |= {name: float(np.mean([p[i] for p in per])) for i, name in enumerate(("precision", "recall", "f1"))}
    if scores is None:
        return out
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        auc = _roc_auc(y == 1, s)
        if auc is not None:
            out["roc_auc"] = auc
        p = np.clip(s, _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
        out["log_loss"] = float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))
        out["brier"] = float(np.mean((s - (y == 1)) ** 2))
        return out
    aucs = [a for k in np.unique(y) if (a := _roc_auc(y == k, s[:, k])) is not None]
    if aucs:
        out["roc_auc"] = float(np.mean(aucs))
    # As scikit-learn's log_loss: each row's probabilities renormalised to sum to 1.
    normalised = s / np.maximum(s.sum(axis=1, keepdims=True), _LOG_LOSS_EPS)
    chosen = np.clip(normalised[np.arange(len(y)), y], _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    out["log_loss"] = float(-np.mean(np.log(chosen)))
    onehot = np.eye(s.shape[1])[y]
    out["brier"] = float(np.mean(np.sum((s - onehot) ** 2, axis=1)))
    return out


def regression_metrics(labels: Array, predicted: Array) -> dict[str, float]:
    """MAE, RMSE and MAPE of ``predicted`` against ``labels``."""
    y = np.asarray(labels, dtype=np.float64)
    yhat = np.asarray(predicted, dtype=np.float64)
    if y.size == 0:
        return {}
    error = y - yhat
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(np.mean(np.abs(error) / np.maximum(np.abs(y), np.finfo(np.float64).eps))),
    }


# -- reading ----------------------------------------------------------------------------


def _records(database: Database, deployment: str, variant: str | None, start: int, end: int, limit: int) -> list[LoggedPrediction]:
    """Answered predictions of the range, oldest first, read a page at a time."""
    found: list[LoggedPrediction] = []
    after: tuple[int, str] | None = None
    while True:
        statement = select(predictions.c.time_ns, predictions.c.request_id, predictions.c.record).where(
            predictions.c.deployment == deployment,
            predictions.c.time_ns >= start,
            predictions.c.time_ns < end,
            predictions.c.status < 400,
        )
        if variant is not None:
            statement = statement.where(predictions.c.variant == variant)
        if after is not None:
            statement = statement.where(
                (predictions.c.time_ns > after[0]) | ((predictions.c.time_ns == after[0]) & (predictions.c.request_id > after[1]))
            )
        statement = statement.order_by(predictions.c.time_ns, predictions.c.request_id).limit(_PAGE)
        with database.read() as conn:
            page = conn.execute(statement).all()
        found.extend(decode_logged(text) for _t, _r, text in page)
        if len(found) > limit:
            raise ConfigError(
                f"more than {limit} predictions of '{deployment}' in the range; narrow since/until "
                f"(or sample: the prediction log's sample setting)"
            )
        if len(page) < _PAGE:
            return found
        after = (int(page[-1][0]), str(page[-1][1]))


class _Label(NamedTuple):  # a tuple: built once per labelled row, several times cheaper than a frozen dataclass
    value: Label
    received_ns: int


def _labels(
    database: Database, deployment: str, variant: str | None, start: int, end: int, records: list[LoggedPrediction], match_ns: int
) -> dict[tuple[str, int], _Label]:
    """(request id, row) -> its latest label, for the range's predictions: labels matched
    by request id (a join in the database), then entity labels not matched yet."""
    joined = (
        select(feedback.c.request_id, feedback.c.row_index, feedback.c.label, feedback.c.received_at_ns)
        .join(predictions, predictions.c.request_id == feedback.c.request_id)
        .where(predictions.c.deployment == deployment, predictions.c.time_ns >= start, predictions.c.time_ns < end)
    )
    if variant is not None:
        joined = joined.where(predictions.c.variant == variant)
    pending = select(feedback.c.entity_key, feedback.c.event_time_ns, feedback.c.label, feedback.c.received_at_ns).where(
        feedback.c.deployment == deployment,
        feedback.c.request_id.is_(None),
        feedback.c.event_time_ns >= start - match_ns,
        feedback.c.event_time_ns < end + match_ns,
    )
    with database.read() as conn:
        direct = conn.execute(joined).all()
        unmatched = conn.execute(pending).all()
    labels: dict[tuple[str, int], _Label] = {}

    def keep(where: tuple[str, int], value: Label, received: int) -> None:
        known = labels.get(where)
        if known is None or received >= known.received_ns:
            labels[where] = _Label(value, received)

    for request_id, row, value, received in direct:
        keep((str(request_id), int(row or 0)), value, int(received))
    if unmatched:
        matcher = Matcher()
        for record in records:
            matcher.add(record)
        for key, event_ns, value, received in unmatched:
            hit = matcher.nearest(deployment, str(key), int(event_ns), match_ns)
            if hit is not None:
                keep(hit, value, int(received))
    return labels


class _Rows:
    """Every prediction row of the range as arrays: bucket, prediction time, predicted
    class index (or value), scores, label index (or value), label received time."""

    def __init__(self) -> None:
        self.bucket: Array = np.empty(0, np.int64)
        self.time_ns: Array = np.empty(0, np.int64)
        self.record: Array = np.empty(0, np.int64)  # each row's index in the records it was built from
        self.predicted: Array = np.empty(0)
        self.scores: Array | None = None
        self.labelled: Array = np.empty(0, bool)
        self.label: Array = np.empty(0)
        self.received_ns: Array = np.empty(0, np.int64)
        self.task: Task = "classification"
        self.n_classes = 0

    @classmethod
    def build(cls, records: list[LoggedPrediction], labels: dict[tuple[str, int], _Label], reading: OutputReading, first: int, width: int) -> _Rows:
        times: list[int] = []
        owners: list[int] = []
        predicted: list[Any] = []
        scores: list[Any] = []
        label_values: list[Any] = []
        received: list[int] = []
        score_name = reading.score
        for number, record in enumerate(records):
            outputs = record.outputs or {}
            if score_name is None:
                score_name = next((name for name in SCORE_OUTPUTS if isinstance(outputs.get(name), list)), None)
            pred_column = outputs.get(reading.predicted)
            score_column = outputs.get(score_name) if score_name is not None else None
            n = record.rows if record.rows is not None else _length(pred_column, score_column)
            for row in range(n):
                times.append(record.time_ns)
                owners.append(number)
                predicted.append(_at(pred_column, row))
                scores.append(_at(score_column, row))
                label = labels.get((record.request_id, row))
                label_values.append(None if label is None else label.value)
                received.append(0 if label is None else label.received_ns)
        rows = cls()
        rows.time_ns = np.asarray(times, dtype=np.int64)
        rows.record = np.asarray(owners, dtype=np.int64)
        rows.bucket = (rows.time_ns - first) // width
        rows.received_ns = np.asarray(received, dtype=np.int64)
        has_scores = any(s is not None for s in scores)
        task = reading.task
        if task == "auto":
            known = [v for v in label_values if v is not None]
            task = "classification" if has_scores or any(isinstance(v, str | bool) for v in known) else "regression"
        rows.task = task
        if task == "regression":
            rows.predicted = np.asarray([_number(v) for v in predicted], dtype=np.float64)
            rows.label = np.asarray([_number(v) for v in label_values], dtype=np.float64)
            rows.labelled = ~np.isnan(rows.label) & ~np.isnan(rows.predicted)
            return rows
        rows._classes(predicted, scores, label_values, reading)
        return rows

    def _classes(self, predicted: list[Any], scores: list[Any], labels: list[Any], reading: OutputReading) -> None:
        width = max((len(s) for s in scores if isinstance(s, list)), default=0)
        seen = {_class_key(v) for v in (*predicted, *labels) if v is not None and not isinstance(v, list | dict)}
        if reading.classes is not None:
            classes = [_class_key(c) for c in reading.classes]
        elif width and seen and all(c[0] == "n" and isinstance(c[1], int) and 0 <= c[1] < width for c in seen):
            classes = [("n", k) for k in range(width)]  # integer labels name the score columns
        elif width == 2 and seen and all(c[0] == "b" for c in seen):
            classes = [("b", False), ("b", True)]
        else:
            classes = sorted(seen)
        index = {c: i for i, c in enumerate(classes)}
        self.n_classes = max(len(classes), width, 2)
        positive = 1
        if self.n_classes == 2 and reading.positive is not None and _class_key(reading.positive) in index:
            positive = index[_class_key(reading.positive)]
        predicted_index = np.asarray([index.get(_class_key(v), -1) if v is not None else -1 for v in predicted], dtype=np.int64)
        label_index = np.asarray([index.get(_class_key(v), -1) if v is not None else -1 for v in labels], dtype=np.int64)
        if self.n_classes == 2 and positive == 0:
            # Binary metrics are of the positive class: make it index 1.
            predicted_index = np.where(predicted_index >= 0, 1 - predicted_index, predicted_index)
            label_index = np.where(label_index >= 0, 1 - label_index, label_index)
        score_matrix = self._score_matrix(scores, width, positive)
        if score_matrix is not None and width and width != len(classes):
            score_matrix = None  # columns that cannot be named: realised metrics without scores
        if score_matrix is not None:
            # No predicted class logged: the scores' argmax (binary: at least the threshold).
            predicted_index = np.where(predicted_index < 0, _argmax_or_threshold(score_matrix, reading.threshold), predicted_index)
        self.predicted = predicted_index
        self.label = label_index
        self.scores = score_matrix
        self.labelled = (label_index >= 0) & (predicted_index >= 0)
        if score_matrix is not None:
            self.labelled &= ~np.isnan(score_matrix if score_matrix.ndim == 1 else score_matrix[:, 0])

    def _score_matrix(self, scores: list[Any], width: int, positive: int) -> Array | None:
        if not any(s is not None for s in scores):
            return None
        if width:
            matrix = np.full((len(scores), width), np.nan)
            for i, s in enumerate(scores):
                if isinstance(s, list) and len(s) == width and all(isinstance(v, int | float) and not isinstance(v, bool) for v in s):
                    matrix[i] = s
            if width == 2:
                return matrix[:, positive]
            return matrix
        # One number per row: the positive class's probability, whichever class that is.
        return np.asarray([_number(s) for s in scores], dtype=np.float64)

    def window(self, index: int, start_ns: int, estimator: CBPE | None) -> WindowQuality:
        mask = self.bucket == index
        n = int(mask.sum())
        labelled = mask & self.labelled
        n_labelled = int(labelled.sum())
        if self.task == "regression":
            realised = regression_metrics(self.label[labelled], self.predicted[labelled])
            estimated: dict[str, float] = {}
        else:
            scores = self.scores[labelled] if self.scores is not None else None
            realised = classification_metrics(self.label[labelled], self.predicted[labelled], scores, self.n_classes)
            estimated = self._estimate(mask, estimator)
        delay = None
        if n_labelled:
            seconds = (self.received_ns[labelled] - self.time_ns[labelled]) / NS
            delay = {name: float(np.quantile(seconds, q)) for name, q in DELAY_QUANTILES.items()}
        return WindowQuality(start_ns, n, n_labelled, realised, estimated, delay)

    def _estimate(self, mask: Array, estimator: CBPE | None) -> dict[str, float]:
        if estimator is None or self.scores is None:
            return {}
        usable = mask & (self.predicted >= 0)
        scores = self.scores[usable]
        usable_rows = ~np.isnan(scores if scores.ndim == 1 else scores[:, 0])
        return estimator.estimate(scores[usable_rows], self.predicted[usable][usable_rows])


def _reference_estimator(rows: _Rows, calibration: Calibration) -> CBPE | None:
    if rows.scores is None or rows.task != "classification":
        return None
    labelled = rows.labelled
    if int(labelled.sum()) < MIN_REFERENCE or len(np.unique(rows.label[labelled])) < 2:
        return None
    return CBPE.fit(rows.scores[labelled], rows.label[labelled], calibration=calibration)


def _argmax_or_threshold(scores: Array, threshold: float) -> Array:
    if scores.ndim == 1:
        return np.where(np.isnan(scores), -1, (scores >= threshold).astype(np.int64))
    filled = np.where(np.isnan(scores), -np.inf, scores)
    return np.where(np.isnan(scores[:, 0]), -1, np.argmax(filled, axis=1))


def _roc_auc(positive: Array, scores: Array) -> float | None:
    """Mann-Whitney ROC AUC (ties count one half); None with one class only."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    for a, b in zip(starts, ends, strict=True):
        ranks[a:b] = (a + b + 1) / 2.0  # the mean of ranks a+1 .. b
    ordered_pos = pos[order]
    return float((ranks[ordered_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0  # scikit-learn's zero_division=0


def _at(column: Any, row: int) -> Any:
    if isinstance(column, list) and row < len(column):
        return column[row]
    return None  # absent, or summarised (a large tensor is logged as a summary)


def _length(*columns: Any) -> int:
    return max((len(c) for c in columns if isinstance(c, list)), default=0)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def _class_key(value: Any) -> tuple[str, Any]:
    """A label or predicted class as a sortable key: booleans, numbers (1 and 1.0 alike)
    and strings are told apart, so mixed labels sort without comparing across types."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", int(value) if float(value).is_integer() else value)
    return ("s", str(value))
