"""Live profiles: per-minute buckets per replica, merged on read to what one process would
have built; rollups equal to their minutes; buckets written again merge; retention; drops
counted, never blocking."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stalwart.config import Settings
from stalwart.monitoring.live_profiles import (
    LiveProfiles,
    Observation,
    Retention,
    delete_expired,
    merged_profile,
    read_profiles,
)
from stalwart.monitoring.profiles import FeatureProfile, Profile
from stalwart.storage import Database

HOUR0 = 1_700_000_000 // 86400 * 86400 + 22 * 3600  # 22:00 UTC: two hours from a day's end
FEATURES = ("feature:amount", "feature:age")


def _obs(t_s: float, amount: np.ndarray[Any, Any], age: np.ndarray[Any, Any], city: list[Any], *, variant: str = "primary") -> Observation:
    return Observation(
        deployment="fraud", variant=variant, model="fraud-gbm", version=3,
        time_ns=int(t_s * 1e9), rows=len(amount),
        columns={FEATURES: np.column_stack([amount, age]), "feature:city": city, "output:score": amount / 1000},
    )


def _stream(n: int, seed: int, start: float = HOUR0, span: float = 3 * 3600) -> list[Observation]:
    """``n`` requests of 1 to 3 rows spread over ``span`` seconds: skewed amounts, some NaN,
    cities (some null)."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(start, start + span, n))
    out = []
    for t_s in times:
        rows = int(rng.integers(1, 4))
        amount = rng.lognormal(4, 1, rows)
        amount[rng.random(rows) < 0.05] = np.nan
        age = rng.integers(18, 90, rows).astype(np.float64)
        city = [None if rng.random() < 0.1 else str(rng.choice(["Oslo", "Lima", "Pune", "Kyiv"])) for _ in range(rows)]
        out.append(_obs(float(t_s), amount, age, city))
    return out


def _exact(observations: list[Observation]) -> dict[str, np.ndarray[Any, Any]]:
    amount = np.concatenate([o.columns[FEATURES][:, 0] for o in observations])
    return {"amount": amount, "age": np.concatenate([o.columns[FEATURES][:, 1] for o in observations])}


def _live(db: Database, replica: str, **kwargs: Any) -> LiveProfiles[Observation]:
    return LiveProfiles(db, extract=lambda o: o, replica=replica, **kwargs)


def _feed(live: LiveProfiles[Observation], observations: list[Observation]) -> None:
    for o in observations:
        live.submit(o)
    assert live.flush()


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database("sqlite:///:memory:")
    yield database
    database.dispose()


def _assert_same(got: FeatureProfile, want: FeatureProfile, exact: np.ndarray[Any, Any] | None = None) -> None:
    """Equal counts, extremes and frequencies; quantiles within the sketches' rank error
    (checked against the exact values when given)."""
    assert (got.kind, got.count, got.nulls, got.nan, got.inf, got.mismatched) == (
        want.kind, want.count, want.nulls, want.nan, want.inf, want.mismatched,
    )
    assert (got.min, got.max) == (want.min, want.max)
    assert got.total == pytest.approx(want.total, rel=1e-12)
    assert got.frequencies() == want.frequencies()
    if exact is not None:
        values = np.sort(exact[np.isfinite(exact)])
        bound = max(got.rank_error, want.rank_error)
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            for profile in (got, want):
                estimate = profile.quantile(q)
                assert estimate is not None
                # Ties: the estimate's rank is anywhere from below its first copy to its last.
                low = np.searchsorted(values, estimate, side="left") / len(values)
                high = np.searchsorted(values, estimate, side="right") / len(values)
                assert low - bound - 1 / len(values) <= q <= high + bound + 1 / len(values), (q, low, high)


