"""Live parity: a real server serves a deployment over a SQL table and logs every answer;
then the logged features are recomputed offline at the same entity and instant and
compared value by value."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from sklearn.dummy import DummyClassifier
from typer.testing import CliRunner

from stalwart.cli.main import app as cli
from stalwart.config import Settings
from stalwart.errors import DeploymentNotFound
from stalwart.features import build_training_set
from stalwart.features.live_parity import SkewMetrics, check_live_parity, values_match
from stalwart.project import Project, load_project
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from stalwart.storage import Database
from tests.features.conftest import load_table
from tests.servers import LiveServer, start_server

PROJECT = '''
import numpy as np
from stalwart import Deployment, Entity, FeatureSet, Latest, RequestSource, SqlSource, Transform, Window

card = Entity("card", keys=["card_id"])
txn = RequestSource("txn", fields={"amount": "float"})
tx = SqlSource("tx", table="tx", entity=card, timestamp="ts")
activity = FeatureSet("card", entity=card, source=tx, features=[
    Window("n_1d", agg="count", window="WINDOW"),
    Window("max_1d", agg="max", column="amount", window="WINDOW", default=0.0),
    Latest("last_amount", column="amount", default=0.0),
    Latest("last_category", column="category", default="none"),
    Transform("ratio", inputs=[txn.amount, "last_amount"], fn=lambda a, last: a / np.maximum(last, 1.0)),
])
scores = Deployment("scores", model="parity-model")
'''
PREDICT = "/v1/deployments/scores/predict"
CARDS = (1, 2, 3, 4)


@dataclass
class Served:
    """A project file, its server, and what it answered."""

    settings: Settings
    project_file: Path
    project: Project
    server: LiveServer
    app: Any

    def predict(self, card: int, amount: float) -> dict[str, Any]:
        response = self.server.post(PREDICT, json={"entities": [{"card_id": card}], "values": [{"amount": amount}], "return_features": True})
        assert response.status_code == 200, response.text
        assert "degraded" not in response.json()
        features: dict[str, Any] = response.json()["features"][0]
        return features

    def logged(self) -> None:
        assert self.app.state.predictions.wait_idle(10)


def _project_file(directory: Path, window: str = "1d") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "project.py"
    path.write_text(PROJECT.replace("WINDOW", window))
    return path


def _history(now: dt.datetime) -> pd.DataFrame:
    """Each card's last two days: a row every five hours, the latest two hours ago."""
    rows = []
    rng = np.random.default_rng(4)
    for card in CARDS:
        for k in range(10):
            rows.append({
                "card_id": card,
                "ts": now - dt.timedelta(hours=2 + 5 * k),
                "amount": float(np.round(rng.uniform(20, 90), 2)),
                "category": str(rng.choice(["food", "fuel", "tech"])),
            })
    return pd.DataFrame(rows)


