"""A failing feature source: stale values within the declared bound, then declared
defaults, and an error only when a feature has no default; always said in ``degraded``."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from stalwart.cache import FeatureCache
from stalwart.errors import FeatureError
from stalwart.features import OnlineFeatures
from stalwart.features.caching import bind_caches
from stalwart.features.readers import make_reader
from stalwart.project import FeatureSet, Latest, Window
from stalwart.resilience import Guard, GuardConfig
from stalwart.storage import DatabasePool
from tests.features.conftest import CARD, T0, CountingReader, FakeClock, card_features

POLICY = {"ttl": 10, "max_staleness": 60, "xfetch_beta": 0}
DEFAULTS = {"n_1d": 0, "sum_1d": 0.0, "mean_3d": 0.0, "last_amount": 0.0, "last_category": "none"}
NAMES = ["n_1d", "sum_1d", "mean_3d", "last_amount", "last_category", "ratio"]


def rows(resolved: Any) -> list[dict[str, Any]]:
    return [{name: resolved.columns[name][i].item() if hasattr(resolved.columns[name][i], "item") else resolved.columns[name][i] for name in NAMES} for i in range(resolved.rows)]


def expected_default(amount: float) -> dict[str, Any]:
    return {**DEFAULTS, "ratio": amount / 1.0}


class Sick:
    """Makes a source fail in one of three ways: its breaker forced open, the database
    raising, or the database hanging past the guard's timeout."""

    def __init__(self, mode: str, reader: CountingReader, guard: Guard) -> None:
        self.mode = mode
        self.reader = reader
        self.guard = guard

    def start(self) -> str:
        if self.mode == "open":
            assert self.guard.breaker is not None
            self.guard.breaker.transition_to("FORCED_OPEN")
            return "CallNotPermitted"
        if self.mode == "raises":
            self.reader.error = FeatureError("source 'tx': query failed: connection refused")
            return "FeatureError"
        self.reader.gate = asyncio.Event()
        return "CallTimeout"

    def stop(self) -> None:
        if self.reader.gate is not None:
            self.reader.gate.set()


