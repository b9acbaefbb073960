"""Invalidation across replicas: pub/sub propagation, whole-set drops, reconnects, a Redis
that dies mid-traffic, invalidations made while Redis was down, and two real processes."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from stalwart.cache import CacheMetrics, CachePolicy, FeatureCache, RedisTier
from stalwart.cache.invalidation import PEER_MESSAGE_BYTES, Invalidation
from stalwart.errors import CacheUnavailable
from tests.cache.conftest import CacheFactory, PrivateRedis, Source
from tests.conftest import REDIS_URL
from tests.servers import free_port

pytestmark = pytest.mark.redis

ROWS = {(i,): {"amount": float(i)} for i in range(100)}
MEMORY_ONLY_HITS = CachePolicy(ttl=300, xfetch_beta=0)


def sample(cache: FeatureCache, name: str, **labels: str) -> float:
    value = cache.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_an_invalidation_reaches_every_replica(make_cache: CacheFactory) -> None:
    """A write through one replica is seen by the next read on another, and only the
    written entity is reloaded there."""
    a, b = await make_cache(), await make_cache()
    source = Source(ROWS)
    fraud_a, fraud_b = a.bind("fraud", "v1", MEMORY_ONLY_HITS), b.bind("fraud", "v1", MEMORY_ONLY_HITS)
    keys = [(1,), (2,), (3,)]
    await fraud_a.get_many(keys, source.load)
    await asyncio.sleep(0.02)
    assert (await fraud_b.get_many(keys, source.load)).redis_hits == 3
    received: list[tuple[Invalidation, float]] = []
    b.invalidator.listeners.append(lambda message, delay: received.append((message, delay)))
    source.rows[(2,)] = {"amount": -2.0}
    assert await a.invalidate("fraud", [(2,)])
    await until(lambda: received)
    result = await fraud_b.get_many(keys, source.load)
    assert result.rows[(2,)] == {"amount": -2.0}
    assert (result.memory_hits, result.loaded) == (2, 1)
    assert received[0][0].entities == ["2"]
    assert sample(b, "stalwart_cache_invalidations_received_total", scope="entities") == 1
    assert sample(a, "stalwart_cache_invalidations_sent_total", scope="entities") == 1


async def test_whole_feature_set_and_namespace_invalidation(make_cache: CacheFactory) -> None:
    """Invalidating a FeatureSet drops all its entities (every version) everywhere but no
    other FeatureSet's; invalidate_all drops everything."""
    a, b = await make_cache(), await make_cache()
    source = Source(ROWS)
    for cache in (a, b):
        for name in ("fraud", "risk"):
            await cache.bind(name, "v1", MEMORY_ONLY_HITS).get_many([(1,), (2,)], source.load)
    calls = len(source.calls)
    await a.invalidate("fraud")
    await until(lambda: sample(b, "stalwart_cache_invalidations_received_total", scope="feature_set") == 1)
    await b.bind("risk", "v1", MEMORY_ONLY_HITS).get_many([(1,), (2,)], source.load)
    assert len(source.calls) == calls
    await b.bind("fraud", "v1", MEMORY_ONLY_HITS).get_many([(1,), (2,)], source.load)
    assert len(source.calls) == calls + 1  # not in memory, not in Redis
    await a.invalidate_all()
    await until(lambda: sample(b, "stalwart_cache_invalidations_received_total", scope="all") == 1)
    result = await b.bind("risk", "v1", MEMORY_ONLY_HITS).get_many([(1,), (2,)], source.load)
    assert result.loaded == 2


async def test_a_resubscribed_replica_drops_its_in_process_tier(private_redis: PrivateRedis, make_cache: CacheFactory) -> None:
    """A replica whose subscription broke may have missed invalidations: when it
    resubscribes it serves nothing it held before."""
    cache = await make_cache(url=private_redis.url, heartbeat=0.2)
    source = Source(ROWS)
    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=300, redis=False, xfetch_beta=0))
    await fraud.get_many([(1,), (2,)], source.load)
    assert len(cache.memory) == 2
    resets = sample(cache, "stalwart_cache_resets_total")
    admin = redis_sync.Redis.from_url(private_redis.url)
    try:
        assert admin.client_kill_filter(_type="pubsub") >= 1
    finally:
        admin.close()
    await until(lambda: sample(cache, "stalwart_cache_resets_total") >= resets + 1 and cache.subscribed)
    assert len(cache.memory) == 0
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2


