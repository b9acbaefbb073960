"""The alert engine: every rule evaluated on a schedule, by one process, with its state kept.

A rule (:class:`~stalwart.project.Alert`) names a deployment, a metric and a column (``*``:
every column the metric reports). At each evaluation the engine reads the metric's values
over the rule's window from a :class:`MetricSource`, decides per column whether the
condition holds, and moves the column's alert along :data:`TRANSITIONS`:

=========== ================ ================================= ==============
from        condition        and                               to
=========== ================ ================================= ==============
inactive    holds            ``for_`` is 0                     firing
inactive    holds            ``for_`` > 0                      pending
pending     holds            held for ``for_``                 firing
pending     does not hold                                      inactive
firing      does not hold                                      resolved
resolved    holds            ``for_`` is 0                     firing
resolved    holds            ``for_`` > 0                      pending
=========== ================ ================================= ==============

Anything else stays where it is. A column the metric no longer reports (no traffic in the
window), or reports as NaN, does not hold. A rule whose metric cannot be read keeps every
state as it was (a broken source neither fires nor resolves anything) and is counted.

Every transition is a row of ``alert_history``; firing and resolved are also audit events,
in the same transaction (``audit``). Then: ``stalwart_alert_firing`` and the score gauges
(:mod:`~stalwart.monitoring.alert_metrics`), and notifications to the ``notifiers``
(webhooks: :mod:`~stalwart.monitoring.alert_webhooks`). What is notified is decided here and
recorded with the state, so a restart or another replica never sends it again: a firing
alert is sent when it starts firing and, while it goes on, again once ``cooldown`` has
passed since it was last sent (a reminder); a resolved alert is sent once, and only if its
firing was.

One evaluator: :meth:`AlertEngine.evaluate` first asks the store for leadership
(:class:`~stalwart.monitoring.alert_store.AlertStore`); the other replicas only refresh
their ``stalwart_alert_firing`` gauges from the stored state. :class:`AlertScheduler` runs
it on a thread every interval.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from sqlalchemy import Connection

from stalwart.monitoring.alert_metrics import AlertMetrics
from stalwart.monitoring.alert_stats import benjamini_hochberg
from stalwart.monitoring.alert_store import AlertStore, StateRow, TransitionRow
from stalwart.monitoring.logs import get_logger
from stalwart.project.alerts import Alert

__all__ = [
    "MAX_COLUMNS",
    "TRANSITIONS",
    "AlertEngine",
    "AlertScheduler",
    "AuditHook",
    "Calibrator",
    "MetricSource",
    "Notification",
    "Notifier",
    "Observation",
    "State",
    "Transition",
    "next_state",
]

MAX_COLUMNS = 1_000
"""Columns one ``*`` rule evaluates; beyond it the rest are left out (and logged): each is
a Prometheus series and a row."""

_log = get_logger("stalwart.alerts")


@dataclass(frozen=True, slots=True)
class Observation:
    """A metric's value for one column over a window: the score, its p-value when the
    metric has one (KS, chi-squared), and how many rows the window held when known (what a
    calibrated threshold depends on)."""

    value: float
    p_value: float | None = None
    rows: int | None = None


class MetricSource(Protocol):
    """Where the engine reads metrics: drift scores, live profiles, quality."""

    def values(self, deployment: str, metric: str, window_seconds: float, now: datetime) -> Mapping[str, Observation]:
        """``metric`` of ``deployment`` over ``(now - window_seconds, now]``, by column
        (``""`` for a dataset-level value). An unknown metric raises; no data is ``{}``."""
        ...


class Calibrator(Protocol):
    """Thresholds learned from the reference, for rules with ``calibrate=True``
    (:class:`~stalwart.monitoring.alert_stats.ReferenceCalibrator`)."""

    def threshold(self, alert: Alert, column: str, observation: Observation) -> float | None:
        """The calibrated threshold, or None to keep the declared one."""
        ...


class State(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


# (from, condition holds, held for for_) -> to; a missing key keeps the state. "held for
# for_" is True when for_ is 0, so a rule without for_ fires on its first true evaluation.
TRANSITIONS: Mapping[tuple[State, bool, bool], State] = {
    (State.INACTIVE, True, True): State.FIRING,
    (State.INACTIVE, True, False): State.PENDING,
    (State.PENDING, True, True): State.FIRING,
    (State.PENDING, False, False): State.INACTIVE,
    (State.PENDING, False, True): State.INACTIVE,
    (State.FIRING, False, False): State.RESOLVED,
    (State.FIRING, False, True): State.RESOLVED,
    (State.RESOLVED, True, True): State.FIRING,
    (State.RESOLVED, True, False): State.PENDING,
}


def next_state(state: State, holds: bool, held_for: bool) -> State:
    """The state after one evaluation (see :data:`TRANSITIONS`)."""
    return TRANSITIONS.get((state, holds, held_for), state)


@dataclass(frozen=True, slots=True)
class Transition:
    """One alert's change of state at one evaluation."""

    alert: str
    column: str
    deployment: str
    from_state: State
    to_state: State
    at: float
    value: float | None
    threshold: float | None
    severity: str