def test_requests_are_profiled_per_minute_of_arrival(db: Database) -> None:
    """Each request lands in the minute it arrived in (a request at :59.999 in the earlier
    one), one row per minute, counting that minute's rows; the hour row counts them all."""
    live = _live(db, "a")
    _feed(live, [
        _obs(HOUR0 + 0.5, np.array([1.0]), np.array([20.0]), ["Oslo"]),
        _obs(HOUR0 + 59.999, np.array([2.0, 3.0]), np.array([30.0, 40.0]), ["Lima", None]),
        _obs(HOUR0 + 60.0, np.array([4.0]), np.array([50.0]), ["Oslo"]),
        _obs(HOUR0 + 185.0, np.array([5.0]), np.array([60.0]), ["Pune"]),
    ])
    minutes = read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 3600, granularity="minute")
    assert [(start.timestamp() - HOUR0, p.rows) for start, p in minutes] == [(0, 3), (60, 1), (180, 1)]
    first = minutes[0][1]
    assert (first["feature:amount"].min, first["feature:amount"].max) == (1.0, 3.0)
    assert first["feature:city"].frequencies() == {"Oslo": 1, "Lima": 1}
    assert first["feature:city"].nulls == 1
    assert first["output:score"].count == 3
    assert minutes[0][0] == datetime.fromtimestamp(HOUR0, UTC)
    (hour_start, hour), = read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 3600, granularity="hour")
    assert (hour_start.timestamp(), hour.rows, hour["feature:age"].count) == (HOUR0, 5, 5)


def test_profiles_of_two_replicas_merge_to_what_one_process_builds(any_db_settings: Settings, db: Database) -> None:
    """The same requests split over two replicas (on SQLite and on PostgreSQL) read back,
    merged, as the profile one process builds from all of them: same counts, nulls, NaN,
    extremes and frequencies; quantiles within the sketch's rank error of the exact ones."""
    stream = _stream(3000, seed=1)
    shared = Database(any_db_settings.resolved_db_url())
    try:
        a, b = _live(shared, "replica-a"), _live(shared, "replica-b")
        _feed(a, stream[0::2])
        _feed(b, stream[1::2])
        _feed(_live(db, "solo"), stream)
        span = {"since": HOUR0, "until": HOUR0 + 3 * 3600}
        two = merged_profile(shared, "fraud", **span)
        one = merged_profile(db, "fraud", **span)
        by_minute = read_profiles(shared, "fraud", granularity="minute", **span)
    finally:
        shared.dispose()
    exact = _exact(stream)
    assert two.rows == one.rows == len(exact["amount"])
    assert set(two) == set(one) == {*FEATURES, "feature:city", "output:score"}
    _assert_same(two["feature:amount"], one["feature:amount"], exact["amount"])
    _assert_same(two["feature:age"], one["feature:age"], exact["age"])
    _assert_same(two["feature:city"], one["feature:city"])
    assert two["feature:amount"].nan == int(np.isnan(exact["amount"]).sum())
    assert sum(p.rows for _, p in by_minute) == two.rows
    assert len(by_minute) == 180


def test_rollups_equal_the_merge_of_their_minutes(db: Database) -> None:
    """An hour row is its 60 minutes merged and a day row its hours merged (exact counts,
    extremes and frequencies; quantiles within the rank error), also across a day's end."""
    stream = _stream(2000, seed=2, start=HOUR0 + 600, span=3 * 3600)  # 22:10 to 01:10 the next day
    _feed(_live(db, "a"), stream)
    since, until = HOUR0, HOUR0 + 4 * 3600
    minutes = read_profiles(db, "fraud", since=since, until=until, granularity="minute")
    hours = read_profiles(db, "fraud", since=since, until=until, granularity="hour")
    days = read_profiles(db, "fraud", since=since - 86400, until=until, granularity="day")
    assert [h.timestamp() - HOUR0 for h, _ in hours] == [0, 3600, 7200, 10800]
    assert [d.timestamp() for d, _ in days] == [HOUR0 - 22 * 3600, HOUR0 + 2 * 3600]
    for start, hour in hours:
        inside = [p for s, p in minutes if start <= s < datetime.fromtimestamp(start.timestamp() + 3600, UTC)]
        merged = inside[0]
        for p in inside[1:]:
            merged = merged.merge(p)
        assert hour.rows == merged.rows
        exact = _exact([o for o in stream if start.timestamp() <= o.time_ns / 1e9 < start.timestamp() + 3600])
        for name in hour:
            _assert_same(hour[name], merged[name], exact["amount"] if name == "feature:amount" else None)
    first_day = hours[0][1].merge(hours[1][1])
    _assert_same(days[0][1]["feature:city"], first_day["feature:city"])
    _assert_same(days[0][1]["feature:amount"], first_day["feature:amount"], _exact([o for o in stream if o.time_ns < (HOUR0 + 7200) * 1e9])["amount"])