async def test_redis_killed_mid_traffic_serves_on_and_recovers(private_redis: PrivateRedis, make_cache: CacheFactory) -> None:
    """Killing Redis under load fails no request (memory and the source carry on), and
    when Redis is back the replicas use it again and hear invalidations again."""
    a = await make_cache(url=private_redis.url, heartbeat=0.2, retry_after=0.1)
    b = await make_cache(url=private_redis.url, heartbeat=0.2, retry_after=0.1)
    source = Source(ROWS, delay=0.001)
    policies = {"both": CachePolicy(ttl=300, xfetch_beta=0), "shared": CachePolicy(ttl=300, memory=False, xfetch_beta=0)}
    views = [cache.bind(name, "v1", policy) for cache in (a, b) for name, policy in policies.items()]
    errors: list[BaseException] = []
    served = 0
    stop = asyncio.Event()

    async def traffic(seed: int) -> None:
        nonlocal served
        rng = random.Random(seed)
        while not stop.is_set():
            view = rng.choice(views)
            keys = [(rng.randrange(40),) for _ in range(3)]
            try:
                result = await view.get_many(keys, source.load)
            except Exception as exc:  # noqa: BLE001 - the test collects any failure
                errors.append(exc)
            else:
                served += 1
                assert all(result.rows[k] == ROWS[k] for k in keys)
            await asyncio.sleep(0.002)

    workers = [asyncio.create_task(traffic(seed)) for seed in range(4)]
    try:
        await asyncio.sleep(0.3)
        private_redis.kill()
        await until(lambda: not a.subscribed and not b.subscribed)
        before = served
        await asyncio.sleep(0.4)
        assert served > before  # still serving with Redis down
        assert sample(a, "stalwart_cache_tier_errors_total", tier="redis", op="get") >= 1
        private_redis.start()
        await until(lambda: a.subscribed and b.subscribed)
        hits = sample(b, "stalwart_cache_hits_total", tier="redis", feature_set="shared")
        await until(lambda: sample(b, "stalwart_cache_hits_total", tier="redis", feature_set="shared") > hits + 5)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert errors == []
    # Invalidation works again after the outage.
    source.rows[(1,)] = {"amount": -1.0}
    await a.invalidate("both", [(1,)])
    await until(lambda: sample(b, "stalwart_cache_invalidations_received_total", scope="entities") >= 1)
    assert (await b.bind("both", "v1", policies["both"]).get_many([(1,)], source.load)).rows == {(1,): {"amount": -1.0}}


async def test_values_loaded_while_disconnected_are_kept_briefly(private_redis: PrivateRedis, make_cache: CacheFactory) -> None:
    """While a replica cannot hear invalidations, what it caches in memory lives at most
    offline_ttl seconds."""
    cache = await make_cache(url=private_redis.url, heartbeat=0.2, retry_after=0.1, offline_ttl=2.0)
    private_redis.kill()
    await until(lambda: not cache.subscribed)
    await cache.bind("fraud", "v1", CachePolicy(ttl=300)).get_many([(1,)], Source(ROWS).load)
    (entry,) = cache.memory.get_many([cache.bind("fraud", "v1").space.key("1")], time.time())
    assert entry is not None
    assert entry.fresh_until <= time.time() + 2.0