@dataclass(frozen=True, slots=True)
class Notification:
    """What a notifier sends about one alert (Alertmanager's alert object, as data)."""

    alert: str
    status: str  # "firing" | "resolved"
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None
    fingerprint: str


class Notifier(Protocol):
    """Takes the notifications of one evaluation; must only enqueue (it runs on the
    engine's thread, and a slow receiver must not delay the next evaluation)."""

    def notify(self, notifications: Sequence[Notification]) -> None: ...


AuditHook = Callable[[Connection, Transition], None]
"""Records a firing or resolved transition inside the state's transaction (the server
passes one that appends to the audit log)."""


@dataclass(slots=True)
class _Verdict:
    holds: bool
    value: float | None
    threshold: float | None


@dataclass(slots=True)
class _Round:
    """What one evaluation decided, to be written and then announced."""

    rows: list[StateRow] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


class AlertEngine:
    """Evaluates ``alerts`` against ``source``, keeping state in ``store``."""

    def __init__(
        self,
        alerts: Sequence[Alert],
        source: MetricSource,
        store: AlertStore,
        *,
        metrics: AlertMetrics | None = None,
        notifiers: Sequence[Notifier] = (),
        calibrator: Calibrator | None = None,
        audit: AuditHook | None = None,
        cooldown: float = 4 * 3600.0,
    ) -> None:
        """``cooldown``: seconds before a firing alert already sent is sent again."""
        self.alerts = {alert.name: alert for alert in alerts}
        self.source = source
        self.store = store
        self.metrics = metrics
        self.notifiers = tuple(notifiers)
        self.calibrator = calibrator
        self.audit = audit
        self.cooldown = cooldown
        # One evaluation at a time: the scheduler's thread and a caller (``stalwart demo``,
        # a test) may both evaluate, and two rounds over the same stored state would each
        # make the same transition.
        self._evaluating = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    def evaluate(self, now: datetime | None = None) -> list[Transition]:
        """One evaluation of every rule, if this process leads; the transitions made."""
        with self._evaluating:
            return self._evaluate(now or datetime.now(UTC))

    def _evaluate(self, now: datetime) -> list[Transition]:
        stamp = now.timestamp()
        if not self.store.lead(stamp):
            self.refresh_gauges()
            return []
        stored = self.store.load(self.alerts)
        decided = _Round()
        for alert in self.alerts.values():
            verdicts = self._verdicts(alert, now, stored)
            if verdicts is None:
                continue  # the metric could not be read: every state stays as it was
            for column, verdict in verdicts.items():
                self._advance(alert, column, verdict, stored.get((alert.name, column)), stamp, decided)
        self.store.save(
            decided.rows,
            [_row(tr) for tr in decided.transitions],
            self._audit_all(decided.transitions) if self.audit is not None else None,
            now=stamp,
        )
        self._export(stored, decided)
        if decided.notifications:
            for notifier in self.notifiers:
                notifier.notify(decided.notifications)
        for tr in decided.transitions:
            _log.info("alert transition", alert=tr.alert, column=tr.column, deployment=tr.deployment,
                      from_state=tr.from_state.value, to_state=tr.to_state.value, value=tr.value, threshold=tr.threshold)
        return decided.transitions

    def refresh_gauges(self) -> None:
        """Set ``stalwart_alert_firing`` from the stored state (what non-leaders export)."""
        if self.metrics is None:
            return
        stored = self.store.load(self.alerts)
        self.metrics.set_firing(
            (row.alert, row.deployment, row.column, self.alerts[row.alert].severity, row.state == State.FIRING)
            for row in stored.values()
        )

    # -- one rule ------------------------------------------------------------------------

    def _verdicts(self, alert: Alert, now: datetime, stored: Mapping[tuple[str, str], StateRow]) -> dict[str, _Verdict] | None:
        try:
            observed = dict(self.source.values(alert.deployment, alert.metric, alert.window_seconds, now))
            if alert.column != "*":
                observed = {alert.column: observed[alert.column]} if alert.column in observed else {}
            elif len(observed) > MAX_COLUMNS:
                self._warn_once(alert, "columns", f"metric reported {len(observed)} columns; the first {MAX_COLUMNS} (by name) are evaluated")
                observed = {k: observed[k] for k in sorted(observed)[:MAX_COLUMNS]}
            verdicts = self._judge(alert, observed)
        except Exception as exc:  # noqa: BLE001 - a source is the caller's code; one failing rule must not stop the others
            _log.warning("alert rule not evaluated", alert=alert.name, metric=alert.metric, error=type(exc).__name__, detail=str(exc)[:300])
            if self.metrics is not None:
                self.metrics.failures.labels(alert.name).inc()
            return None
        if self.metrics is not None:
            for column, obs in observed.items():
                self.metrics.set_score(alert.deployment, column, alert.metric, obs.value)
        # Columns that were active and are no longer reported: their condition does not hold.
        for (name, column), row in stored.items():
            if name == alert.name and column not in verdicts and row.state in (State.PENDING, State.FIRING):
                verdicts[column] = _Verdict(False, None, row.threshold)
        return verdicts

    def _judge(self, alert: Alert, observed: Mapping[str, Observation]) -> dict[str, _Verdict]:
        if alert.correction == "bh":
            missing = [c for c, o in observed.items() if o.p_value is None]
            if missing:
                raise ValueError(f"metric '{alert.metric}' reports no p-value for {missing[0]!r}; correction='bh' needs p-values")
            p_values = {c: float(o.p_value) for c, o in observed.items() if o.p_value is not None}
            rejected = benjamini_hochberg(p_values, alert.threshold)
            return {c: _Verdict(c in rejected, p_values[c], alert.threshold) for c in observed}
        verdicts: dict[str, _Verdict] = {}
        for column, obs in observed.items():
            threshold = self._threshold(alert, column, obs)
            value = float(obs.value)
            holds = not math.isnan(value) and (value > threshold if alert.fires_above else value < threshold)
            verdicts[column] = _Verdict(holds, value, threshold)
        return verdicts

    def _threshold(self, alert: Alert, column: str, obs: Observation) -> float:
        if not alert.calibrate:
            return alert.threshold
        if self.calibrator is None:
            self._warn_once(alert, "calibrate", "calibrate=True but the server has no reference to calibrate on; the declared threshold applies")
            return alert.threshold
        learned = self.calibrator.threshold(alert, column, obs)
        if learned is None or math.isnan(learned):
            return alert.threshold
        # The declared threshold bounds the learned one: calibration may only make a rule
        # stricter than what its author wrote.
        return max(alert.threshold, learned) if alert.fires_above else min(alert.threshold, learned)

    def _advance(self, alert: Alert, column: str, verdict: _Verdict, row: StateRow | None, now: float, out: _Round) -> None:
        state = State(row.state) if row is not None else State.INACTIVE
        active_since = row.active_since if row is not None else None
        if verdict.holds and state not in (State.PENDING, State.FIRING):
            active_since = now  # the condition begins now
        held_for = verdict.holds and (alert.for_seconds <= 0 or (active_since is not None and now - active_since >= alert.for_seconds))
        to = next_state(state, verdict.holds, held_for)
        since = now if to != state or row is None else row.since
        notified_state = row.notified_state if row is not None else None
        notified_at = row.notified_at if row is not None else None
        labels = {"alertname": alert.name, "deployment": alert.deployment, "column": column,
                  "severity": alert.severity, "metric": alert.metric, **alert.labels}
        send: str | None = None
        if to == State.FIRING and (notified_state != State.FIRING or notified_at is None or now - notified_at >= self.cooldown):
            send = "firing"
        elif to == State.RESOLVED and notified_state == State.FIRING:
            send = "resolved"
        if send is not None:
            notified_state, notified_at = send, now
            fired_at = since if to == State.FIRING else (row.since if row is not None else now)
            out.notifications.append(Notification(
                alert=alert.name, status=send, labels=labels,
                annotations=_annotations(alert, column, verdict),
                starts_at=fired_at, ends_at=now if send == "resolved" else None,
                fingerprint=_fingerprint(labels),
            ))
        if not verdict.holds:
            active_since = None
        if to != state:
            out.transitions.append(Transition(alert.name, column, alert.deployment, state, to, now, verdict.value, verdict.threshold, alert.severity))
        if row is None and to == State.INACTIVE:
            return  # nothing to remember about a column that never did anything
        if row is not None and (to.value, since, active_since, notified_state, notified_at) == (
            row.state, row.since, row.active_since, row.notified_state, row.notified_at
        ):
            return  # nothing changed but the value: no write (the row keeps the value it changed at)
        out.rows.append(StateRow(
            alert=alert.name, column=column, deployment=alert.deployment, state=to.value, since=since,
            active_since=active_since, value=verdict.value, threshold=verdict.threshold,
            notified_state=notified_state, notified_at=notified_at,
        ))

    # -- outputs -------------------------------------------------------------------------

    def _audit_all(self, transitions: Sequence[Transition]) -> Callable[[Connection], None]:
        hook = self.audit
        announced = [tr for tr in transitions if tr.to_state in (State.FIRING, State.RESOLVED)]

        def record(conn: Connection) -> None:
            if hook is not None:
                for tr in announced:
                    hook(conn, tr)

        return record

    def _export(self, stored: Mapping[tuple[str, str], StateRow], decided: _Round) -> None:
        if self.metrics is None:
            return
        current = {(r.alert, r.column): r for r in stored.values() if r.alert in self.alerts}
        current.update({(r.alert, r.column): r for r in decided.rows})
        self.metrics.set_firing(
            (r.alert, r.deployment, r.column, self.alerts[r.alert].severity, r.state == State.FIRING)
            for r in current.values()
        )

    def _warn_once(self, alert: Alert, what: str, message: str) -> None:
        if (alert.name, what) not in self._warned:
            self._warned.add((alert.name, what))
            _log.warning(message, alert=alert.name)


