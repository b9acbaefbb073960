"""Cached online features: the same numbers as without the cache, as time passes; one
source call for many requests; expiry exactly when a value changes by itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stalwart.cache import CacheMetrics, FeatureCache, RedisTier
from stalwart.errors import ConfigError
from stalwart.features import OnlineFeatures
from stalwart.features.caching import bind_caches, cache_policy
from stalwart.features.online import Resolved
from stalwart.features.readers import make_reader
from stalwart.project import FeatureRef, FeatureSet, RequestField, Window
from stalwart.storage import DatabasePool
from tests.conftest import REDIS_URL
from tests.features.conftest import (
    CARD,
    T0,
    TXN,
    CountingReader,
    FakeClock,
    card_features,
    load_table,
)

LONG = {"ttl": 6 * 86400, "negative_ttl": 6 * 86400}


def same(a: Resolved, b: Resolved) -> None:
    assert list(a.columns) == list(b.columns)
    for name, column in a.columns.items():
        other = b.columns[name]
        assert column.dtype == other.dtype, name
        if column.dtype.kind == "f":
            assert np.array_equal(column, other, equal_nan=True), (name, column, other)
        else:
            assert column.tolist() == other.tolist(), name


@pytest.fixture
async def caches(namespace: str) -> AsyncIterator[list[FeatureCache]]:
    """FeatureCaches a test builds, closed afterwards."""
    made: list[FeatureCache] = []
    yield made
    for cache in made:
        await cache.aclose()


def redis_cache(namespace: str, clock: FakeClock, **kwargs: Any) -> FeatureCache:
    tier = RedisTier.from_url(REDIS_URL, namespace=namespace)
    return FeatureCache(redis=tier, namespace=namespace, clock=clock.seconds, metrics=CacheMetrics(), **kwargs)


@pytest.mark.parametrize("tier", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_cached_features_equal_uncached_ones_as_windows_slide(
    tier: str, sqlite_pool: DatabasePool, namespace: str, caches: list[FeatureCache]
) -> None:
    """Over two simulated days of requests (windows sliding, latest values ageing, unknown
    entities), every feature served through the cache equals the uncached computation at
    the same instant, bit for bit and dtype for dtype, while most requests never reach
    the source: entries expire exactly when their values change by themselves."""
    policy = {**LONG, "memory": tier == "memory"}
    fs = card_features(cache=policy)
    reader = make_reader(fs.source, sqlite_pool)
    counting = CountingReader(reader)
    clock = FakeClock(T0 + dt.timedelta(days=1))
    cache = FeatureCache(clock=clock.seconds) if tier == "memory" else redis_cache(namespace, clock)
    caches.append(cache)
    refs: list[FeatureRef | RequestField] = [*(fs[n] for n in fs.feature_names), TXN.amount]
    plain = OnlineFeatures(refs, {"tx": reader}, clock=clock.ns)
    cached = OnlineFeatures(refs, {"tx": counting}, caches=bind_caches([fs], cache), clock=clock.ns)
    rng = np.random.default_rng(1)
    resolves = served = 0
    while clock.seconds() < (T0 + dt.timedelta(days=3)).timestamp():
        clock.advance(float(rng.exponential(900)))
        cards = rng.choice(np.arange(1, 24), size=int(rng.integers(1, 6)))  # 21-23 are unknown
        entities = [{"card_id": int(c)} for c in cards]
        values = [{"amount": float(a)} for a in rng.uniform(1, 100, size=len(cards))]
        want = await plain.resolve(entities, values)
        got = await cached.resolve(entities, values)
        same(want, got)
        assert got.degraded == []
        assert got.as_of_ns == clock.ns()
        stats = got.cache["card"]
        served += stats["memory"] + stats["redis"]
        resolves += 1
    assert resolves > 150
    assert served > resolves  # most entities came from the cache...
    assert 0 < len(counting.calls) < resolves  # ...and the source was called for the rest


async def test_an_entry_expires_when_an_event_leaves_its_window(sqlite_pool: DatabasePool) -> None:
    """A card whose only recent transaction is 59 minutes old is cached for one minute,
    whatever the TTL: then its hourly count drops to 0, and the cache reloads it."""
    frame = pd.DataFrame({
        "card_id": [7, 7],
        "ts": [T0 - dt.timedelta(hours=23), T0 - dt.timedelta(minutes=59)],
        "amount": [10.0, 20.0],
        "category": ["food", "fuel"],
    })
    load_table(sqlite_pool(None), frame)
    fs = card_features(cache=LONG)
    counting = CountingReader(make_reader(fs.source, sqlite_pool))
    clock = FakeClock(T0)
    online = OnlineFeatures([fs["n_1h"], fs["n_1d"]], {"tx": counting}, caches=bind_caches([fs], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    first = await online.resolve([{"card_id": 7}])
    assert (first.columns["n_1h"][0], first.columns["n_1d"][0]) == (1, 2)
    clock.advance(59.9)
    again = await online.resolve([{"card_id": 7}])
    assert again.columns["n_1h"][0] == 1
    assert len(counting.calls) == 1
    clock.advance(0.2)  # one hour after the event
    later = await online.resolve([{"card_id": 7}])
    assert (later.columns["n_1h"][0], later.columns["n_1d"][0]) == (0, 2)
    assert len(counting.calls) == 2


async def test_a_row_stored_for_later_takes_effect_on_time(sqlite_pool: DatabasePool) -> None:
    """A transaction already stored with a time ten minutes ahead (a scheduled payment)
    counts from that moment on: the cached value without it expires then."""
    frame = pd.DataFrame({
        "card_id": [7, 7],
        "ts": [T0 - dt.timedelta(hours=5), T0 + dt.timedelta(minutes=10)],
        "amount": [10.0, 20.0],
        "category": ["food", "fuel"],
    })
    load_table(sqlite_pool(None), frame)
    fs = card_features(cache=LONG)
    counting = CountingReader(make_reader(fs.source, sqlite_pool))
    clock = FakeClock(T0)
    online = OnlineFeatures([fs["n_1d"], fs["last_amount"]], {"tx": counting}, caches=bind_caches([fs], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    assert (await online.resolve([{"card_id": 7}])).columns["n_1d"].tolist() == [1]
    clock.advance(599)
    assert (await online.resolve([{"card_id": 7}])).columns["last_amount"].tolist() == [10.0]
    clock.advance(1)
    now = await online.resolve([{"card_id": 7}])
    assert (now.columns["n_1d"].tolist(), now.columns["last_amount"].tolist()) == ([2], [20.0])
    assert len(counting.calls) == 2


async def test_concurrent_requests_for_one_entity_make_one_source_call(sqlite_pool: DatabasePool) -> None:
    """100 requests at once for an entity nobody has asked for yet: one source fetch, and
    each request's transforms still use its own request values."""
    fs = card_features(cache=LONG)
    reader = make_reader(fs.source, sqlite_pool)
    counting = CountingReader(reader, delay=0.05)
    clock = FakeClock(T0 + dt.timedelta(days=4))
    online = OnlineFeatures([fs["n_1d"], fs["ratio"]], {"tx": counting}, caches=bind_caches([fs], FeatureCache(clock=clock.seconds)), clock=clock.ns)
    results = await asyncio.gather(*(online.resolve([{"card_id": 3}], [{"amount": float(i)}]) for i in range(100)))
    assert counting.calls == [[(3,)]]
    assert sum(r.cache["card"]["coalesced"] for r in results) == 99
    plain = OnlineFeatures([fs["n_1d"], fs["ratio"]], {"tx": reader}, clock=clock.ns)
    want = await plain.resolve([{"card_id": 3}] * 100, [{"amount": float(i)} for i in range(100)])
    assert [r.columns["ratio"][0] for r in results] == want.columns["ratio"].tolist()
    assert [r.columns["n_1d"][0] for r in results] == want.columns["n_1d"].tolist()


