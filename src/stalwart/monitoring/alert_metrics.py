"""The alerts' Prometheus series, in the registry the caller gives (the server's own).

- ``stalwart_alert_firing{alert,deployment,column,severity}``: 1 while an alert fires, 0
  once it resolved. Every replica exports it from the stored state, so a scrape of any
  replica agrees; not only the one that evaluates.
- ``stalwart_drift_score{deployment,column,method}``: the last value each rule's metric
  (``method``) had per column, set by the evaluating replica.
- ``stalwart_alert_notifications_total{outcome}``: webhook posts ``sent``, ``failed`` after
  every retry, or ``dropped`` from a full queue.
- ``stalwart_alert_evaluation_failures_total{alert}``: rules whose metric could not be read.

Label values are bounded: alert and deployment names are declared in the project; columns
are what a metric source reports, and the engine caps them per rule
(:data:`~stalwart.monitoring.alerts.MAX_COLUMNS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["AlertMetrics"]


class AlertMetrics:
    """The alert engine's series, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.firing = Gauge(
            "stalwart_alert_firing",
            "1 while an alert fires (0 once resolved)",
            ("alert", "deployment", "column", "severity"),
            registry=registry,
            multiprocess_mode="livemostrecent",  # workers: every one sets it from the stored state
        )
        self.score = Gauge(
            "stalwart_drift_score",
            "The last value of a monitored score, per deployment, column and method (the alert rule's metric)",
            ("deployment", "column", "method"),
            registry=registry,
            multiprocess_mode="livemostrecent",  # workers: the last value the evaluator (the leader) set
        )
        self.notifications = Counter(
            "stalwart_alert_notifications",
            "Alert webhook posts by outcome (sent, failed after every retry, dropped from a full queue)",
            ("outcome",),
            registry=registry,
        )
        self.failures = Counter(
            "stalwart_alert_evaluation_failures",
            "Evaluations of a rule that failed (its metric could not be read or scored)",
            ("alert",),
            registry=registry,
        )

    def set_firing(self, states: Iterable[tuple[str, str, str, str, bool]]) -> None:
        """``(alert, deployment, column, severity, firing)`` for every known alert."""
        for alert, deployment, column, severity, firing in states:
            self.firing.labels(alert, deployment, column, severity).set(1.0 if firing else 0.0)

    def set_score(self, deployment: str, column: str, method: str, value: float) -> None:
        if math.isfinite(value):
            self.score.labels(deployment, column, method).set(value)
