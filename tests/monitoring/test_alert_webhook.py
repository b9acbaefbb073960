"""Alert webhooks against a real HTTP receiver: the Alertmanager payload, retries with
backoff, a bounded wait, credentials kept out of logs, one notification from N engines on
PostgreSQL, and the server's lifespan running it all."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from prometheus_client import CollectorRegistry

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.alert_metrics import AlertMetrics
from stalwart.monitoring.alert_store import AlertStore
from stalwart.monitoring.alert_webhooks import WebhookNotifier, describe_url
from stalwart.monitoring.alerts import AlertEngine
from stalwart.project import Alert, Deployment, Project
from stalwart.registry import Registry
from stalwart.registry.audit import query_events
from stalwart.serving.app import create_app
from stalwart.storage import Database
from tests.monitoring.alert_sources import StreamSource, at
from tests.servers import start_server


@dataclass
class Receiver:
    """An HTTP server that records every POST and answers from a script of statuses."""

    url: str
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@contextmanager
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = holder[0]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.posts.append(json.loads(body))
            rec.headers.append(dict(self.headers))
            rec.paths.append(self.path)
            if rec.delay:
                time.sleep(rec.delay)
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


RULE = Alert("amount-high", "fraud", "mean", column="amount", threshold=3.0, window="1m", for_=0,
             severity="critical", labels={"team": "risk"})
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def test_firing_and_resolved_posts_are_alertmanager_payloads(tmp_path: Path) -> None:
    """What a receiver gets is Alertmanager's webhook body (version 4): status, groupKey,
    labels with the rule's own, annotations, RFC 3339 startsAt/endsAt (the zero time while
    firing), a stable 16-hex fingerprint; resolved once, with its end."""
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    source = StreamSource()
    with receiver() as rec:
        notifier = WebhookNotifier([rec.url + "/hook"], timeout=2)
        notifier.start()
        engine = AlertEngine([RULE], source, AlertStore(db), notifiers=[notifier])
        source.add(at(0), {"amount": [5.0, 7.0]})
        engine.evaluate(at(0))
        for minute in (2, 3):
            source.add(at(minute), {"amount": [1.0]})
            engine.evaluate(at(minute))
        rec.wait_for(2)
        notifier.close()
    assert len(rec.posts) == 2
    firing, resolved = rec.posts
    assert rec.paths == ["/hook", "/hook"]
    assert rec.headers[0]["Content-Type"] == "application/json"
    assert {k: firing[k] for k in ("version", "status", "receiver", "groupKey", "truncatedAlerts", "groupLabels")} == {
        "version": "4", "status": "firing", "receiver": "stalwart", "groupKey": '{}:{alertname="amount-high"}',
        "truncatedAlerts": 0, "groupLabels": {"alertname": "amount-high"},
    }
    alert = firing["alerts"][0]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "amount-high", "deployment": "fraud", "column": "amount",
                               "severity": "critical", "metric": "mean", "team": "risk"}
    assert firing["commonLabels"] == alert["labels"]
    assert alert["annotations"]["value"] == "6"
    assert alert["annotations"]["threshold"] == "3"
    assert "mean of 'amount'" in alert["annotations"]["summary"]
    assert alert["startsAt"] == "2024-05-01T12:00:00.000Z"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
    assert resolved["status"] == "resolved"
    ended = resolved["alerts"][0]
    assert ended["fingerprint"] == alert["fingerprint"]
    assert ended["startsAt"] == alert["startsAt"]
    assert RFC3339.fullmatch(ended["endsAt"])
    assert ended["endsAt"] == "2024-05-01T12:02:00.000Z"
    db.dispose()


def test_transient_failures_are_retried_with_backoff_and_refusals_are_not() -> None:
    """503 twice then 200: delivered on the third try. 400: the receiver refused the body,
    so it is not sent again. Both counted by outcome."""
    registry = CollectorRegistry()
    metrics = AlertMetrics(registry)
    source_note = _note()
    with receiver() as rec:
        rec.statuses = [503, 503, 200, 400]
        notifier = WebhookNotifier([rec.url], timeout=2, attempts=4, backoff=0.05, metrics=metrics)
        notifier.start()
        notifier.notify([source_note])
        rec.wait_for(3)
        notifier.notify([source_note])
        rec.wait_for(4)
        notifier.close()
    assert len(rec.posts) == 4
    assert registry.get_sample_value("stalwart_alert_notifications_total", {"outcome": "sent"}) == 1
    assert registry.get_sample_value("stalwart_alert_notifications_total", {"outcome": "failed"}) == 1


def test_a_slow_receiver_is_given_up_on_within_the_time_limit() -> None:
    """Each post waits at most its timeout; after the last attempt the notifier moves on
    (and closing does not wait on the receiver)."""
    with receiver() as rec:
        rec.delay = 3.0
        notifier = WebhookNotifier([rec.url], timeout=0.3, attempts=2, backoff=0.05)
        notifier.start()
        started = time.monotonic()
        notifier.notify([_note()])
        rec.wait_for(2, timeout=5)
        notifier.close(timeout=1)
        elapsed = time.monotonic() - started
    assert len(rec.posts) == 2
    assert elapsed < 2.5


def test_credentials_in_a_webhook_url_are_sent_as_basic_auth_and_never_logged() -> None:
    """A URL's user part becomes an Authorization header; logs name the webhook by
    position and host, never its user, password, path or query."""
    with receiver() as rec:
        rec.statuses = [500]
        secret_url = rec.url.replace("http://", "http://alert:s3cret@") + "/hooks/T0K3N?key=abcdef"
        with structlog.testing.capture_logs() as logs:
            notifier = WebhookNotifier([secret_url], timeout=2, attempts=1)
            notifier.start()
            notifier.notify([_note()])
            rec.wait_for(1)
            notifier.close()
    assert rec.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"alert:s3cret").decode()
    assert rec.paths == ["/hooks/T0K3N?key=abcdef"]
    text = json.dumps(logs, default=str)
    assert "webhook 1 (http://127.0.0.1:" in text
    for secret in ("s3cret", "T0K3N", "abcdef", "alert:"):
        assert secret not in text
    assert describe_url("https://u:p@hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"


@pytest.mark.postgres
def test_two_engines_on_one_postgres_database_send_one_notification(pg_url: str) -> None:
    """Two replicas' engines evaluating together, each with its own notifier to the same
    receiver: the advisory lock lets one evaluate, so the receiver gets one firing post;
    when it stops, the other takes over without sending it again."""
    source = StreamSource()
    source.add(datetime.now(UTC), {"amount": [5.0]})
    rule = Alert("amount-high", "fraud", "mean", column="amount", threshold=3.0, window="1d", for_=0)
    dbs = [Database(pg_url), Database(pg_url)]
    with receiver() as rec:
        notifiers = [WebhookNotifier([rec.url], timeout=2) for _ in dbs]
        engines = [AlertEngine([rule], source, AlertStore(db), notifiers=[n]) for db, n in zip(dbs, notifiers, strict=True)]
        for n in notifiers:
            n.start()
        barrier = threading.Barrier(2)
        made: list[int] = []

        def run(engine: AlertEngine) -> None:
            for _ in range(5):
                barrier.wait()
                made.append(len(engine.evaluate()))

        threads = [threading.Thread(target=run, args=(e,)) for e in engines]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        leader = next(e for e in engines if e.store._leadership._pg_conn is not None)
        follower = next(e for e in engines if e is not leader)
        assert follower.evaluate() == []
        leader.store.release()
        assert follower.store.lead() is True
        assert follower.evaluate() == []  # it took over the state: firing, already sent
        rec.wait_for(1)
        time.sleep(0.3)
        for n in notifiers:
            n.close()
    assert sum(made) == 1
    assert [p["status"] for p in rec.posts] == ["firing"]
    for engine in engines:
        engine.store.release()
    for db in dbs:
        db.dispose()


def test_the_server_evaluates_declared_alerts_and_posts_them(settings: Settings, registry: Registry) -> None:
    """A project with an alert and a metric source: the lifespan starts the scheduler,
    which fires, posts to STALWART_ALERT_WEBHOOKS, records the audit event and exports
    stalwart_alert_firing; shutdown stops it."""
    source = StreamSource()
    source.add(datetime.now(UTC), {"amount": np.array([5.0])})
    rule = Alert("amount-high", "fraud", "mean", column="amount", threshold=3.0, window="1d", for_=0)
    project = Project.of(Deployment("fraud", model="fraud"), rule)
    with receiver() as rec:
        live = Settings(**{**settings.model_dump(), "alert_interval_seconds": 0.1, "alert_webhooks": rec.url})
        app = create_app(live, registry=registry, project=project, alert_source=source)
        with start_server(live, registry, app=app) as server:
            rec.wait_for(1)
            metrics = server.client.get("/metrics").text
        assert app.state.alerting.scheduler._thread is None  # stopped with the server
    assert [p["alerts"][0]["labels"]["alertname"] for p in rec.posts] == ["amount-high"]
    assert 'stalwart_alert_firing{alert="amount-high",column="amount",deployment="fraud",severity="warning"} 1.0' in metrics
    assert [e.action for e in query_events(registry.db, subject="fraud")] == ["alert.firing"]


def test_a_project_with_alerts_is_evaluated_on_the_servers_own_metrics(settings: Settings, registry: Registry) -> None:
    """Without a metric source given, the server's own (live profiles against training
    profiles, labels: MonitorSource) evaluates the rules, with a calibrator learned from the
    training profile; a rule on a metric it does not compute fails the start, named."""
    from stalwart.monitoring.monitor import MonitorSource

    drift = Alert("amount-drift", "fraud", "psi", column="feature:amount", threshold=0.2)
    app = create_app(settings, registry=registry, project=Project.of(Deployment("fraud", model="fraud"), drift))
    assert app.state.alerting is not None
    assert isinstance(app.state.alerting.engine.source, MonitorSource)
    assert app.state.alerting.engine.calibrator is not None
    with pytest.raises(ConfigError, match="alert 'amount-high' metric: metric 'mean' is not one Stalwart computes"):
        create_app(settings, registry=registry, project=Project.of(Deployment("fraud", model="fraud"), RULE))


def _note() -> Any:
    from stalwart.monitoring.alerts import Notification

    return Notification(alert="a", status="firing", labels={"alertname": "a"}, annotations={}, starts_at=0.0,
                        ends_at=None, fingerprint="0" * 16)


def test_webhook_urls_stay_out_of_the_recorded_settings() -> None:
    """The settings the audit log records at start leave the webhook URLs out (they are
    secrets), and a bad entry is reported by position, never quoted."""
    from stalwart.config import load_settings
    from stalwart.registry.audit import settings_view

    settings = Settings(alert_webhooks="https://u:pw@hooks.example.com/T0K3N, http://127.0.0.1:9/x")
    assert len(settings.alert_webhooks) == 2
    assert "T0K3N" not in json.dumps(settings_view(settings))
    with pytest.raises(ConfigError, match=r"STALWART_ALERT_WEBHOOKS: .*entry 2 is not an http\(s\) URL") as info:
        load_settings(alert_webhooks="https://ok.example.com/a,ftp://s3cret@x")
    assert "s3cret" not in str(info.value)