async def test_a_request_with_some_entities_cached_fetches_only_the_others(sqlite_pool: DatabasePool) -> None:
    """Entities already cached come from memory; the rest are fetched in one round trip."""
    fs = card_features(cache=LONG)
    counting = CountingReader(make_reader(fs.source, sqlite_pool))
    online = OnlineFeatures([fs["n_1d"]], {"tx": counting}, caches=bind_caches([fs], FeatureCache()))
    await online.resolve([{"card_id": c} for c in (1, 2, 3)])
    mixed = await online.resolve([{"card_id": c} for c in (4, 1, 5, 2, 6, 3, 4)])
    assert counting.calls == [[(1,), (2,), (3,)], [(4,), (5,), (6,)]]
    assert mixed.cache["card"]["memory"] == 3
    assert mixed.cache["card"]["loaded"] == 3
    assert mixed.rows == 7


async def test_a_changed_definition_never_reads_values_cached_by_the_old_one(sqlite_pool: DatabasePool) -> None:
    """Redefining a feature (same names, another window) is a new version: its values are
    computed afresh, never read from the old definition's entries in the shared cache."""
    cache = FeatureCache()
    old = card_features(cache=LONG)
    reader = make_reader(old.source, sqlite_pool)
    clock = FakeClock(T0 + dt.timedelta(days=3))
    await OnlineFeatures([old["n_1d"]], {"tx": reader}, caches=bind_caches([old], cache), clock=clock.ns).resolve([{"card_id": 1}])
    features = [Window("n_1d", agg="count", window="3d") if f.name == "n_1d" else f for f in old.features]
    new = FeatureSet("card", entity=CARD, source=old.source, features=features, cache=LONG)
    assert new.version != old.version
    counting = CountingReader(reader)
    got = await OnlineFeatures([new["n_1d"]], {"tx": counting}, caches=bind_caches([new], cache), clock=clock.ns).resolve([{"card_id": 1}])
    want = await OnlineFeatures([new["n_1d"]], {"tx": reader}, clock=clock.ns).resolve([{"card_id": 1}])
    assert len(counting.calls) == 1
    same(want, got)