def test_a_span_is_covered_by_days_hours_and_minutes_exactly(db: Database) -> None:
    """``merged_profile`` over a ragged span reads day, hour and minute rows and counts
    exactly the requests whose minute starts in the span, as minute rows alone would."""
    start = HOUR0 - 2 * 86400
    stream = [_obs(start + 30 + 60 * i, np.array([float(i)]), np.array([1.0]), ["Oslo"]) for i in range(0, 3 * 1440, 7)]
    _feed(_live(db, "a"), stream)
    since, until = start + 37 * 60 + 5, start + 2 * 86400 + 5 * 3600 + 11 * 60 + 30
    profile = merged_profile(db, "fraud", since=since, until=until)
    expected = [o for o in stream if since <= (o.time_ns // 60_000_000_000) * 60 < until]
    assert profile.rows == len(expected) == merged_profile(db, "fraud", since=since, until=until, granularity="minute").rows
    assert profile["feature:amount"].min == expected[0].columns[FEATURES][0, 0]
    assert profile["feature:amount"].max == expected[-1].columns[FEATURES][0, 0]


def test_variants_are_kept_apart_and_merged_when_not_named(db: Database) -> None:
    """Reading one variant sees only its requests; reading none merges them."""
    _feed(_live(db, "a"), [
        _obs(HOUR0 + 1, np.array([1.0]), np.array([1.0]), ["Oslo"], variant="primary"),
        _obs(HOUR0 + 2, np.array([2.0, 3.0]), np.array([1.0, 1.0]), ["Lima", "Lima"], variant="canary"),
    ])
    span = {"since": HOUR0, "until": HOUR0 + 60}
    assert merged_profile(db, "fraud", variant="canary", **span).rows == 2
    assert merged_profile(db, "fraud", variant="primary", **span)["feature:city"].frequencies() == {"Oslo": 1}
    assert merged_profile(db, "fraud", **span).rows == 3
    assert merged_profile(db, "other", **span).rows == 0


def test_a_minute_is_written_once_over_and_merged_when_written_again(db: Database) -> None:
    """A minute is written two seconds after it ends, not before; a request of that minute
    profiled later (answered late) is merged into the replica's row, not a second row."""
    now = [int((HOUR0 + 30) * 1e9)]
    live = _live(db, "a", clock=lambda: now[0])
    live.submit(_obs(HOUR0 + 10, np.array([1.0]), np.array([1.0]), ["Oslo"]))
    assert live.flush(final=False)
    assert read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 60) == []
    now[0] = int((HOUR0 + 62.5) * 1e9)
    assert live.flush(final=False)
    live.submit(_obs(HOUR0 + 59.5, np.array([7.0]), np.array([1.0]), ["Lima"]))
    assert live.flush(final=False)
    (_, minute), = read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 60, granularity="minute")
    assert (minute.rows, minute["feature:amount"].max, minute["feature:city"].frequencies()) == (2, 7.0, {"Oslo": 1, "Lima": 1})
    (_, hour), = read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 3600, granularity="hour")
    assert hour.rows == 2
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM profile_buckets WHERE granularity = 'minute'").scalar_one() == 1


def test_the_worker_thread_profiles_and_close_writes_the_open_minute(db: Database) -> None:
    """Started, the worker drains the queue on its own; ``close`` writes the minute still
    open, so nothing answered before shutdown is lost."""
    now_s = time.time()
    live = _live(db, "a", flush_seconds=0.05)
    live.start()
    live.submit(_obs(now_s, np.array([1.0, 2.0]), np.array([1.0, 2.0]), ["Oslo", "Lima"]))
    deadline = time.monotonic() + 5
    while live._queue and time.monotonic() < deadline:
        time.sleep(0.01)
    live.close()
    profile = merged_profile(db, "fraud", since=now_s - 60, until=now_s + 60, granularity="minute")
    assert profile.rows == 2


