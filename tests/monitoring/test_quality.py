"""Quality over time from the prediction log and its labels, on SQLite and PostgreSQL:
realised metrics equal scikit-learn's on the labelled rows of each window, labels join by
request id and by entity and time, the latest label wins, and windows without labels are
estimated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sqlalchemy import func, select

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.feedback import FeedbackItem, store_feedback
from stalwart.monitoring.quality import OutputReading, WindowQuality, quality_over_time
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.storage import Database
from stalwart.storage.tables import feedback

HOUR = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % HOUR  # an hour's start
NOW = T0 + 48 * HOUR


@pytest.fixture
def db(any_db_settings: Settings) -> Iterator[Database]:
    database = Database(any_db_settings.resolved_db_url())
    yield database
    database.dispose()


def _log(db: Database, records: list[PredictionRecord]) -> None:
    SqlSink(db).write(records, None)


def _binary_records(rng: np.random.Generator, n: int, start_ns: int, prefix: str) -> tuple[list[PredictionRecord], Any, Any]:
    """``n`` one-row requests spread over an hour from ``start_ns``: calibrated
    probabilities, the class at 0.5, and labels drawn from the probabilities."""
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(int)
    records = [
        PredictionRecord(
            request_id=f"{prefix}-{i}", time_ns=start_ns + i * (HOUR // n), entrypoint="/v1", status=200, latency_ms=1.0,
            deployment="fraud", variant="primary", model="fraud", version=1, rows=1,
            entities=[{"card_id": i}], outputs={"predict": [int(p[i] >= 0.5)], "predict_proba": [[1 - float(p[i]), float(p[i])]]},
        )
        for i in range(n)
    ]
    return records, p, y


def test_realised_metrics_equal_scikit_learn_per_window(db: Database) -> None:
    """Two hours of binary predictions, two thirds labelled by request id: per window the
    counts, every realised metric (to 1e-9) and the label delay quantiles are those of the
    labelled rows; an empty third hour is listed, with nothing in it."""
    rng = np.random.default_rng(7)
    first, p1, y1 = _binary_records(rng, 300, T0, "a")
    second, p2, y2 = _binary_records(rng, 300, T0 + HOUR, "b")
    _log(db, first + second)
    delays = rng.uniform(60, 7_200, 600)
    for i, record in enumerate(first + second):
        if i % 3:
            label = int((y1 if i < 300 else y2)[i % 300])
            received = record.time_ns + int(delays[i] * 1e9)
            store_feedback(db, [FeedbackItem(label=label, request_id=record.request_id)], now_ns=received)

    windows = quality_over_time(db, "fraud", since=T0, until=T0 + 3 * HOUR, now_ns=NOW)

    assert [w.start_ns for w in windows] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert windows[2] == WindowQuality(T0 + 2 * HOUR, 0, 0)
    for w, (p, y, offset) in zip(windows[:2], [(p1, y1, 0), (p2, y2, 300)], strict=True):
        keep = np.arange(300) % 3 != 0 if offset == 0 else (np.arange(300) + 300) % 3 != 0
        yy, pp = y[keep], p[keep]
        yhat = (pp >= 0.5).astype(int)
        assert (w.predictions, w.labelled) == (300, int(keep.sum()))
        expected = {
            "accuracy": accuracy_score(yy, yhat),
            "precision": precision_score(yy, yhat, zero_division=0),
            "recall": recall_score(yy, yhat, zero_division=0),
            "f1": f1_score(yy, yhat, zero_division=0),
            "roc_auc": roc_auc_score(yy, pp),
            "log_loss": log_loss(yy, np.column_stack([1 - pp, pp])),
            "brier": brier_score_loss(yy, pp),
        }
        assert w.realised.keys() == expected.keys()
        for metric, value in expected.items():
            assert w.realised[metric] == pytest.approx(value, abs=1e-9), metric
        delay = np.arange(600)[offset : offset + 300][keep]
        assert w.label_delay_seconds is not None
        assert w.label_delay_seconds["p50"] == pytest.approx(np.quantile(delays[delay], 0.5), abs=1e-6)
        assert w.label_delay_seconds["p99"] == pytest.approx(np.quantile(delays[delay], 0.99), abs=1e-6)


def test_windows_waiting_for_labels_are_estimated(db: Database) -> None:
    """The first hour is labelled, the second not yet: the second window has no realised
    metrics, and its estimated accuracy (calibrated on the first) is within 0.03 of the
    accuracy its labels, once known, show."""
    rng = np.random.default_rng(8)
    first, _, y1 = _binary_records(rng, 2_000, T0, "a")
    second, p2, y2 = _binary_records(rng, 2_000, T0 + HOUR, "b")
    _log(db, first + second)
    items = [FeedbackItem(label=int(y1[i]), request_id=r.request_id) for i, r in enumerate(first)]
    store_feedback(db, items, now_ns=NOW)

    windows = quality_over_time(db, "fraud", since=T0, until=T0 + 2 * HOUR, now_ns=NOW)

    assert (windows[1].labelled, windows[1].realised, windows[1].label_delay_seconds) == (0, {}, None)
    truth = accuracy_score(y2, (p2 >= 0.5).astype(int))
    assert windows[1].estimated["accuracy"] == pytest.approx(truth, abs=0.03)
    assert windows[0].estimated["accuracy"] == pytest.approx(windows[0].realised["accuracy"], abs=0.03)
    assert windows[1].to_dict()["realised"] == {}
    assert set(windows[1].to_dict()["estimated"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}


def test_labels_join_by_entity_and_time_even_before_the_prediction_is_logged(db: Database) -> None:
    """An entity label stored before its prediction reached the log counts as unmatched,
    then joins on read; of two predictions for the same card it joins the one nearest its
    time, and none beyond the match bound."""
    at = T0 + 10 * 10**9
    early = store_feedback(db, [FeedbackItem(label=1, deployment="fraud", entity={"card_id": 7}, time_ns=at + 2 * 10**9)], now_ns=NOW)
    assert (early.accepted, early.matched) == (1, 0)
    near = PredictionRecord(
        request_id="near", time_ns=at, entrypoint="/v1", status=200, latency_ms=1.0, deployment="fraud", rows=2,
        entities=[{"card_id": 8}, {"card_id": 7}], outputs={"predict": [0, 0], "predict_proba": [[0.9, 0.1], [0.8, 0.2]]},
    )
    far = PredictionRecord(
        request_id="far", time_ns=at + 60 * 10**9, entrypoint="/v1", status=200, latency_ms=1.0, deployment="fraud", rows=1,
        entities=[{"card_id": 7}], outputs={"predict": [1], "predict_proba": [[0.3, 0.7]]},
    )
    _log(db, [near, far])
    window = quality_over_time(db, "fraud", since=T0, until=T0 + HOUR, now_ns=NOW)[0]
    assert (window.predictions, window.labelled) == (3, 1)
    assert window.realised["accuracy"] == 0.0  # card 7's row of "near" said 0; the label is 1

    # Stored now, the same kind of label matches at once (row 1 of "near" for card 7).
    later = store_feedback(db, [FeedbackItem(label=0, deployment="fraud", entity={"card_id": 8}, time_ns=at)], now_ns=NOW)
    assert later.matched == 1
    # Beyond the bound (300 s by default): stored, never joined.
    store_feedback(db, [FeedbackItem(label=1, deployment="fraud", entity={"card_id": 7}, time_ns=at + 900 * 10**9)], now_ns=NOW)
    window = quality_over_time(db, "fraud", since=T0, until=T0 + HOUR, now_ns=NOW)[0]
    assert window.labelled == 2
    assert window.realised["accuracy"] == 0.5


def test_the_latest_label_of_a_prediction_wins(db: Database) -> None:
    """A request labelled twice (across batches and within one) keeps one row, the label
    sent last."""
    _log(db, [PredictionRecord(
        request_id="r1", time_ns=T0, entrypoint="/v1", status=200, latency_ms=1.0, deployment="fraud", rows=1,
        outputs={"predict": [1], "predict_proba": [[0.2, 0.8]]},
    )])
    store_feedback(db, [FeedbackItem(label=0, request_id="r1")], now_ns=NOW)
    result = store_feedback(db, [FeedbackItem(label=0, request_id="r1"), FeedbackItem(label=1, request_id="r1")], now_ns=NOW + 1)
    assert (result.accepted, result.matched) == (2, 2)
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 1
        assert conn.execute(select(feedback.c.label)).scalar_one() == 1
    window = quality_over_time(db, "fraud", since=T0, until=T0 + HOUR, now_ns=NOW)[0]
    assert window.realised["accuracy"] == 1.0


def test_regression_metrics_equal_scikit_learn(db: Database) -> None:
    """Numeric predictions and labels: MAE, RMSE and MAPE as scikit-learn computes them."""
    rng = np.random.default_rng(9)
    truth = rng.uniform(10, 100, 200)
    predicted = truth + rng.normal(0, 5, 200)
    _log(db, [
        PredictionRecord(
            request_id=f"r{i}", time_ns=T0 + i * 10**9, entrypoint="/v1", status=200, latency_ms=1.0,
            deployment="price", rows=1, outputs={"predict": [float(predicted[i])]},
        )
        for i in range(200)
    ])
    store_feedback(db, [FeedbackItem(label=float(truth[i]), request_id=f"r{i}") for i in range(200)], now_ns=NOW)
    window = quality_over_time(db, "price", since=T0, until=T0 + HOUR, now_ns=NOW)[0]
    assert window.realised == pytest.approx({
        "mae": mean_absolute_error(truth, predicted),
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mape": mean_absolute_percentage_error(truth, predicted),
    }, abs=1e-9)
    assert window.estimated == {}


def test_multiclass_macro_metrics_equal_scikit_learn(db: Database) -> None:
    """Three string classes, probabilities in the sorted class order: accuracy, macro
    precision/recall/F1, one-vs-rest macro ROC AUC, log loss and the multiclass Brier score."""
    rng = np.random.default_rng(10)
    classes = ["bronze", "gold", "silver"]
    logits = rng.normal(0, 1.5, (400, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    yhat = p.argmax(axis=1)
    _log(db, [
        PredictionRecord(
            request_id=f"r{i}", time_ns=T0 + i * 10**9, entrypoint="/v2", status=200, latency_ms=1.0, deployment="tier",
            rows=1, outputs={"predict": [classes[yhat[i]]], "predict_proba": [p[i].tolist()]},
        )
        for i in range(400)
    ])
    store_feedback(db, [FeedbackItem(label=classes[y[i]], request_id=f"r{i}") for i in range(400)], now_ns=NOW)
    window = quality_over_time(db, "tier", since=T0, until=T0 + HOUR, now_ns=NOW)[0]
    expected = {
        "accuracy": accuracy_score(y, yhat),
        "precision": precision_score(y, yhat, average="macro", zero_division=0),
        "recall": recall_score(y, yhat, average="macro", zero_division=0),
        "f1": f1_score(y, yhat, average="macro", zero_division=0),
        "roc_auc": roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "log_loss": log_loss(y, p),
        "brier": float(np.mean(np.sum((p - np.eye(3)[y]) ** 2, axis=1))),
    }
    for metric, value in expected.items():
        assert window.realised[metric] == pytest.approx(value, abs=1e-9), metric


def test_a_declared_reading_names_the_score_and_the_positive_class(db: Database) -> None:
    """A model answering a single probability under another name, with string labels:
    the deployment's quality declaration says which output and which class is positive."""
    rng = np.random.default_rng(11)
    p = rng.uniform(size=300)
    y = np.where(rng.uniform(size=300) < p, "fraud", "ok")
    _log(db, [
        PredictionRecord(
            request_id=f"r{i}", time_ns=T0 + i * 10**9, entrypoint="/v1", status=200, latency_ms=1.0, deployment="fraud",
            rows=1, outputs={"label": ["fraud" if p[i] >= 0.5 else "ok"], "fraud_probability": [float(p[i])]},
        )
        for i in range(300)
    ])
    store_feedback(db, [FeedbackItem(label=str(y[i]), request_id=f"r{i}") for i in range(300)], now_ns=NOW)
    reading = OutputReading.from_mapping({"predicted": "label", "score": "fraud_probability", "positive": "fraud"}, "deployment 'fraud'")
    window = quality_over_time(db, "fraud", since=T0, until=T0 + HOUR, now_ns=NOW, reading=reading)[0]
    positive = y == "fraud"
    assert window.realised["recall"] == pytest.approx(recall_score(positive, p >= 0.5), abs=1e-12)
    assert window.realised["roc_auc"] == pytest.approx(roc_auc_score(positive, p), abs=1e-12)
    with pytest.raises(ConfigError, match=r"deployment 'fraud' quality.threshold"):
        OutputReading.from_mapping({"threshold": 2}, "deployment 'fraud'")


def test_ranges_are_bounded(db: Database) -> None:
    """More buckets than the limit, or more predictions than asked for: a ConfigError
    saying how to narrow the range, before any metric is computed."""
    with pytest.raises(ConfigError, match="buckets"):
        quality_over_time(db, "fraud", since=0, until=NOW, bucket="1m", now_ns=NOW)
    rng = np.random.default_rng(12)
    _log(db, _binary_records(rng, 20, T0, "a")[0])
    with pytest.raises(ConfigError, match="narrow"):
        quality_over_time(db, "fraud", since=T0, until=T0 + HOUR, now_ns=NOW, max_records=10)


def test_a_mistaken_quality_declaration_fails_start_up_naming_it() -> None:
    """A deployment's ``quality`` declaration is checked when the server builds its
    policies: an unknown field is a ConfigError naming the deployment and the field."""
    from stalwart.project import Deployment
    from stalwart.serving.policies import DeploymentPolicy

    DeploymentPolicy.build(Deployment("fraud", model="fraud", quality={"score": "probability", "positive": 1}))
    with pytest.raises(ConfigError, match=r"deployment 'fraud' quality: unknown field 'scores'"):
        DeploymentPolicy.build(Deployment("fraud", model="fraud", quality={"scores": "probability"}))