async def test_an_explicit_time_bypasses_the_cache(sqlite_pool: DatabasePool) -> None:
    """A point-in-time question (the parity check) is answered from the source, never from
    values cached for "now"."""
    fs = card_features(cache=LONG)
    counting = CountingReader(make_reader(fs.source, sqlite_pool))
    cache = FeatureCache()
    online = OnlineFeatures([fs["n_1d"]], {"tx": counting}, caches=bind_caches([fs], cache))
    t = int((T0 + dt.timedelta(days=2)).timestamp()) * 10**9
    for _ in range(3):
        resolved = await online.resolve([{"card_id": 1}], as_of_ns=t)
        assert resolved.cache == {}
        assert resolved.as_of_ns == t
    assert len(counting.calls) == 3
    assert len(cache.memory) == 0


def test_the_cache_policy_is_checked_and_is_not_part_of_the_version() -> None:
    """A FeatureSet's cache policy is validated when bound (errors name the set and the
    field), False turns the cache off, and no policy changes the definition's version."""
    plain = card_features()
    tuned = card_features(cache={"ttl": 30, "max_staleness": 600})
    assert tuned.version == plain.version == card_features(cache=False).version
    policy = cache_policy(tuned)
    assert policy is not None
    assert (policy.ttl, policy.max_staleness) == (30, 600)
    assert cache_policy(card_features(cache=False)) is None
    assert cache_policy(plain) == cache_policy(card_features(cache=True))
    with pytest.raises(ConfigError, match=r"feature set 'card': cache.ttl: .*greater than 0"):
        cache_policy(card_features(cache={"ttl": 0}))
    with pytest.raises(ConfigError, match=r"feature set 'card': cache.max_stale: .*not permitted"):
        cache_policy(card_features(cache={"max_stale": 10}))
    with pytest.raises(ConfigError, match="feature set 'card': cache must be None, False or a mapping"):
        card_features(cache="fast")  # type: ignore[arg-type]
    cache = FeatureCache()
    assert set(bind_caches([card_features(cache=False)], cache)) == set()
    bound = bind_caches([tuned], cache)["card"]
    assert (bound.version, bound.policy.ttl) == (tuned.version, 30)


async def test_a_cache_bound_to_another_version_is_refused(sqlite_pool: DatabasePool) -> None:
    """Handing OnlineFeatures a cache bound to a different version of the set is a
    configuration error, not silently wrong values."""
    fs = card_features()
    cache = FeatureCache().bind("card", "0123456789abcdef")
    with pytest.raises(ConfigError, match="bound to 'card' version 0123456789abcdef; bind it with bind_caches"):
        OnlineFeatures([fs["n_1d"]], {"tx": make_reader(fs.source, sqlite_pool)}, caches={"card": cache})


async def test_sets_without_a_cache_are_read_directly_beside_cached_ones(sqlite_pool: DatabasePool) -> None:
    """A deployment mixing a cached set and an uncached one over the same source serves
    both, and the uncached one is read directly on every request."""
    cached_set = card_features(cache=LONG)
    direct_set = FeatureSet("card_direct", entity=CARD, source=cached_set.source, features=[Window("n_direct", agg="count", window="1d")], cache=False)
    counting = CountingReader(make_reader(cached_set.source, sqlite_pool))
    clock = FakeClock(T0 + dt.timedelta(days=2))
    online = OnlineFeatures(
        [cached_set["n_1d"], direct_set["n_direct"]], {"tx": counting},
        caches=bind_caches([cached_set, direct_set], FeatureCache(clock=clock.seconds)), clock=clock.ns,
    )
    for _ in range(3):
        resolved = await online.resolve([{"card_id": 2}])
        assert resolved.columns["n_1d"].tolist() == resolved.columns["n_direct"].tolist()
    assert len(counting.calls) == 4  # one load for the cached set, three direct reads