@contextmanager
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(extra=["--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)])
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_invalidations_made_while_redis_is_down_are_applied_when_it_returns(tmp_path: Path, make_cache: CacheFactory) -> None:
    """A write during a Redis outage still invalidates Redis once Redis is back (here a
    Redis that kept its data across the restart)."""
    with persistent_redis(tmp_path) as server:
        writer = await make_cache(url=server.url, heartbeat=0.2, retry_after=0.1)
        reader = await make_cache(url=server.url, heartbeat=0.2, retry_after=0.1)
        shared_only = CachePolicy(ttl=300, memory=False, xfetch_beta=0)
        source = Source(ROWS)
        await writer.bind("fraud", "v1", shared_only).get_many([(1,)], source.load)
        # The value reaches Redis by the fetch's write-back, after the answer: wait for it
        # (on a loaded machine 50 ms was not always enough, and the outage began first).
        deadline = time.monotonic() + 10
        while writer._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not writer._tasks
        server.kill()
        source.rows[(1,)] = {"amount": -1.0}
        assert not await writer.invalidate("fraud", [(1,)])
        assert writer.invalidator.pending == 1
        server.start()
        await until(lambda: writer.subscribed and reader.subscribed and writer.invalidator.pending == 0)
        result = await reader.bind("fraud", "v1", shared_only).get_many([(1,)], source.load)
        assert result.rows == {(1,): {"amount": -1.0}}
        assert result.redis_hits == 0


async def test_too_many_pending_invalidations_become_a_whole_set_one() -> None:
    """The list kept during an outage is bounded: past max_pending it invalidates whole
    FeatureSets instead of growing."""
    tier = RedisTier.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="t", retry_after=30)
    cache = FeatureCache(redis=tier, namespace="t", metrics=CacheMetrics())
    cache.invalidator._max_pending = 3
    try:
        assert not await cache.invalidate("fraud", [(1,), (2,)])
        assert cache.invalidator._pending == {"fraud": {"1", "2"}}
        assert not await cache.invalidate("fraud", [(3,), (4,)])
        assert cache.invalidator._pending == {"fraud": None}
    finally:
        await cache.aclose()
    with pytest.raises(CacheUnavailable):
        await tier.get_many(cache.bind("fraud", "v1").space, ["1"])


class Replica:
    """A replica process driven over stdin/stdout (tests/cache/replica.py)."""

    def __init__(self, namespace: str, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cache.replica", REDIS_URL, namespace, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert self.read() == {"ready": True}

    def read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the replica process exited")
        return json.loads(line)

    def ask(self, **command: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def test_two_processes_a_write_through_one_is_read_through_the_other(namespace: str, tmp_path: Path) -> None:
    """Two server processes sharing Redis: after a write through the first, the second's
    next read returns the new value, though it had the old one in its memory."""
    db = tmp_path / "source.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, amount REAL)")
        conn.execute("INSERT INTO accounts VALUES (1, 10.0)")
    conn.close()
    first, second = Replica(namespace, db), Replica(namespace, db)
    try:
        assert first.ask(op="get", key=1)["row"] == {"amount": 10.0}
        assert second.ask(op="get", key=1)["redis_hits"] == 1
        assert second.ask(op="get", key=1)["memory_hits"] == 1
        assert first.ask(op="write", key=1, value=20.0) == {"published": True}
        deadline = time.monotonic() + 5
        while (answer := second.ask(op="get", key=1))["row"] != {"amount": 20.0}:
            assert time.monotonic() < deadline, f"the second process still serves {answer}"
            time.sleep(0.01)
        assert answer["loads"] == 1  # it reloaded once, from the source
    finally:
        first.close()
        second.close()


async def test_a_failing_listener_does_not_stop_the_subscriber(make_cache: CacheFactory) -> None:
    """An unexpected error while applying a message resubscribes (dropping memory) instead
    of leaving the replica deaf."""
    a, b = await make_cache(), await make_cache(heartbeat=0.2)
    failures = [RuntimeError("listener bug")]

    def flaky(message: Invalidation, delay: float) -> None:
        if failures:
            raise failures.pop()

    b.invalidator.listeners.append(flaky)
    resets = sample(b, "stalwart_cache_resets_total")
    await a.invalidate("fraud", [(1,)])
    await until(lambda: sample(b, "stalwart_cache_resets_total") >= resets + 1 and b.subscribed)
    await a.invalidate("fraud", [(2,)])
    await until(lambda: sample(b, "stalwart_cache_invalidations_received_total", scope="entities") == 2)


async def test_without_redis_peers_hear_every_invalidation(make_cache: CacheFactory) -> None:
    """No Redis: the workers of one server pass invalidations to each other (the supervisor
    carries the messages). Entities, whole sets and everything reach the peer's memory;
    an entity list too long for one message goes as its whole FeatureSet; a message the
    link would not take makes the invalidation report False. PostgreSQL NOTIFY ones
    (``announce=False``, every worker hears those itself) are not passed on."""
    a, b = await make_cache(redis=False), await make_cache(redis=False)
    sent: list[bytes] = []
    link_up = True

    def relay(message: bytes) -> bool:
        if link_up:
            sent.append(message)
            b.invalidator.receive(message)
        return link_up

    a.invalidator.peers = relay
    source = Source(ROWS)
    fraud_b = b.bind("fraud", "v1", MEMORY_ONLY_HITS)
    keys = [(1,), (2,), (3,)]
    await fraud_b.get_many(keys, source.load)
    assert await a.invalidate("fraud", [(2,)])
    result = await fraud_b.get_many(keys, source.load)
    assert (result.memory_hits, result.loaded) == (2, 1)
    assert sample(b, "stalwart_cache_invalidations_received_total", scope="entities") == 1
    assert sample(a, "stalwart_cache_invalidations_sent_total", scope="entities") == 1
    many = [(f"{'x' * 64}-{i}",) for i in range(1000)]  # ~70 KB of keys: over one message
    assert await a.invalidate("fraud", many)
    assert len(sent[-1]) <= PEER_MESSAGE_BYTES
    assert (await fraud_b.get_many(keys, source.load)).loaded == 3  # the whole set went
    await a.invalidator.invalidate("fraud", ["1"], announce=False)
    assert len(sent) == 2
    link_up = False
    assert not await a.invalidate("fraud", [(1,)])