@pytest.mark.parametrize("mode", ["open", "raises", "hangs"])
async def test_a_failing_source_serves_stale_values_within_the_bound_then_defaults(mode: str, sqlite_pool: DatabasePool) -> None:
    """While the source fails, entities cached at most max_staleness past their TTL get
    those values, the others their features' defaults; past the bound, defaults for all.
    The request carries on and ``degraded`` says what happened and why."""
    fs = card_features(cache=POLICY)
    reader = CountingReader(make_reader(fs.source, sqlite_pool))
    # Long enough that a healthy SQLite read on a loaded machine never times out; a hang costs this.
    guard = Guard("tx", GuardConfig.model_validate({"timeout": {"timeout_duration": "500ms"}}))
    clock = FakeClock(T0 + dt.timedelta(days=2))
    refs = [fs[n] for n in NAMES]
    online = OnlineFeatures(refs, {"tx": reader}, guards={"tx": guard}, caches=bind_caches([fs], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    healthy = await online.resolve([{"card_id": 1}, {"card_id": 2}], [{"amount": 50.0}, {"amount": 60.0}])
    assert healthy.degraded == []
    clock.advance(30)  # past the TTL, within max_staleness
    sick = Sick(mode, reader, guard)
    reason = sick.start()
    try:
        during = await online.resolve([{"card_id": 1}, {"card_id": 2}, {"card_id": 3}], [{"amount": 50.0}, {"amount": 60.0}, {"amount": 5.0}])
        assert rows(during)[:2] == rows(healthy)
        assert rows(during)[2] == expected_default(5.0)
        assert during.degraded == [
            {"level": "feature_defaults", "source": "tx", "feature_set": "card", "reason": reason, "entities": 1},
            {"level": "stale_features", "source": "tx", "feature_set": "card", "reason": reason, "entities": 2},
        ]
        assert during.cache["card"]["stale"] == 2
        assert during.cache["card"]["defaults"] == 1
        clock.advance(41)  # 71 s after loading: beyond ttl + max_staleness
        beyond = await online.resolve([{"card_id": 1}], [{"amount": 50.0}])
        assert rows(beyond) == [expected_default(50.0)]
        assert beyond.degraded == [{"level": "feature_defaults", "source": "tx", "feature_set": "card", "reason": reason, "entities": 1}]
    finally:
        sick.stop()


async def test_a_failing_source_without_a_cache_serves_defaults(sqlite_pool: DatabasePool) -> None:
    """No cache, no stale values: every entity gets the declared defaults, and says so."""
    fs = card_features(cache=False)
    reader = CountingReader(make_reader(fs.source, sqlite_pool))
    online = OnlineFeatures([fs[n] for n in NAMES], {"tx": reader})
    reader.error = OSError("connection reset by peer")
    resolved = await online.resolve([{"card_id": 1}, {"card_id": 1}, {"card_id": 2}], [{"amount": 3.0}, {"amount": 4.0}, {"amount": 0.5}])
    assert rows(resolved) == [expected_default(3.0), expected_default(4.0), expected_default(0.5)]
    assert resolved.degraded == [{"level": "feature_defaults", "source": "tx", "feature_set": "card", "reason": "OSError", "entities": 2}]


async def test_the_request_deadline_bounds_a_source_without_a_guard(sqlite_pool: DatabasePool) -> None:
    """A hanging source costs a request no more than its deadline, guard or not."""
    fs = card_features(cache=False)
    reader = CountingReader(make_reader(fs.source, sqlite_pool))
    reader.gate = asyncio.Event()
    online = OnlineFeatures([fs["n_1d"]], {"tx": reader})
    started = time.monotonic()
    try:
        resolved = await online.resolve([{"card_id": 1}], deadline=started + 0.05)
    finally:
        reader.gate.set()
    assert time.monotonic() - started < 1.0
    assert resolved.columns["n_1d"].tolist() == [0]
    assert resolved.degraded[0]["reason"] == "CallTimeout"


async def test_a_feature_without_a_default_turns_a_source_failure_into_an_error(sqlite_pool: DatabasePool) -> None:
    """When a source fails and a feature involved declares no default, resolution raises
    FeatureError naming the source, the cause and the feature, for the caller's ladder
    (fallback model, last good prediction) to take over: never a silent NaN."""
    base = card_features()
    strict = FeatureSet("strict", entity=CARD, source=base.source, features=[
        Window("n", agg="count", window="1d"),
        Latest("last", column="amount"),
    ], cache=POLICY)
    reader = CountingReader(make_reader(base.source, sqlite_pool))
    clock = FakeClock(T0 + dt.timedelta(days=2))
    cached = OnlineFeatures([strict["n"], strict["last"]], {"tx": reader}, caches=bind_caches([strict], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    direct = OnlineFeatures([strict["n"], strict["last"]], {"tx": reader}, clock=clock.ns)
    await cached.resolve([{"card_id": 1}])
    clock.advance(30)
    reader.error = FeatureError("source 'tx': query failed: server closed the connection")
    stale = await cached.resolve([{"card_id": 1}])  # within the bound: served, no error
    assert stale.degraded[0]["level"] == "stale_features"
    message = r"source 'tx' failed \(FeatureError: .*server closed.*\) for 1 entity, and feature 'last' of 'strict' declares no default"
    with pytest.raises(FeatureError, match=message):
        await cached.resolve([{"card_id": 1}, {"card_id": 2}])
    with pytest.raises(FeatureError, match=message.replace("1 entity", "2 entities")):
        await direct.resolve([{"card_id": 1}, {"card_id": 2}])
    only_counts = OnlineFeatures([strict["n"]], {"tx": reader}, clock=clock.ns)
    assert (await only_counts.resolve([{"card_id": 1}])).columns["n"].tolist() == [0]


async def test_a_point_in_time_question_is_never_answered_with_defaults(sqlite_pool: DatabasePool) -> None:
    """With an explicit time (parity, back-tests) a failing source is an error: a
    point-in-time answer is exact or nothing."""
    fs = card_features(cache=POLICY)
    reader = CountingReader(make_reader(fs.source, sqlite_pool))
    online = OnlineFeatures([fs["n_1d"]], {"tx": reader}, caches=bind_caches([fs], FeatureCache()))
    reader.error = FeatureError("source 'tx': query failed: disk I/O error")
    with pytest.raises(FeatureError, match="disk I/O error"):
        await online.resolve([{"card_id": 1}], as_of_ns=int(T0.timestamp()) * 10**9)


async def test_bad_data_is_an_error_not_a_degradation(sqlite_pool: DatabasePool) -> None:
    """A definition the data cannot satisfy (a sum over text) is raised as it is, even
    with a cache and defaults: it is a bug to fix, not an outage to ride out."""
    base = card_features()
    wrong = FeatureSet("wrong", entity=CARD, source=base.source, features=[Window("total", agg="sum", column="category", window="1d")], cache=POLICY)
    reader = CountingReader(make_reader(base.source, sqlite_pool))
    clock = FakeClock(T0 + dt.timedelta(days=2))
    online = OnlineFeatures([wrong["total"]], {"tx": reader}, caches=bind_caches([wrong], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    with pytest.raises(FeatureError, match="takes the sum of 'category', which holds non-numbers"):
        await online.resolve([{"card_id": 1}])


async def test_the_source_breaker_opens_and_then_spares_the_source(sqlite_pool: DatabasePool) -> None:
    """Fetches go through the source's guard: failures open its breaker, after which
    requests get defaults at once without calling the source at all."""
    fs = card_features(cache=False)
    reader = CountingReader(make_reader(fs.source, sqlite_pool))
    reader.error = FeatureError("source 'tx': query failed: too many connections")
    guard = Guard("tx", GuardConfig.model_validate({"breaker": {"minimum_number_of_calls": 2, "sliding_window_size": 2}}))
    online = OnlineFeatures([fs["n_1d"], fs["ratio"]], {"tx": reader}, guards={"tx": guard})
    assert online.sources == ["tx"]
    reasons = [(await online.resolve([{"card_id": 1}], [{"amount": 2.0}])).degraded[0]["reason"] for _ in range(4)]
    assert reasons == ["FeatureError", "FeatureError", "CallNotPermitted", "CallNotPermitted"]
    assert len(reader.calls) == 2
