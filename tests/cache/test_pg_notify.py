"""PostgreSQL LISTEN/NOTIFY: writes that bypass Stalwart still invalidate the cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from stalwart.cache import CachePolicy, FeatureCache
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from stalwart.features.notify import (
    PgInvalidationListener,
    install_notify_trigger,
    uninstall_notify_trigger,
)
from tests.cache.conftest import CacheFactory

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

POLICY = CachePolicy(ttl=300, xfetch_beta=0)


class TableSource:
    """The loader of a real table: SELECT the rows of the requested keys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[list[EntityKey]] = []

    async def load(self, keys: list[EntityKey]) -> dict[EntityKey, Row | None]:
        self.calls.append(keys)
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = await conn.execute(
                "SELECT region, id, balance FROM accounts WHERE (region, id) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            found: dict[EntityKey, Row] = {(region, id_): {"balance": balance} for region, id_, balance in await cur.fetchall()}
        return {k: found.get(k) for k in keys}


def execute(url: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(statement, params)


@pytest.fixture
def accounts(pg_url: str) -> str:
    """A table with a composite entity key (region, id), with the triggers installed."""
    execute(pg_url, "CREATE TABLE accounts (region text, id int, balance float, PRIMARY KEY (region, id))")
    execute(pg_url, "INSERT INTO accounts SELECT 'eu', g, g FROM generate_series(1, 50) g")
    install_notify_trigger(pg_url, "accounts", ["region", "id"])
    return pg_url


@pytest.fixture
async def listening(accounts: str, make_cache: CacheFactory) -> AsyncIterator[tuple[FeatureCache, PgInvalidationListener]]:
    cache = await make_cache()
    listener = PgInvalidationListener(accounts, cache, {"accounts": ["balances"]}, backoff=(0.05, 0.2))
    await listener.start()
    assert await listener.wait_connected(10)
    try:
        yield cache, listener
    finally:
        await listener.stop()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_an_update_by_another_system_invalidates_exactly_its_entities(
    accounts: str, listening: tuple[FeatureCache, PgInvalidationListener]
) -> None:
    """An UPDATE made directly in PostgreSQL drops the updated entities from the cache
    (memory and Redis) and leaves the others cached."""
    cache, listener = listening
    source = TableSource(accounts)
    balances = cache.bind("balances", "v1", POLICY)
    keys: list[EntityKey] = [("eu", 1), ("eu", 2), ("eu", 3)]
    await balances.get_many(keys, source.load)
    execute(accounts, "UPDATE accounts SET balance = -1 WHERE id IN (1, 3)")
    await until(lambda: listener.received >= 1)
    result = await balances.get_many(keys, source.load)
    assert result.rows == {("eu", 1): {"balance": -1.0}, ("eu", 2): {"balance": 2.0}, ("eu", 3): {"balance": -1.0}}
    assert sorted(source.calls[-1]) == [("eu", 1), ("eu", 3)]


async def test_inserts_and_deletes_invalidate_too(accounts: str, listening: tuple[FeatureCache, PgInvalidationListener]) -> None:
    """A new row replaces a cached 'no such entity'; a deleted row stops being served."""
    cache, listener = listening
    source = TableSource(accounts)
    balances = cache.bind("balances", "v1", CachePolicy(ttl=300, negative_ttl=300, xfetch_beta=0))
    assert (await balances.get_many([("us", 7), ("eu", 5)], source.load)).rows == {("us", 7): None, ("eu", 5): {"balance": 5.0}}
    execute(accounts, "INSERT INTO accounts VALUES ('us', 7, 70)")
    execute(accounts, "DELETE FROM accounts WHERE region = 'eu' AND id = 5")
    await until(lambda: listener.received >= 2)
    result = await balances.get_many([("us", 7), ("eu", 5)], source.load)
    assert result.rows == {("us", 7): {"balance": 70.0}, ("eu", 5): None}


async def test_a_rolled_back_write_invalidates_nothing(accounts: str, listening: tuple[FeatureCache, PgInvalidationListener]) -> None:
    """Notifications are sent at commit: a rolled-back write leaves the cache alone."""
    cache, listener = listening
    source = TableSource(accounts)
    balances = cache.bind("balances", "v1", POLICY)
    await balances.get_many([("eu", 1)], source.load)
    with psycopg.connect(accounts) as conn:
        conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        conn.rollback()
    execute(accounts, "UPDATE accounts SET balance = 2 WHERE id = 2")  # a marker that does notify
    await until(lambda: listener.received >= 1)
    assert (await balances.get_many([("eu", 1)], source.load)).memory_hits == 1


async def test_a_large_statement_or_truncate_invalidates_the_whole_feature_set(
    pg_url: str, make_cache: CacheFactory
) -> None:
    """A statement touching more rows than max_keys (or a TRUNCATE) invalidates the whole
    FeatureSet instead of failing the writer with an oversized NOTIFY."""
    execute(pg_url, "CREATE TABLE accounts (region text, id int, balance float, PRIMARY KEY (region, id))")
    execute(pg_url, "INSERT INTO accounts SELECT 'eu', g, g FROM generate_series(1, 50) g")
    install_notify_trigger(pg_url, "accounts", ["region", "id"], max_keys=10)
    cache = await make_cache()
    listener = PgInvalidationListener(pg_url, cache, {"accounts": ["balances"]})
    await listener.start()
    try:
        assert await listener.wait_connected(10)
        source = TableSource(pg_url)
        balances = cache.bind("balances", "v1", POLICY)
        await balances.get_many([("eu", 40)], source.load)
        execute(pg_url, "UPDATE accounts SET balance = balance + 1 WHERE id <= 20")  # 20 > max_keys
        await until(lambda: listener.received >= 1)
        assert (await balances.get_many([("eu", 40)], source.load)).loaded == 1
        execute(pg_url, "TRUNCATE accounts")
        await until(lambda: listener.received >= 2)
        assert (await balances.get_many([("eu", 40)], source.load)).rows == {("eu", 40): None}
    finally:
        await listener.stop()


async def test_long_keys_are_sent_in_chunks_that_fit(pg_url: str, make_cache: CacheFactory) -> None:
    """Many changed rows with long keys are announced in several notifications under the
    8000-byte limit, and every entity is invalidated."""
    execute(pg_url, "CREATE TABLE cards (number text PRIMARY KEY, score float)")
    execute(pg_url, "INSERT INTO cards SELECT repeat('x', 60) || g, g FROM generate_series(1, 300) g")
    install_notify_trigger(pg_url, "cards", ["number"])
    cache = await make_cache()
    listener = PgInvalidationListener(pg_url, cache, {"cards": ["scores"]})
    await listener.start()
    scores = cache.bind("scores", "v1", POLICY)
    keys: list[EntityKey] = [("x" * 60 + str(i),) for i in (1, 150, 300)]

    async def load(wanted: list[EntityKey]) -> dict[EntityKey, Row | None]:
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT number, score FROM cards WHERE number = ANY(%s)", ([k[0] for k in wanted],)).fetchall()
        return {(number,): {"score": score} for number, score in rows}

    try:
        assert await listener.wait_connected(10)
        await scores.get_many(keys, load)
        execute(pg_url, "UPDATE cards SET score = -score")
        await until(lambda: listener.received >= 3)  # 300 keys of ~64 bytes: several chunks
        result = await scores.get_many(keys, load)
        assert [row["score"] for row in result.rows.values() if row] == [-1.0, -150.0, -300.0]
        assert sample_sent(cache) == 0  # replicas each listen: nothing re-announced on Redis
    finally:
        await listener.stop()


def sample_sent(cache: FeatureCache) -> float:
    value = cache.metrics.registry.get_sample_value("stalwart_cache_invalidations_sent_total", {"scope": "entities"})
    return 0.0 if value is None else value


async def test_a_lost_listener_connection_invalidates_the_feature_set_whole(
    accounts: str, listening: tuple[FeatureCache, PgInvalidationListener]
) -> None:
    """Notifications sent while the listener was disconnected are lost, so on reconnect it
    invalidates its FeatureSets whole."""
    cache, listener = listening
    source = TableSource(accounts)
    balances = cache.bind("balances", "v1", POLICY)
    await balances.get_many([("eu", 1)], source.load)
    execute(
        accounts,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' AND datname = current_database()",
    )
    await until(lambda: not listener.connected)
    await until(lambda: listener.connected)
    assert (await balances.get_many([("eu", 1)], source.load)).loaded == 1


async def test_uninstall_removes_the_triggers(accounts: str, listening: tuple[FeatureCache, PgInvalidationListener]) -> None:
    """After uninstall, writes no longer notify (and installing twice was harmless)."""
    _, listener = listening
    install_notify_trigger(accounts, "accounts", ["region", "id"])  # idempotent
    uninstall_notify_trigger(accounts, "accounts")
    execute(accounts, "UPDATE accounts SET balance = 0")
    await asyncio.sleep(0.2)
    assert listener.received == 0
    with psycopg.connect(accounts) as conn:
        count = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'stalwart_cache_%%'").fetchone()
    assert count == (0,)
