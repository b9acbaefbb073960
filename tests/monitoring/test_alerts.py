"""The alert engine: states and their transitions with ``for``, what is notified and when,
state kept across restarts, one evaluator, false-alarm control (BH, calibration), and the
audit log and Prometheus outputs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.alert_metrics import AlertMetrics
from stalwart.monitoring.alert_stats import (
    ReferenceCalibrator,
    benjamini_hochberg,
    calibrate_threshold,
)
from stalwart.monitoring.alert_store import AlertStore
from stalwart.monitoring.alerts import TRANSITIONS, AlertEngine, AlertScheduler, State, next_state
from stalwart.project import Alert
from stalwart.registry import Registry
from stalwart.registry.audit import query_events, verify_audit
from stalwart.serving.alerting import audit_hook
from stalwart.storage import Database
from tests.monitoring.alert_sources import Inbox, StreamSource, at


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'alerts.db'}")
    yield database
    database.dispose()


def _engine(db: Database, source: StreamSource, *alerts: Alert, inbox: Inbox | None = None, **kwargs: object) -> AlertEngine:
    return AlertEngine(list(alerts), source, AlertStore(db), notifiers=[inbox] if inbox else [], **kwargs)  # type: ignore[arg-type]


HIGH_MEAN = Alert("high-mean", "fraud", "mean", column="amount", threshold=3.0, window="10m", for_="10m")


# -- the state machine ------------------------------------------------------------------


@pytest.mark.parametrize(("key", "to"), list(TRANSITIONS.items()))
def test_each_row_of_the_transition_table(key: tuple[State, bool, bool], to: State) -> None:
    """The table is the state machine: each row is what next_state does."""
    assert next_state(*key) == to


def test_states_not_in_the_table_stay_put() -> None:
    """Firing while the condition holds stays firing; inactive and resolved stay when it does not."""
    assert next_state(State.FIRING, True, True) == State.FIRING
    assert next_state(State.INACTIVE, False, False) == State.INACTIVE
    assert next_state(State.RESOLVED, False, False) == State.RESOLVED
    assert next_state(State.PENDING, True, False) == State.PENDING


def test_an_alert_fires_only_after_its_condition_held_for_its_for(db: Database) -> None:
    """Pending while the condition holds for less than ``for_``, firing once it has, and one
    notification when it starts firing; every transition is in the history."""
    source, inbox = StreamSource(), Inbox()
    engine = _engine(db, source, HIGH_MEAN, inbox=inbox)
    for minute in range(0, 16):
        source.add(at(minute), {"amount": np.full(10, 5.0)})
    moves = {m: [(t.from_state, t.to_state) for t in engine.evaluate(at(m))] for m in (0, 5, 9, 10, 15)}
    assert moves[0] == [(State.INACTIVE, State.PENDING)]
    assert moves[5] == moves[9] == []
    assert moves[10] == [(State.PENDING, State.FIRING)]
    assert moves[15] == []
    assert inbox.statuses() == [("high-mean", "amount", "firing")]
    assert [(h.from_state, h.to_state) for h in engine.store.history("high-mean")] == [("inactive", "pending"), ("pending", "firing")]


def test_a_condition_that_stops_before_for_never_fires(db: Database) -> None:
    """Pending goes back to inactive when the condition breaks before ``for_``: nothing sent."""
    source, inbox = StreamSource(), Inbox()
    engine = _engine(db, source, HIGH_MEAN, inbox=inbox)
    source.add(at(0), {"amount": np.full(10, 5.0)})
    engine.evaluate(at(0))
    source.add(at(6), {"amount": np.full(1000, 0.0)})
    assert [(t.from_state, t.to_state) for t in engine.evaluate(at(6))] == [(State.PENDING, State.INACTIVE)]
    source.add(at(11), {"amount": np.full(10, 0.0)})
    assert engine.evaluate(at(11)) == []
    assert inbox.received == []


def test_resolved_is_sent_once_and_a_new_episode_fires_again(db: Database) -> None:
    """Firing → resolved when the condition stops (one resolved notification, however many
    quiet evaluations follow); the next episode fires and is sent again."""
    rule = Alert("hot", "fraud", "mean", column="amount", threshold=3.0, window="1m", for_=0)
    source, inbox = StreamSource(), Inbox()
    engine = _engine(db, source, rule, inbox=inbox)
    source.add(at(0), {"amount": [5.0]})
    assert [t.to_state for t in engine.evaluate(at(0))] == [State.FIRING]
    for minute in (2, 3, 4):
        source.add(at(minute), {"amount": [1.0]})
        engine.evaluate(at(minute))
    source.add(at(5), {"amount": [9.0]})
    engine.evaluate(at(5))
    assert inbox.statuses() == [("hot", "amount", "firing"), ("hot", "amount", "resolved"), ("hot", "amount", "firing")]
    resolved = inbox.received[1]
    assert resolved.starts_at == at(0).timestamp()
    assert resolved.ends_at == at(2).timestamp()
    assert inbox.received[0].fingerprint == resolved.fingerprint == inbox.received[2].fingerprint


def test_a_firing_alert_is_not_resent_within_the_cooldown_and_reminded_after(db: Database) -> None:
    """Deduplication: the same firing alert is sent again only once the cooldown passed."""
    rule = Alert("hot", "fraud", "mean", column="amount", threshold=3.0, window="1h", for_=0)
    source, inbox = StreamSource(), Inbox()
    engine = _engine(db, source, rule, inbox=inbox, cooldown=3600.0)
    source.add(at(0), {"amount": [5.0]})
    for minute in range(0, 61, 10):
        source.add(at(minute), {"amount": [5.0]})
        engine.evaluate(at(minute))
    assert inbox.statuses() == [("hot", "amount", "firing"), ("hot", "amount", "firing")]
    assert [n.starts_at for n in inbox.received] == [at(0).timestamp()] * 2  # the same episode


def test_a_restarted_engine_neither_refires_nor_forgets_pending(db: Database) -> None:
    """State is in the database: a new engine (a restart, another replica taking over)
    continues where the last one stopped."""
    source, first_inbox, second_inbox = StreamSource(), Inbox(), Inbox()
    for minute in range(0, 30):
        source.add(at(minute), {"amount": np.full(10, 5.0)})
    first = _engine(db, source, HIGH_MEAN, inbox=first_inbox)
    first.evaluate(at(0))  # pending since minute 0
    first.store.release()
    second = _engine(db, source, HIGH_MEAN, inbox=second_inbox)
    assert [t.to_state for t in second.evaluate(at(10))] == [State.FIRING]  # for_ counted from minute 0
    second.store.release()
    third_inbox = Inbox()
    third = _engine(db, source, HIGH_MEAN, inbox=third_inbox)
    assert third.evaluate(at(20)) == []
    assert (first_inbox.received, len(second_inbox.received), third_inbox.received) == ([], 1, [])


def test_star_expands_to_every_column_and_a_vanished_column_resolves(db: Database) -> None:
    """``column="*"``: one alert per column the metric reports; a column that stops being
    reported (no traffic) no longer holds, so its alert resolves."""
    rule = Alert("hot", "fraud", "mean", threshold=3.0, window="1m", for_=0)
    source, inbox = StreamSource(), Inbox()
    engine = _engine(db, source, rule, inbox=inbox)
    source.add(at(0), {"a": [5.0], "b": [1.0], "c": [7.0]})
    engine.evaluate(at(0))
    source.add(at(2), {"b": [1.0], "c": [7.0]})
    engine.evaluate(at(2))
    assert inbox.statuses() == [("hot", "a", "firing"), ("hot", "c", "firing"), ("hot", "a", "resolved")]


def test_a_failing_source_changes_nothing_and_is_counted(db: Database) -> None:
    """A rule whose metric cannot be read keeps its states (nothing fires, nothing
    resolves), is counted, and the other rules are still evaluated."""
    rule = Alert("hot", "fraud", "mean", column="amount", threshold=3.0, window="1h", for_=0)
    other = Alert("unknown-metric", "fraud", "nope", threshold=1.0)
    source, inbox, registry = StreamSource(), Inbox(), CollectorRegistry()
    engine = _engine(db, source, rule, other, inbox=inbox, metrics=AlertMetrics(registry))
    source.add(at(0), {"amount": [5.0]})
    engine.evaluate(at(0))
    source.broken = True
    assert engine.evaluate(at(5)) == []
    assert inbox.statuses() == [("hot", "amount", "firing")]
    assert registry.get_sample_value("stalwart_alert_evaluation_failures_total", {"alert": "hot"}) == 1
    assert registry.get_sample_value("stalwart_alert_evaluation_failures_total", {"alert": "unknown-metric"}) == 2


# -- one evaluator -----------------------------------------------------------------------


def test_one_process_evaluates_on_sqlite_and_another_takes_over_after_the_lease(db: Database) -> None:
    """Two engines on one SQLite database: the lease holder evaluates, the other does not
    (until the lease expires or is released)."""
    source = StreamSource()
    source.add(at(0), {"amount": [5.0]})
    rule = Alert("hot", "fraud", "mean", column="amount", threshold=3.0, window="1h", for_=0)
    one, two = Inbox(), Inbox()
    a = AlertEngine([rule], source, AlertStore(db, lease_seconds=60), notifiers=[one])
    b = AlertEngine([rule], source, AlertStore(db, lease_seconds=60), notifiers=[two])
    a.evaluate(at(0))
    assert b.evaluate(at(0.5)) == []
    assert b.store.lead(at(0.5).timestamp()) is False
    assert b.store.lead(at(2).timestamp()) is True  # a's lease ran out unrenewed
    assert a.store.lead(at(2.5).timestamp()) is False
    b.store.release()
    assert a.store.lead(at(3).timestamp()) is True
    assert (len(one.received), two.received) == (1, [])


# -- outputs -----------------------------------------------------------------------------


def test_firing_and_resolved_go_to_the_audit_log_in_its_chain(settings: Settings, registry: Registry) -> None:
    """The audit log gets alert.firing and alert.resolved (not pending), subject the
    deployment, and its hash chain stays intact."""
    source = StreamSource()
    engine = AlertEngine([HIGH_MEAN], source, AlertStore(registry.db), audit=audit_hook("alerts@test"))
    for minute in range(0, 11):
        source.add(at(minute), {"amount": [5.0]})
    for minute in (0, 10):
        engine.evaluate(at(minute))
    source.add(at(15), {"amount": np.zeros(100)})
    engine.evaluate(at(15))
    events = query_events(registry.db, subject="fraud")
    assert [(e.action, e.actor, e.detail["alert"], e.detail["column"]) for e in reversed(events)] == [
        ("alert.firing", "alerts@test", "high-mean", "amount"),
        ("alert.resolved", "alerts@test", "high-mean", "amount"),
    ]
    assert events[0].detail["from"] == "firing"
    assert events[0].at == at(15).timestamp()
    assert verify_audit(registry.db) is None


def test_prometheus_gauges_follow_the_alert_and_the_scores(db: Database) -> None:
    """stalwart_alert_firing is 1 while firing and 0 once resolved; stalwart_drift_score
    holds each column's last score; a replica that does not evaluate exports the same
    firing state from the database."""
    rule = Alert("hot", "fraud", "mean", threshold=3.0, window="1m", for_=0, severity="critical")
    source, registry, follower_registry = StreamSource(), CollectorRegistry(), CollectorRegistry()
    engine = _engine(db, source, rule, metrics=AlertMetrics(registry))
    follower = _engine(db, source, rule, metrics=AlertMetrics(follower_registry))
    labels = {"alert": "hot", "deployment": "fraud", "column": "amount", "severity": "critical"}
    source.add(at(0), {"amount": [5.0, 6.0]})
    engine.evaluate(at(0))
    assert follower.evaluate(at(0.5)) == []
    for reg in (registry, follower_registry):
        assert reg.get_sample_value("stalwart_alert_firing", labels) == 1.0
    assert registry.get_sample_value("stalwart_drift_score", {"deployment": "fraud", "column": "amount", "method": "mean"}) == 5.5
    source.add(at(2), {"amount": [1.0]})
    engine.evaluate(at(2))
    assert registry.get_sample_value("stalwart_alert_firing", labels) == 0.0


# -- false-alarm control -----------------------------------------------------------------


def test_benjamini_hochberg_rejects_what_scipy_adjusted_p_values_reject() -> None:
    """Across many random sets of p-values, the columns BH fires are exactly those whose
    BH-adjusted p-value (scipy.stats.false_discovery_control) is at most q."""
    rng = np.random.default_rng(3)
    for trial in range(200):
        m = int(rng.integers(1, 40))
        p = np.concatenate([rng.uniform(size=m), rng.uniform(0, 0.01, size=int(rng.integers(0, 5)))])
        q = float(rng.choice([0.01, 0.05, 0.1]))
        names = {f"c{i}": float(v) for i, v in enumerate(p)}
        adjusted = stats.false_discovery_control(p, method="bh")
        expected = {f"c{i}" for i, a in enumerate(adjusted) if a <= q}
        assert benjamini_hochberg(names, q) == expected, trial


def test_benjamini_hochberg_treats_nan_as_no_evidence_and_checks_q() -> None:
    assert benjamini_hochberg({"a": float("nan"), "b": 0.001}, 0.05) == {"b"}
    assert benjamini_hochberg({}, 0.05) == set()
    with pytest.raises(ConfigError, match="false discovery rate"):
        benjamini_hochberg({"a": 0.1}, 1.5)


def test_bh_fires_far_less_on_stationary_columns_and_still_fires_on_a_shift(db: Database) -> None:
    """A ``*`` KS rule over 30 columns with correction='bh': over a day of hourly windows of
    stationary data it fires a handful of times at most (BH bounds the chance of any false
    alarm in a window by q), where a per-column p < 0.05 fires about 1.5 per window; one
    column shifted by half a standard deviation fires."""
    rng = np.random.default_rng(11)
    columns = [f"f{i}" for i in range(30)]
    source = StreamSource({c: rng.normal(size=2000) for c in columns})
    bh = Alert("ks-bh", "fraud", "ks", threshold=0.05, correction="bh", window="1h", for_=0)
    inbox = Inbox()
    engine = _engine(db, source, bh, inbox=inbox)
    naive_fires = 0
    for hour in range(24):
        now = at(60 * hour + 30)
        source.add(now, {c: rng.normal(size=500) for c in columns})
        engine.evaluate(now)
        naive_fires += sum(1 for obs in source.values("fraud", "ks", 3600, now).values() if obs.p_value is not None and obs.p_value < 0.05)
    bh_fires = sum(1 for n in inbox.received if n.status == "firing")
    assert naive_fires >= 15
    assert bh_fires <= 4
    assert bh_fires * 5 < naive_fires
    before = len(inbox.received)
    now = at(60 * 24 + 30)
    source.add(now, {c: rng.normal(loc=0.5 if c == "f7" else 0.0, size=500) for c in columns})
    engine.evaluate(now)
    assert ("ks-bh", "f7", "firing") in [(n.alert, n.labels["column"], n.status) for n in inbox.received[before:]]


def test_calibrated_threshold_holds_the_false_alarm_rate_on_fresh_stationary_windows() -> None:
    """The 0.99 quantile of the bootstrap KS statistic, for windows of 50 rows, is crossed
    by about 1 % of new windows from the reference's distribution (on average over seeds:
    one estimate from 400 draws moves by a lattice step of the statistic); it is larger for
    smaller windows; the same seed gives the same threshold."""
    rng = np.random.default_rng(5)
    reference = rng.normal(size=4_000)

    def ks(ref: np.ndarray, window: np.ndarray) -> float:
        return float(stats.ks_2samp(ref, window).statistic)

    fresh = np.array([ks(reference, rng.normal(size=50)) for _ in range(1500)])
    thresholds = [calibrate_threshold(reference, ks, window_size=50, quantile=0.99, n_boot=400, seed=s) for s in range(5)]
    assert thresholds[1] == calibrate_threshold(reference, ks, window_size=50, quantile=0.99, n_boot=400, seed=1)
    rates = [float(np.mean(fresh > t)) for t in thresholds]
    assert np.mean(rates) <= 0.02
    assert max(rates) <= 0.04
    assert np.mean(fresh > 0.1) > 0.5  # what a fixed, uncalibrated threshold would do
    assert calibrate_threshold(reference, ks, window_size=500, n_boot=200, seed=1) < min(thresholds)


def test_calibration_cost_is_bounded_whatever_is_asked() -> None:
    """n_boot and window sizes beyond the bounds are capped: asking for a billion windows of
    a billion rows still finishes in moments."""
    calls: list[int] = []

    def mean_gap(ref: np.ndarray, window: np.ndarray) -> float:
        calls.append(window.size)
        return abs(float(window.mean() - ref.mean()))

    started = time.perf_counter()
    calibrate_threshold(np.arange(1000.0), mean_gap, window_size=10**9, n_boot=10**9, seed=0)
    assert len(calls) == 2_000
    assert max(calls) == 100_000
    assert time.perf_counter() - started < 30
    with pytest.raises(ConfigError, match="empty reference"):
        calibrate_threshold(np.array([np.nan]), mean_gap, window_size=5)


def test_a_calibrated_rule_stays_quiet_where_a_fixed_threshold_fires(db: Database) -> None:
    """On small stationary windows a KS threshold of 0.1 fires most hours; the same rule
    with calibrate=True (threshold learned per column from the reference) does not, and
    still fires on a real shift."""
    rng = np.random.default_rng(8)
    reference = {c: rng.normal(size=5000) for c in ("a", "b")}
    source = StreamSource(reference)
    fixed = Alert("fixed", "fraud", "ks", threshold=0.1, window="1h", for_=0)
    learned = Alert("learned", "fraud", "ks", threshold=0.1, window="1h", for_=0, calibrate=True)

    def ks(ref: np.ndarray, window: np.ndarray) -> float:
        return float(stats.ks_2samp(ref, window).statistic)

    calibrator = ReferenceCalibrator(lambda deployment, column: reference.get(column), {"ks": ks}, n_boot=300, seed=2)
    inbox = Inbox()
    engine = _engine(db, source, fixed, learned, inbox=inbox, calibrator=calibrator)
    for hour in range(10):
        now = at(60 * hour + 30)
        source.add(now, {c: rng.normal(size=40) for c in reference})
        engine.evaluate(now)
    assert any(n.alert == "fixed" for n in inbox.received)
    assert not any(n.alert == "learned" for n in inbox.received)
    now = at(60 * 10 + 30)
    source.add(now, {"a": rng.normal(loc=1.5, size=40), "b": rng.normal(size=40)})
    engine.evaluate(now)
    assert ("learned", "a", "firing") in inbox.statuses()


def test_the_scheduler_evaluates_on_its_thread_until_stopped(db: Database) -> None:
    """AlertScheduler calls the engine every interval off the caller's thread; stop joins
    it and releases the lead so another replica can take over at once."""
    source, inbox = StreamSource(), Inbox()
    rule = Alert("hot", "fraud", "mean", column="amount", threshold=3.0, window="1d", for_=0)
    from datetime import UTC, datetime

    source.add(datetime.now(UTC), {"amount": [5.0]})
    engine = _engine(db, source, rule, inbox=inbox)
    scheduler = AlertScheduler(engine, interval=0.05)
    scheduler.start()
    deadline = time.monotonic() + 10
    while not inbox.received and time.monotonic() < deadline:
        time.sleep(0.02)
    scheduler.stop()
    assert inbox.statuses() == [("hot", "amount", "firing")]
    assert AlertStore(db).lead() is True