class AlertScheduler:
    """Runs ``engine.evaluate()`` every ``interval`` seconds on a thread of its own (the
    source reads and database writes of an evaluation never touch the event loop).
    :meth:`stop` gives up leadership, so another replica takes over at its next tick."""

    def __init__(self, engine: AlertEngine, interval: float = 60.0) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stalwart-alerts", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.engine.store.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.engine.evaluate()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive one failed evaluation (a database blip); it is logged
                _log.warning("alert evaluation failed", error=type(exc).__name__, detail=str(exc)[:300])
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def _annotations(alert: Alert, column: str, verdict: _Verdict) -> dict[str, str]:
    where = f"'{column}' of " if column else ""
    if alert.correction == "bh":
        summary = f"{alert.metric} drift in {where}deployment '{alert.deployment}' (p = {_num(verdict.value)}, Benjamini-Hochberg at FDR {alert.threshold:g})"
    else:
        summary = f"{alert.metric} of {where}deployment '{alert.deployment}' is {_num(verdict.value)} ({alert.op} {_num(verdict.threshold)})"
    return {"summary": summary, "value": _num(verdict.value), "threshold": _num(verdict.threshold),
            "window": f"{alert.window_seconds:g}s"}


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's idea of a fingerprint: 16 hex digits identifying the label set."""
    text = "\x00".join(f"{k}\x01{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _row(tr: Transition) -> TransitionRow:
    return TransitionRow(
        at=tr.at, alert=tr.alert, column=tr.column, deployment=tr.deployment, from_state=tr.from_state.value,
        to_state=tr.to_state.value, value=tr.value, threshold=tr.threshold, severity=tr.severity,
    )