@pytest.fixture
def served(settings: Settings, registry: Registry, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """The table, a model trained on a point-in-time training set of it, and a server with
    the prediction log in SQLite (logging request values as ``request.param`` says: all
    unless a test asks otherwise)."""
    now = dt.datetime.now(dt.UTC)
    db = Database(settings.resolved_db_url())
    try:
        load_table(db, _history(now))
    finally:
        db.dispose()
    project_file = _project_file(tmp_path / "project")
    project = load_project(project_file)
    events = pd.DataFrame({
        "card_id": [c for c in CARDS for _ in range(5)],
        "ts": [now - dt.timedelta(hours=h) for _ in CARDS for h in range(1, 6)],
        "amount": np.linspace(5, 95, 5 * len(CARDS)),
        "label": [0, 1] * (5 * len(CARDS) // 2),
    })
    training = build_training_set(events, [project.feature_sets["card"]], label="label", settings=settings, root=project.root)
    registry.register("parity-model", DummyClassifier().fit(training.frame[training.features], training.y), training_set=training)
    inputs = getattr(request, "param", "all")
    configured = settings.model_copy(update={"project": project_file, "prediction_log_inputs": inputs})
    app = create_app(configured, registry=registry, project=project)
    with start_server(configured, app=app) as server:
        yield Served(configured, project_file, project, server, app)


def test_unchanged_data_has_no_skew(served: Served) -> None:
    """Every feature of every logged request, recomputed offline at the instant it was
    served, equals what the model saw: each feature is compared on every row and the skew
    rate is 0, the gauge too."""
    for i in range(12):
        served.predict(CARDS[i % len(CARDS)], 10.0 + i)
    served.logged()
    report = check_live_parity(served.project, served.settings, "scores", since="1h", sample=100)
    assert (report.sampled, report.rows, report.unversioned) == (12, 12, 0)
    assert {f.feature for f in report.features} == {"n_1d", "max_1d", "last_amount", "last_category", "ratio"}
    for item in report.features:
        assert (item.checked, item.mismatched, item.rate, item.version_changed) == (12, 0, 0.0, 0), item
    assert report.ok
    registry = CollectorRegistry()
    SkewMetrics(registry).publish(report)
    assert registry.get_sample_value("stalwart_feature_skew_rate", {"deployment": "scores", "feature": "ratio"}) == 0.0


def test_a_write_that_bypassed_invalidation_is_flagged(served: Served) -> None:
    """A row written straight into the table (not through `write` or the rows route) is
    not seen by the cache, which keeps serving card 1's old values: live parity flags
    exactly the features that row changes (its count, latest amount, and the ratio over
    it), on exactly the requests served stale, with examples; features the row leaves
    unchanged (its category equals the latest one, its amount is below the maximum) and
    other cards are clean."""
    before = served.predict(1, 40.0)  # loads card 1 into the cache
    for card in CARDS[1:]:
        served.predict(card, 40.0)
    db = Database(served.settings.resolved_db_url())
    try:
        with db.write() as conn:
            conn.exec_driver_sql(
                "INSERT INTO tx (card_id, ts, amount, category) VALUES (?, ?, ?, ?)",
                (1, dt.datetime.now(dt.UTC), before["max_1d"] / 2, before["last_category"]),
            )
    finally:
        db.dispose()
    time.sleep(0.01)
    stale = [served.predict(1, 40.0 + i) for i in range(3)]
    assert all(s["n_1d"] == before["n_1d"] for s in stale)  # the cache did not see the row
    for card in CARDS[1:]:
        served.predict(card, 50.0)
    served.logged()
    report = check_live_parity(served.project, served.settings, "scores", since="1h", sample=100, seed=3)
    by_name = {f.feature: f for f in report.features}
    assert report.rows == 1 + 3 + 2 * (len(CARDS) - 1)
    assert {name for name, f in by_name.items() if f.mismatched} == {"n_1d", "last_amount", "ratio"}
    for name in ("n_1d", "last_amount", "ratio"):
        item = by_name[name]
        assert (item.checked, item.mismatched) == (report.rows, 3)
        assert item.rate == pytest.approx(3 / report.rows)
        assert len(item.examples) == 3
        assert all(e["entity"] == {"card_id": 1} for e in item.examples)
        assert sorted(e["served"] for e in item.examples) == sorted(s[name] for s in stale)
    n_1d = by_name["n_1d"].examples[0]
    assert n_1d["recomputed"] == n_1d["served"] + 1
    assert {e["recomputed"] for e in by_name["last_amount"].examples} == {before["max_1d"] / 2}
    assert not report.ok
    registry = CollectorRegistry()
    SkewMetrics(registry).publish(report)
    assert registry.get_sample_value("stalwart_feature_skew_rate", {"deployment": "scores", "feature": "n_1d"}) == pytest.approx(3 / report.rows)
    assert registry.get_sample_value("stalwart_feature_skew_rate", {"deployment": "scores", "feature": "max_1d"}) == 0.0
    rows = {row["feature"]: row for row in report.to_dict()["features"]}
    assert {k: rows["n_1d"][k] for k in ("checked", "mismatched")} == {"checked": report.rows, "mismatched": 3}
    json.dumps(report.to_dict())  # JSON-ready, examples included


def test_a_changed_definition_is_version_changed_not_skew(served: Served, tmp_path: Path) -> None:
    """Recomputing with a project whose feature set has since changed (a 2-day window)
    would compare other definitions: every row is counted as version_changed, none as
    compared or mismatched."""
    for card in CARDS:
        served.predict(card, 30.0)
    served.logged()
    changed = load_project(_project_file(tmp_path / "changed", window="2d"))
    assert changed.feature_sets["card"].version != served.project.feature_sets["card"].version
    report = check_live_parity(changed, served.settings, "scores", since="1h")
    assert {f.feature for f in report.features} == {"n_1d", "max_1d", "last_amount", "last_category", "ratio"}
    for item in report.features:
        assert (item.checked, item.mismatched, item.version_changed) == (0, 0, len(CARDS)), item
    assert report.ok


@pytest.mark.parametrize("served", ["hash"], indirect=True)
def test_a_transform_of_request_values_not_logged_is_skipped(served: Served) -> None:
    """With request values logged as a hash only, the transform that reads one cannot be
    recomputed: its rows are counted as skipped, never as skew, and every other feature is
    still compared."""
    for card in CARDS:
        served.predict(card, 30.0)
    served.logged()
    report = check_live_parity(served.project, served.settings, "scores", since="1h")
    by_name = {f.feature: f for f in report.features}
    assert (by_name["ratio"].checked, by_name["ratio"].skipped) == (0, len(CARDS))
    for name in ("n_1d", "max_1d", "last_amount", "last_category"):
        assert (by_name[name].checked, by_name[name].mismatched, by_name[name].skipped) == (len(CARDS), 0, 0)


def test_the_cli_prints_a_table_and_json(served: Served) -> None:
    """`stalwart features parity-live` prints each feature's rate (a table, or --json for
    machines) and exits 0 without skew; an unknown deployment is an error naming it."""
    for card in CARDS:
        served.predict(card, 20.0)
    served.logged()
    env = {"STALWART_HOME": str(served.settings.home), "STALWART_PROJECT": str(served.project_file), "COLUMNS": "200"}
    runner = CliRunner()
    table = runner.invoke(cli, ["features", "parity-live", "--deployment", "scores", "--since", "1h", "--sample", "50"], env=env)
    assert table.exit_code == 0, table.output
    assert "last_category" in table.output
    assert "no skew" in table.output
    machine = runner.invoke(cli, ["features", "parity-live", "--deployment", "scores", "--since", "1h", "--json"], env=env)
    assert machine.exit_code == 0, machine.output
    body = json.loads(machine.stdout)
    assert {row["feature"]: (row["checked"], row["mismatched"], row["rate"]) for row in body["features"]}["n_1d"] == (len(CARDS), 0, 0.0)
    unknown = runner.invoke(cli, ["features", "parity-live", "--deployment", "nope", "--since", "1h"], env=env)
    assert unknown.exit_code == 1
    assert "nope" in unknown.output


def test_an_unknown_deployment_is_named(served: Served) -> None:
    """A typo is an error naming the deployment, not an empty report."""
    with pytest.raises(DeploymentNotFound, match="nope"):
        check_live_parity(served.project, served.settings, "nope")


@pytest.mark.parametrize(
    ("given", "recomputed", "equal"),
    [
        (0.1, 0.1, True),
        (float(np.float32(0.1)), 0.1, True),  # a float32 model input
        (1.0, 1.0 + 1e-4, False),
        (3, 3.0, True),  # a count served as a float column
        (None, float("nan"), True),  # the log keeps NaN as null
        (None, 0.0, False),  # missing is not the default
        (0.0, float("nan"), False),
        (float("inf"), float("inf"), True),
        ("food", "food", True),
        ("food", "fuel", False),
        (True, np.True_, True),
    ],
)
def test_values_match(given: Any, recomputed: Any, equal: bool) -> None:
    """The comparison rule: numbers within the tolerance, NaN equals null, a missing value
    never equals a default, anything else must be equal."""
    assert values_match(given, recomputed, rtol=1e-6, atol=1e-9) is equal
