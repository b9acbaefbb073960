"""Writing to a source invalidates exactly the entities written, in every replica; plain
SQL writes to a PostgreSQL source do too, through NOTIFY."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from stalwart.cache import CacheMetrics, FeatureCache, RedisTier
from stalwart.config import Settings
from stalwart.errors import ConfigError, RequestError
from stalwart.features import OnlineFeatures
from stalwart.features.caching import bind_caches
from stalwart.features.notify import install_source_trigger, pg_listeners
from stalwart.features.readers import SqlReader, make_reader
from stalwart.features.writes import invalidate, write, write_rows
from stalwart.project import FeatureSet, SqlSource, Window
from stalwart.storage import Database, DatabasePool
from tests.conftest import REDIS_URL
from tests.features.conftest import (
    CARD,
    CountingReader,
    card_features,
    load_table,
    make_transactions,
)

LONG = {"ttl": 3600, "negative_ttl": 3600}


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def count_rows(pool: DatabasePool) -> int:
    with pool(None).read() as conn:
        return int(conn.execute(text("SELECT count(*) FROM tx")).scalar_one())


def sql(fs: FeatureSet) -> SqlSource:
    source = fs.source
    assert isinstance(source, SqlSource)
    return source


def new_row(card: int, amount: float = 5.0) -> dict[str, Any]:
    return {"card_id": card, "ts": dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=1), "amount": amount, "category": "tech"}


@pytest.fixture
async def replicas(namespace: str) -> AsyncIterator[list[FeatureCache]]:
    """Two replicas' caches on the shared Redis, subscribed to invalidations."""
    made = []
    for _ in range(2):
        cache = FeatureCache(redis=RedisTier.from_url(REDIS_URL, namespace=namespace), namespace=namespace, metrics=CacheMetrics())
        await cache.start()
        assert cache.bus is not None
        assert await cache.bus.wait_connected(5)
        made.append(cache)
    yield made
    for cache in made:
        await cache.aclose()


@pytest.mark.redis
async def test_source_write_invalidates_every_replica_so_the_next_resolve_sees_the_row(
    settings: Settings, sqlite_pool: DatabasePool, namespace: str, replicas: list[FeatureCache]
) -> None:
    """A writer process calls ``write(source, rows)``; both serving replicas, which had the
    card's features cached, drop them and the next request sees the new transaction."""
    fs = card_features(cache=LONG)
    reader = make_reader(fs.source, sqlite_pool)
    counting = [CountingReader(reader) for _ in replicas]
    servers = [OnlineFeatures([fs["n_1h"], fs["sum_1d"]], {"tx": c}, caches=bind_caches([fs], cache)) for c, cache in zip(counting, replicas, strict=True)]
    plain = OnlineFeatures([fs["n_1h"], fs["sum_1d"]], {"tx": reader})
    before = [await server.resolve([{"card_id": 4}]) for server in servers]
    assert [len(c.calls) for c in counting] == [1, 0]  # the second replica read Redis
    writer = Settings(home=settings.home, redis_url=REDIS_URL, cache_namespace=namespace)
    result = await asyncio.to_thread(write, sql(fs), [new_row(4, 7.5), new_row(4, 2.5), new_row(5)], settings=writer)
    assert result.as_dict() == {"rows": 3, "entities": 2, "feature_sets": ["card"], "invalidated": True}
    await until(lambda: all(c.metrics.registry.get_sample_value("stalwart_cache_invalidations_received_total", {"scope": "entities"}) for c in replicas))
    want = await plain.resolve([{"card_id": 4}])
    for i, server in enumerate(servers):
        after = await server.resolve([{"card_id": 4}])
        assert after.columns["n_1h"].tolist() == want.columns["n_1h"].tolist() == [before[i].columns["n_1h"][0] + 2]
        assert after.columns["sum_1d"].tolist() == want.columns["sum_1d"].tolist()
    assert sum(len(c.calls) for c in counting) == 2  # one reload, shared through Redis


async def test_a_write_through_the_server_s_cache_is_seen_by_its_next_request(sqlite_pool: DatabasePool) -> None:
    """What the server's write route does: write_rows with the server's own cache (no
    Redis) drops exactly the entities written."""
    fs = card_features(cache=LONG)
    reader = make_reader(fs.source, sqlite_pool)
    assert isinstance(reader, SqlReader)
    counting = CountingReader(reader)
    cache = FeatureCache()
    online = OnlineFeatures([fs["n_1h"]], {"tx": counting}, caches=bind_caches([fs], cache))
    first = await online.resolve([{"card_id": 1}, {"card_id": 2}])
    other = FeatureSet("elsewhere", entity=CARD, source=SqlSource("other", table="other", entity=CARD, timestamp="ts"), features=[Window("n", agg="count", window="1h")])
    result = await write_rows(sql(fs), [new_row(1)], reader=reader, cache=cache, feature_sets=[fs, other])
    assert (result.rows, result.entities, result.feature_sets, result.invalidated) == (1, 1, ("card",), True)
    second = await online.resolve([{"card_id": 1}, {"card_id": 2}])
    assert second.columns["n_1h"].tolist() == [first.columns["n_1h"][0] + 1, first.columns["n_1h"][1]]
    assert counting.calls[1:] == [[(1,)]]


