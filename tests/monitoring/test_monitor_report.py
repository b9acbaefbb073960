"""Monitoring end to end: a server's traffic, shifted from its training data, shows as drift
in the report (built from the database, served as JSON, rendered as HTML), in the metric
source alerts read, and fires a declared alert in the next server with the audit event,
the gauge and the history the report lists."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.monitor import MonitorSource, read_window
from stalwart.monitoring.report import build_report
from stalwart.monitoring.report_document import NumericDistribution, ReportDocument
from stalwart.monitoring.report_html import render_html
from stalwart.project import Alert, Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.registry.audit import query_events, verify_audit
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import start_server

SOURCE = RequestSource("txn", fields={"amount": "float"})


def _register(registry: Registry) -> None:
    """A model trained on amounts around 50."""
    rng = np.random.default_rng(0)
    sample = pd.DataFrame({"amount": rng.normal(50.0, 10.0, 2000)})
    registry.register("scorer", _model(), sample=sample)


def _model() -> Switchable:
    set_mode("scorer", "ok")
    return Switchable("scorer", 1.0)


def _project(*alerts: Alert) -> Project:
    return Project.of(Deployment("payments", model="scorer", features=[SOURCE.amount]), SOURCE, *alerts)


def _serve_shifted(settings: Settings, registry: Registry, requests: int = 30, rows: int = 10) -> dt.datetime:
    """Traffic whose amounts are three times the training ones; returns when it began."""
    rng = np.random.default_rng(1)
    began = dt.datetime.now(dt.UTC)
    with start_server(settings, app=create_app(settings, registry=registry, project=_project())) as server:
        for i in range(requests):
            amounts = rng.normal(150.0, 10.0, rows)
            body = {
                "entities": [{"id": i * rows + j} for j in range(rows)],
                "values": [{"amount": float(a)} for a in amounts],
            }
            response = server.post("/v1/deployments/payments/predict", json=body)
            assert response.status_code == 200, response.text
    return began


def test_the_report_shows_drift_of_shifted_traffic(settings: Settings, registry: Registry) -> None:
    """Amounts three times the training ones drift (by the default method, and in the
    distributions and over time); the document reads back and renders."""
    _register(registry)
    began = _serve_shifted(settings, registry)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    since = began - dt.timedelta(hours=1)
    doc = build_report(registry.db, "payments", since, until, settings=settings)
    report = ReportDocument.from_dict(doc)
    assert [(v.variant, v.model, v.version) for v in report.variants] == [("primary", "scorer", 1)]
    (amount,) = report.drift.columns
    assert (amount.column, amount.kind, amount.drifted, amount.mode) == ("feature:amount", "numeric", True, "sketch")
    assert amount.current_count == 300
    assert amount.reference_count == 2000
    assert report.drift.share == 1.0
    assert report.drift.drifted
    shown = report.distributions["feature:amount"]
    assert isinstance(shown, NumericDistribution)
    # The training data fills every decile bin; the shifted traffic sits past the last one.
    assert sum(shown.reference) == pytest.approx(1.0, abs=0.02)
    assert shown.current[-1] > 0.95
    assert [b.count for b in report.predictions_over_time]
    assert sum(b.count for b in report.predictions_over_time) == 300
    assert report.drift_over_time
    assert all(b.share == 1.0 for b in report.drift_over_time)
    assert report.skew.training_vs_serving[0].column == "feature:amount"
    assert report.skew.training_vs_serving[0].drifted
    assert "skew" in report.notes  # live parity was not run
    html = render_html(report)
    assert "feature:amount" in html
    assert "<svg" in html


def test_unshifted_traffic_does_not_drift(settings: Settings, registry: Registry) -> None:
    _register(registry)
    rng = np.random.default_rng(5)
    began = dt.datetime.now(dt.UTC)
    with start_server(settings, app=create_app(settings, registry=registry, project=_project())) as server:
        for i in range(40):
            body = {
                "entities": [{"id": i * 10 + j} for j in range(10)],
                "values": [{"amount": float(a)} for a in rng.normal(50.0, 10.0, 10)],
            }
            assert server.post("/v1/deployments/payments/predict", json=body).status_code == 200
    window = read_window(registry.db, "payments", began - dt.timedelta(minutes=5), dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    drift = window.drift()
    assert [c.column for c in drift.columns] == ["feature:amount"]
    assert not drift.drifted, drift.to_dict()


def test_the_metric_source_reads_drift_for_alerts(settings: Settings, registry: Registry) -> None:
    _register(registry)
    _serve_shifted(settings, registry)
    source = MonitorSource(registry.db)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    psi = source.values("payments", "psi", 3600, now)
    assert set(psi) == {"feature:amount"}
    assert psi["feature:amount"].value > 1.0
    ks = source.values("payments", "ks", 3600, now)["feature:amount"]
    assert ks.p_value is not None
    assert ks.p_value < 1e-6
    assert ks.rows == 300
    assert source.values("payments", "drift_share", 3600, now)[""].value == 1.0
    assert source.values("payments", "rows", 3600, now)[""].value == 300
    assert source.values("nobody", "psi", 3600, now) == {}
    with pytest.raises(ConfigError, match="metric 'psy'"):
        source.values("payments", "psy", 3600, now)
    reference = source.reference("payments", "feature:amount")
    assert reference is not None
    assert 45 < float(np.median(reference)) < 55


def test_a_drift_alert_fires_in_the_next_server(home: Any, registry: Registry) -> None:
    """Shifted traffic served and written; a server whose project declares a drift alert
    evaluates it on its own metric source: firing, audited, exported, in the report."""
    settings = Settings(home=home, registry_poll_seconds=0.2, python_modules=("tests",), alert_interval_seconds=0.2)
    _register(registry)
    began = _serve_shifted(settings, registry)
    alert = Alert("amount-drift", "payments", "psi", threshold=0.2, window="1h", for_="0", severity="critical")
    app = create_app(settings, registry=registry, project=_project(alert))
    with start_server(settings, app=app) as server:
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
        firing = ""
        while dt.datetime.now(dt.UTC) < deadline:
            metrics = server.get("/metrics").text
            firing = next((line for line in metrics.splitlines() if line.startswith("stalwart_alert_firing{") and "amount-drift" in line), "")
            if firing.endswith(" 1.0"):
                break
            time.sleep(0.2)
        assert firing.endswith(" 1.0"), firing
        assert 'column="feature:amount"' in firing
        assert 'severity="critical"' in firing
        token = settings.resolved_admin_token()
        report = server.get("/v1/deployments/payments/monitoring?since=2h", headers={"Authorization": f"Bearer {token}"})
        assert report.status_code == 200, report.text
        alerts = report.json()["alerts"]
        assert [(a["name"], a["column"], a["state"]) for a in alerts] == [("amount-drift", "feature:amount", "firing")]
        assert report.json()["drift"]["columns"][0]["drifted"] is True
        assert server.get("/v1/deployments/payments/monitoring").status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert server.get("/v1/deployments/nobody/monitoring", headers=headers).status_code == 404
        bad = server.get("/v1/deployments/payments/monitoring?since=yesterday", headers=headers)
        assert bad.status_code == 400
        assert bad.json()["field"] == "since"
    events = [e for e in query_events(registry.db, subject="payments") if e.action == "alert.firing"]
    assert [(e.detail["alert"], e.detail["column"]) for e in events] == [("amount-drift", "feature:amount")]
    assert verify_audit(registry.db) is None
    assert began < dt.datetime.now(dt.UTC)
