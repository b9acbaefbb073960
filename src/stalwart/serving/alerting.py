"""The server's alerting: the project's alert rules, evaluated on a schedule while it runs.

Built by :func:`create_app <stalwart.serving.app.create_app>` when the project declares
alerts and the app has a metric source to read; the engine itself is
:mod:`stalwart.monitoring.alerts`. Here it is bound to the server's parts: the registry's
database (state, history, the evaluator's lock), the audit log (firing and resolved, in the
same transaction as the state), the server's Prometheus registry, and the webhooks of
``STALWART_ALERT_WEBHOOKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.alert_metrics import AlertMetrics
from stalwart.monitoring.alert_stats import ReferenceCalibrator
from stalwart.monitoring.alert_store import AlertStore
from stalwart.monitoring.alert_webhooks import WebhookNotifier
from stalwart.monitoring.alerts import (
    AlertEngine,
    AlertScheduler,
    AuditHook,
    Calibrator,
    MetricSource,
    Notifier,
    Transition,
)
from stalwart.monitoring.drift import column_drift
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.monitor import MonitorSource
from stalwart.project import Alert, Project
from stalwart.registry import Registry
from stalwart.registry.audit import append_event, process_actor
from stalwart.storage import Database

__all__ = ["Alerting", "audit_hook", "build_alerting", "monitor_source"]

_log = get_logger("stalwart.alerts")

# Scores a calibrated rule may learn its threshold for: numeric distances and statistics,
# computed exactly on the bootstrap's raw windows.
_CALIBRATED = ("psi", "js", "ks", "wasserstein", "hellinger", "drift")


def monitor_source(
    database: Database, alerts: Iterable[Alert], calibrator: Calibrator | None = None
) -> tuple[MetricSource, Calibrator]:
    """The server's own metric source (:class:`~stalwart.monitoring.monitor.MonitorSource`:
    live profiles against the training profile, labels) and a calibrator that draws its
    reference from the training profile's quantiles (``calibrator`` when given). A rule on
    a metric the source does not compute fails here, at start, naming the rule."""
    for alert in alerts:
        try:
            MonitorSource.check(alert.metric)
        except ConfigError as exc:
            raise ConfigError(f"alert '{alert.name}' metric: {exc.message}") from None
    source = MonitorSource(database)
    if calibrator is None:
        scores = {metric: _exact_score(None if metric == "drift" else metric) for metric in _CALIBRATED}
        calibrator = ReferenceCalibrator(source.reference, scores)
    return source, calibrator


def _exact_score(method: str | None) -> Callable[[Any, Any], float]:
    def score(reference: Any, window: Any) -> float:
        return column_drift(reference, window, method=method).score

    return score


@dataclass
class Alerting:
    """The running parts: the scheduler, and the webhook notifier when URLs are set."""

    engine: AlertEngine
    scheduler: AlertScheduler
    webhooks: WebhookNotifier | None

    def start(self) -> None:
        if self.webhooks is not None:
            self.webhooks.start()
        self.scheduler.start()

    def stop(self) -> None:
        """Blocking (joins threads, releases the lock): call it off the event loop."""
        self.scheduler.stop()
        if self.webhooks is not None:
            self.webhooks.close()


def audit_hook(actor: str | None = None) -> AuditHook:
    """Append ``alert.firing`` / ``alert.resolved`` to the audit log, subject the deployment."""
    who = actor if actor is not None else process_actor()

    def record(conn: Connection, tr: Transition) -> None:
        detail = {
            "alert": tr.alert, "column": tr.column, "from": tr.from_state.value, "severity": tr.severity,
            "value": tr.value, "threshold": tr.threshold,
        }
        append_event(conn, who, f"alert.{tr.to_state.value}", tr.deployment, detail, at=tr.at)

    return record


def build_alerting(
    settings: Settings,
    project: Project,
    registry: Registry,
    metrics: CollectorRegistry,
    source: MetricSource | None,
    calibrator: Calibrator | None = None,
) -> Alerting | None:
    """The alerting of this server, or None when the project declares no alerts (or there
    is no metric source to evaluate them on, which is logged)."""
    if not project.alerts:
        return None
    project.check_alerts()
    if source is None:
        _log.warning(
            "the project declares alerts but the server has no metric source; alerts are not evaluated",
            alerts=sorted(project.alerts),
        )
        return None
    alert_metrics = AlertMetrics(metrics)
    webhooks = None
    notifiers: list[Notifier] = []
    if settings.alert_webhooks:
        webhooks = WebhookNotifier(
            [url.get_secret_value() for url in settings.alert_webhooks],
            timeout=settings.alert_webhook_timeout_seconds,
            metrics=alert_metrics,
        )
        notifiers.append(webhooks)
    # A lease outlives a few missed ticks, so a slow evaluation does not hand leadership over.
    store = AlertStore(registry.db, lease_seconds=max(30.0, 3 * settings.alert_interval_seconds))
    engine = AlertEngine(
        list(project.alerts.values()), source, store,
        metrics=alert_metrics, notifiers=notifiers, calibrator=calibrator,
        audit=audit_hook(), cooldown=settings.alert_cooldown_seconds,
    )
    return Alerting(engine, AlertScheduler(engine, settings.alert_interval_seconds), webhooks)