def test_a_full_queue_drops_and_counts_without_blocking(db: Database) -> None:
    """Past ``max_queue`` queued requests, new ones are dropped at once and counted in
    ``stalwart_live_profiles_dropped_total{reason="queue_full"}``; the ones queued are
    profiled."""
    registry = CollectorRegistry()
    live = _live(db, "a", max_queue=100, registry=registry)
    item = _obs(HOUR0, np.array([1.0]), np.array([1.0]), ["Oslo"])
    # Not started: nothing drains the queue, so a submit that waited for room would hang here.
    for _ in range(100_100):
        live.submit(item)
    assert registry.get_sample_value("stalwart_live_profiles_dropped_total", {"reason": "queue_full"}) == 100_000
    assert live.flush()
    assert merged_profile(db, "fraud", since=HOUR0, until=HOUR0 + 60).rows == 100
    assert registry.get_sample_value("stalwart_live_profiles_requests_total") == 100


def test_an_item_that_cannot_be_profiled_is_counted_and_the_rest_are_profiled(db: Database) -> None:
    """An extractor failing on one item costs that item only (counted as unprofilable)."""
    registry = CollectorRegistry()

    def extract(item: Observation | None) -> Observation:
        if item is None:
            raise ValueError("broken request")
        return item

    live: LiveProfiles[Observation | None] = LiveProfiles(db, extract=extract, replica="a", registry=registry)
    live.submit(None)
    live.submit(_obs(HOUR0, np.array([1.0]), np.array([1.0]), ["Oslo"]))
    assert live.flush()
    assert registry.get_sample_value("stalwart_live_profiles_dropped_total", {"reason": "unprofilable"}) == 1
    assert merged_profile(db, "fraud", since=HOUR0, until=HOUR0 + 60).rows == 1


def test_retention_deletes_old_minutes_and_keeps_their_rollups(db: Database) -> None:
    """Minute rows past their retention go; the hour and day rows holding them stay, so
    what happened then can still be read, by the hour."""
    _feed(_live(db, "a"), _stream(200, seed=3, span=3600))
    now = HOUR0 + 49 * 3600
    deleted = delete_expired(db, Retention(minute_hours=48, hour_days=30, day_days=None), now)
    assert deleted > 0
    assert read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 3600, granularity="minute") == []
    (_, hour), = read_profiles(db, "fraud", since=HOUR0, until=HOUR0 + 3600, granularity="hour")
    assert hour.rows == sum(o.rows for o in _stream(200, seed=3, span=3600))
    assert delete_expired(db, Retention(minute_hours=48, hour_days=1, day_days=None), now) == 1
    assert len(read_profiles(db, "fraud", since=HOUR0 - 86400, until=now, granularity="day")) == 1


def test_reads_name_bad_arguments() -> None:
    """Naive datetimes, reversed spans and unbounded bucket counts are refused with a
    message saying what to give instead."""
    from stalwart.errors import ConfigError

    database = Database("sqlite:///:memory:")
    try:
        with pytest.raises(ConfigError, match="timezone"):
            read_profiles(database, "fraud", since=datetime(2024, 1, 1))  # a naive datetime: the mistake under test
        with pytest.raises(ConfigError, match="before since"):
            read_profiles(database, "fraud", since=HOUR0, until=HOUR0 - 1)
        with pytest.raises(ConfigError, match="coarser granularity"):
            read_profiles(database, "fraud", since=0, until=HOUR0, granularity="minute")
    finally:
        database.dispose()


def test_stored_profiles_read_back_as_profiles(db: Database) -> None:
    """What is read back is a full :class:`Profile` (sketches included), JSON-serialisable."""
    _feed(_live(db, "a"), _stream(50, seed=4, span=60))
    profile = merged_profile(db, "fraud", since=HOUR0, until=HOUR0 + 60)
    assert isinstance(profile, Profile)
    again = Profile.from_dict(profile.to_dict())
    assert again["feature:amount"].quantile(0.5) == profile["feature:amount"].quantile(0.5)
