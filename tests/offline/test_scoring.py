"""Batch scoring: the registered model over a file of events, with the features, artifact
and validation serving uses; rejected rows reported in the output, never dropped."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.features import build_training_set
from stalwart.offline.scoring import score_events
from stalwart.project import Project, load_project
from stalwart.registry import Registry
from stalwart.validation.policy import PolicyOverrides
from tests.features.conftest import events_for, make_transactions

PROJECT = '''
from stalwart.project import Deployment, Entity, FeatureSet, FileSource, Latest, RequestSource, Window

card = Entity("card", keys=["card_id"])
txn = RequestSource("txn", fields={{"amount": "float"}})
tx = FileSource("tx", path={path!r}, entity=card, timestamp="ts")
activity = FeatureSet("activity", entity=card, source=tx, features=[
    Window("n_1d", agg="count", window="1d"),
    Window("mean_3d", agg="mean", column="amount", window="3d", default=0.0),
    Latest("last_amount", column="amount", default=0.0),
])
lenient = Deployment("lenient", model="fraud", validation={{"features": {{"amount": "impute"}}}})
'''


@pytest.fixture
def scored_project(tmp_path: Path, settings: Settings) -> tuple[Project, Any, pd.DataFrame]:
    """A project file over a Parquet source, and model 'fraud' registered from a training
    set of its features and the request's amount."""
    transactions = make_transactions(n_cards=12, per_card=30)
    source = tmp_path / "tx.parquet"
    transactions.to_parquet(source)
    project_file = tmp_path / "project.py"
    project_file.write_text(textwrap.dedent(PROJECT.format(path=str(source))))
    project = load_project(project_file)
    txn = project.sources["txn"]
    events = events_for(transactions, n=80, seed=11)
    training = build_training_set(events, [project.feature_sets["activity"], txn.amount], label="label")  # type: ignore[attr-defined]
    model = LogisticRegression().fit(training.X, training.y)
    registry = Registry.open(settings)
    try:
        registry.register("fraud", model, training_set=training)
    finally:
        registry.db.dispose()
    return project, model, events


def _with_bad_rows(events: pd.DataFrame) -> pd.DataFrame:
    bad = events.copy()
    bad["event_id"] = np.arange(len(bad))
    bad.loc[[3, 17], "amount"] = np.nan  # not finite: the schema's reject policy
    return bad


@pytest.mark.parametrize("engine", ["duckdb", "numpy"])
def test_scores_match_the_model_and_rejected_rows_are_reported(scored_project: tuple[Project, Any, pd.DataFrame], settings: Settings, tmp_path: Path, engine: str) -> None:
    """Every event has a row in the scores: those that pass validation the model's own
    probabilities (computed here from numpy-engine features), those that break a reject
    rule no output, status 'rejected' and the violation naming feature and rule."""
    project, model, events = scored_project
    bad = _with_bad_rows(events)
    events_path = tmp_path / "events.parquet"
    bad.to_parquet(events_path)
    strict = PolicyOverrides.parse({"features": {"amount": "reject"}}, source="test")
    summary = score_events(project, "fraud", events_path, tmp_path / "scores.parquet", engine=engine, carry=["event_id"], policies=strict, settings=settings)
    assert (summary.rows, summary.scored, summary.rejected, summary.failed) == (80, 78, 2, 0)
    assert summary.violations[("amount", "not_finite", "rejected")] == 2
    rows = sorted(pq.read_table(tmp_path / "scores.parquet").to_pylist(), key=lambda r: r["event_id"])
    assert [r["event_id"] for r in rows] == list(range(80))
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert [r["event_id"] for r in rejected] == [3, 17]
    assert all(r["predict_proba"] is None and r["predict"] is None for r in rejected)
    assert json.loads(rejected[0]["validation"]) == [{"feature": "amount", "rule": "not_finite", "action": "rejected", "value": "NaN"}]
    txn = project.sources["txn"]
    features = build_training_set(bad, [project.feature_sets["activity"], txn.amount]).frame  # type: ignore[attr-defined]
    expected = model.predict_proba(np.nan_to_num(features[["n_1d", "mean_3d", "last_amount", "amount"]].to_numpy()))  # NaN rows: the rejected ones, not compared
    for row in rows:
        if row["status"] == "scored":
            assert np.allclose(row["predict_proba"], expected[row["event_id"]], rtol=1e-9)
            assert row["validation"] is None
            assert row["error"] is None


def test_rows_the_model_refuses_are_reported_with_its_error(scored_project: tuple[Project, Any, pd.DataFrame], settings: Settings, tmp_path: Path) -> None:
    """With the learned schema's own policy (flag), NaN amounts reach the model, which
    refuses them: those rows alone are 'failed' with the model's error, their batch mates
    scored."""
    project, _, events = scored_project
    events_path = tmp_path / "events.parquet"
    _with_bad_rows(events).to_parquet(events_path)
    summary = score_events(project, "fraud", events_path, tmp_path / "scores.parquet", carry=["event_id"], settings=settings)
    assert (summary.scored, summary.rejected, summary.failed) == (78, 0, 2)
    assert summary.violations == {("amount", "not_finite", "flagged"): 2}
    rows = {r["event_id"]: r for r in pq.read_table(tmp_path / "scores.parquet").to_pylist()}
    assert rows[3]["status"] == "failed"
    assert rows[3]["error"].startswith("ValueError: Input X contains NaN")
    assert json.loads(rows[17]["validation"])[0]["action"] == "flagged"
    assert rows[4]["status"] == "scored"
    assert rows[4]["predict_proba"] is not None


def test_a_deployments_overrides_apply(scored_project: tuple[Project, Any, pd.DataFrame], settings: Settings, tmp_path: Path) -> None:
    """Scoring as deployment 'lenient' uses its validation overrides: the missing amounts
    are imputed, scored, and each row says so."""
    project, _, events = scored_project
    events_path = tmp_path / "events.parquet"
    _with_bad_rows(events).to_parquet(events_path)
    summary = score_events(project, "fraud", events_path, tmp_path / "scores.parquet", deployment="lenient", carry=["event_id"], settings=settings)
    assert (summary.scored, summary.rejected) == (80, 0)
    assert summary.violations == {("amount", "not_finite", "imputed"): 2}
    rows = {r["event_id"]: r for r in pq.read_table(tmp_path / "scores.parquet").to_pylist()}
    assert json.loads(rows[3]["validation"])[0]["action"] == "imputed"
    assert rows[3]["predict_proba"] is not None


def test_the_score_command(scored_project: tuple[Project, Any, pd.DataFrame], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stalwart score` writes the scores and prints the summary (here as JSON)."""
    project, _, events = scored_project
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(home))
    events_path = tmp_path / "events.parquet"
    _with_bad_rows(events).to_parquet(events_path)
    out = tmp_path / "out" / "scores.parquet"
    result = CliRunner().invoke(app, [
        "score", "--model", "fraud:1", "--events", str(events_path), "-o", str(out), "--engine", "duckdb",
        "--project", str(project.root / "project.py"), "--carry", "event_id", "--json",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["scored"], summary["failed"], summary["model"]) == (80, 78, 2, "fraud:1")
    assert pq.read_metadata(out).num_rows == 80
    bad = CliRunner().invoke(app, ["score", "--model", "fraud", "--events", str(events_path), "-o", str(out), "--engine", "pandas", "--project", str(project.root / "project.py")])
    assert bad.exit_code == 1
    assert "--engine must be one of numpy, duckdb, spark" in bad.output