async def test_rows_are_checked_before_anything_is_written(sqlite_pool: DatabasePool) -> None:
    """A malformed row is refused with the row and the field at fault, and none of the
    rows is written."""
    fs = card_features(cache=LONG)
    reader = make_reader(fs.source, sqlite_pool)
    assert isinstance(reader, SqlReader)
    good = {"card_id": 1, "ts": "2026-01-02T10:00:00+00:00", "amount": 3.0}
    cases = [
        ({"ts": good["ts"]}, r"rows\[1\]: missing 'card_id'", "rows[1].card_id"),
        ({"card_id": 1}, r"rows\[1\]: missing 'ts'", "rows[1].ts"),
        ({**good, "colour": "red"}, r"rows\[1\].colour: table 'tx' has no column 'colour'", "rows[1].colour"),
        ({**good, "card_id": 1.5}, r"rows\[1\].card_id: an entity key must be an integer or a string", "rows[1].card_id"),
        ({**good, "ts": "yesterday"}, r"rows\[1\].ts: timestamp 'yesterday' is not ISO 8601", "rows[1].ts"),
        ("card 1", r"rows\[1\]: must be an object", "rows[1]"),
    ]
    before = count_rows(sqlite_pool)
    for bad, message, field in cases:
        with pytest.raises(RequestError, match=message) as caught:
            await write_rows(sql(fs), [good, bad], reader=reader, cache=None, feature_sets=[fs])  # type: ignore[list-item]
        assert caught.value.field == field
    with pytest.raises(RequestError, match="rows: send a list"):
        await write_rows(sql(fs), {"card_id": 1}, reader=reader, cache=None, feature_sets=[fs])  # type: ignore[arg-type]
    assert count_rows(sqlite_pool) == before
    result = await write_rows(sql(fs), [good, {**good, "ts": 1767348000.5}], reader=reader, cache=None, feature_sets=[fs])
    assert (result.rows, result.invalidated) == (2, False)  # no cache to tell: said so
    assert count_rows(sqlite_pool) == before + 2


async def test_the_sync_write_refuses_to_run_inside_an_event_loop(settings: Settings) -> None:
    """``write`` is for scripts; async code is told to await ``awrite``."""
    fs = card_features()
    with pytest.raises(ConfigError, match=r"use 'await awrite\(tx, rows\)'"):
        write(sql(fs), [new_row(1)], settings=settings)


async def test_invalidate_takes_entity_objects_key_tuples_or_everything() -> None:
    """The building block of the invalidate route: entities as objects or key tuples, or
    the whole set, dropped from the cache."""
    fs = card_features(cache=LONG)
    cache = FeatureCache()
    bound = bind_caches([fs], cache)["card"]

    async def load(keys: list[Any]) -> dict[Any, Any]:
        return {k: {"n": 1} for k in keys}

    await bound.get_many([(1,), (2,), (3,), ("x",)], load)
    assert await invalidate(fs, [{"card_id": 1}, (2,)], cache)
    assert len(cache.memory) == 2
    assert await invalidate("card", [("x",)], cache)
    assert len(cache.memory) == 1
    assert await invalidate(fs, None, cache)
    assert len(cache.memory) == 0
    with pytest.raises(RequestError, match=r"entities\[0\]: missing key 'card_id'"):
        await invalidate(fs, [{"card": 1}], cache)
    with pytest.raises(RequestError, match=r"entities\[0\]: an entity key has 1 part"):
        await invalidate(fs, [(1, 2)], cache)


def test_feature_sets_register_with_their_source() -> None:
    """A write finds the FeatureSets to invalidate through its source: every set declared
    over that source object in this process."""
    a = card_features()
    b = FeatureSet("card_b", entity=CARD, source=a.source, features=[Window("n", agg="count", window="1h")])
    assert [fs.name for fs in a.source.feature_sets()] == ["card", "card_b"]
    assert b in a.source.feature_sets()
    assert card_features().source.feature_sets() != a.source.feature_sets()


def test_notify_needs_postgresql(settings: Settings) -> None:
    """Installing the trigger on a SQLite source says what to do instead; a project
    without PostgreSQL sources needs no listener."""
    fs = card_features(cache=LONG)
    with pytest.raises(ConfigError, match=r"source 'tx' is not on PostgreSQL.*stalwart.features.write\(\)"):
        install_source_trigger(sql(fs), settings)
    assert pg_listeners([fs], FeatureCache(), settings) == []


@pytest.mark.postgres
async def test_plain_sql_writes_to_a_postgres_source_invalidate_through_notify(pg_url: str) -> None:
    """Another system inserts a transaction with plain SQL; the trigger installed for the
    source announces the card, the listener drops it, and the next request sees the row."""
    db = Database(pg_url)
    load_table(db, make_transactions())
    db.dispose()
    fs = card_features(cache=LONG, url=pg_url)
    install_source_trigger(sql(fs))
    pool = DatabasePool(Settings(db_url=pg_url))
    cache = FeatureCache()
    (listener,) = pg_listeners([fs], cache)
    await listener.start()
    try:
        assert await listener.wait_connected(10)
        reader = make_reader(fs.source, pool)
        counting = CountingReader(reader)
        online = OnlineFeatures([fs["n_1h"]], {"tx": counting}, caches=bind_caches([fs], cache))
        before = await online.resolve([{"card_id": 6}, {"card_id": 7}])
        await online.resolve([{"card_id": 6}, {"card_id": 7}])
        assert len(counting.calls) == 1
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO tx (card_id, ts, amount, category) VALUES (6, now() - interval '1 minute', 9.5, 'tech')")
        await until(lambda: listener.received >= 1)
        after = await online.resolve([{"card_id": 6}, {"card_id": 7}])
        assert after.columns["n_1h"].tolist() == [before.columns["n_1h"][0] + 1, before.columns["n_1h"][1]]
        assert counting.calls[1:] == [[(6,)]]
    finally:
        await listener.stop()
        pool.dispose()
