"""Log analytics: profiles, drift and accuracy recomputed from the prediction log's Parquet
segments and the labels, on DuckDB and Spark alike."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.monitoring.profiles import Profile
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record
from stalwart.monitoring.sinks.parquet import ParquetSink
from stalwart.offline.backfill import backfill
from stalwart.offline.engine import OfflineEngine
from stalwart.registry import Registry
from stalwart.storage import Database
from stalwart.storage import tables as t

START = datetime(2026, 3, 1, 10, tzinfo=UTC)
RNG_SEED = 4


def _hour(rng: np.random.Generator, hour: int, shift: float, n_requests: int = 60, rows: int = 3) -> list[PredictionRecord]:
    records = []
    for i in range(n_requests):
        amounts = rng.normal(50 + shift, 5, size=rows)
        scores = 1 / (1 + np.exp(-(amounts - 50 - shift) / 5))
        records.append(PredictionRecord(
            request_id=f"h{hour}-{i}", time_ns=int((START + timedelta(hours=hour, seconds=i * 30)).timestamp()) * 1_000_000_000,
            entrypoint="/v1", status=200, latency_ms=1.0, deployment="fraud", variant="primary", model="fraud", version=1,
            rows=rows, features={"amount": amounts.tolist(), "country": ["no", "se", None][:rows]},
            outputs={"predict": (scores > 0.5).astype(int).tolist(), "predict_proba": np.column_stack([1 - scores, scores]).tolist()},
        ))
    records.append(PredictionRecord(  # a failed request: not a model's answer, not profiled
        request_id=f"h{hour}-failed", time_ns=records[-1].time_ns + 1, entrypoint="/v1", status=503, latency_ms=1.0,
        deployment="fraud", variant="primary", model="fraud", version=1, rows=1, features={"amount": [1e9]},
    ))
    return records


@pytest.fixture
def logged(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """Model 'fraud' registered with a training profile of amounts around 50; two hours
    of its log as Parquet segments (the second hour drifted by +30), labels for half the
    first hour's rows."""
    rng = np.random.default_rng(RNG_SEED)
    training = pd.DataFrame({"amount": rng.normal(50, 5, 2000), "country": rng.choice(["no", "se"], 2000)})
    model = LogisticRegression().fit(training[["amount"]], (training["amount"] > 50).astype(int))
    registry = Registry.open(settings)
    try:
        registry.register("fraud", model, sample=training[["amount"]], training_profile=Profile.of(training[["amount"]]))
    finally:
        registry.db.dispose()
    records = _hour(rng, 0, 0.0) + _hour(rng, 1, 30.0)
    sink = ParquetSink(tmp_path / "log")
    chain = Chain("replica-a")
    linked = [chain.link(r) for r in records]
    sink.write(linked, [encode_record(r) for r in linked])
    sink.flush()
    labelled = [r for r in records if r.request_id.startswith("h0-") and r.status == 200][::2]
    truth = {(r.request_id, j): int((r.features or {})["amount"][j] > 50) for r in labelled for j in range(r.rows or 0)}
    db = Database(settings.resolved_db_url())
    try:
        with db.write() as conn:
            conn.execute(t.feedback.insert(), [
                {"key": f"{rid}/{j}", "deployment": "fraud", "request_id": rid, "row_index": j, "label": label, "received_at_ns": 1}
                for (rid, j), label in truth.items()
            ])
    finally:
        db.dispose()
    predicted = {(r.request_id, j): (r.outputs or {})["predict"][j] for r in labelled for j in range(r.rows or 0)}
    return {"dir": tmp_path / "log", "records": records, "truth": truth, "correct": sum(predicted[k] == v for k, v in truth.items())}


def _check(report: Any, logged: dict[str, Any], hour: int) -> None:
    answered = [r for r in logged["records"] if r.status == 200 and r.request_id.startswith(f"h{hour}-")]
    assert report.records == len(answered)
    [window] = report.versions
    assert (window.variant, window.model, window.version) == ("primary", "fraud", 1)
    amounts = np.concatenate([(r.features or {})["amount"] for r in answered])
    profile = window.profile["feature:amount"]
    assert (profile.count, profile.min, profile.max) == (len(amounts), float(amounts.min()), float(amounts.max()))
    assert window.profile["feature:country"].frequencies() == {"no": len(answered), "se": len(answered)}
    assert window.profile["output:predict_proba[1]"].count == len(amounts)
    assert window.drift is not None
    drifted = {c.column: c.drifted for c in window.drift.columns}
    assert drifted["feature:amount"] is (hour == 1)
    if hour == 0:
        assert window.labelled == len(logged["truth"])
        assert window.correct == logged["correct"]
    else:
        assert window.labelled == 0
        assert window.accuracy is None


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def test_profiles_drift_and_accuracy_from_the_log(request: pytest.FixtureRequest, settings: Settings, logged: dict[str, Any], engine: str) -> None:
    """Each hour read back from the segments: exact counts and extremes per column (failed
    requests left out), drift against the training profile only where the traffic moved,
    and the realised accuracy of the labelled rows."""
    chosen: str | OfflineEngine = engine
    if engine == "spark":
        from stalwart.offline.spark_engine import SparkEngine

        chosen = SparkEngine(request.getfixturevalue("spark_session"))
    for hour in (0, 1):
        since = START + timedelta(hours=hour)
        report = backfill(settings, "fraud", since, since + timedelta(hours=1), engine=chosen, log_dir=logged["dir"])
        _check(report, logged, hour)
    empty = backfill(settings, "fraud", START - timedelta(days=2), START - timedelta(days=1), engine=chosen, log_dir=logged["dir"])
    assert empty.records == 0
    assert empty.versions == []


def test_the_backfill_command(settings: Settings, logged: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`stalwart monitor backfill` prints the period's document (here as JSON)."""
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(settings.home))
    monkeypatch.setenv("STALWART_PREDICTION_LOG_DIR", str(logged["dir"]))
    result = CliRunner().invoke(app, [
        "monitor", "backfill", "fraud", "--since", START.isoformat(), "--until", (START + timedelta(hours=2)).isoformat(),
        "--engine", "duckdb", "--json",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    document = json.loads(result.stdout)
    assert document["records"] == 120
    assert len(document["hours"]) == 2
    assert document["versions"][0]["drift"]["drifted"] is True
