"""Fixtures for the cache tests: a unique key namespace on the real Redis (cleaned up
afterwards), a private redis-server that a test may kill, a controllable clock, and a
loader that counts its calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
import redis as redis_sync

from stalwart.cache import CacheMetrics, FeatureCache, MemoryTier, RedisTier
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from tests.conftest import REDIS_URL
from tests.private_redis import PrivateRedis


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Source:
    """A feature source in memory whose loader counts calls and can be told to fail."""

    def __init__(self, rows: Mapping[Any, Any] | None = None, delay: float = 0.0) -> None:
        self.rows: dict[EntityKey, Row] = dict(rows or {})
        self.delay = delay
        self.calls: list[list[EntityKey]] = []
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None  # when set, loads wait for it

    async def load(self, keys: list[EntityKey]) -> dict[EntityKey, Row | None]:
        self.calls.append(list(keys))
        snapshot = {k: self.rows.get(k) for k in keys}  # read before waiting, like a query
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return snapshot


def cleanup_namespace(url: str, namespace: str) -> None:
    client = redis_sync.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A key namespace of the shared Redis that only this test uses, removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    cleanup_namespace(REDIS_URL, name)


CacheFactory = Callable[..., Awaitable[FeatureCache]]


@pytest.fixture
async def make_cache(namespace: str) -> AsyncIterator[CacheFactory]:
    """Build FeatureCaches (replicas) sharing the test's namespace, each with its own
    Redis connections, subscribed before they are returned; all closed afterwards."""
    caches: list[FeatureCache] = []

    async def make(
        *, url: str = REDIS_URL, redis: bool = True, subscribe: bool = True, memory: MemoryTier | None = None, **kwargs: Any
    ) -> FeatureCache:
        tier = RedisTier.from_url(url, namespace=namespace, retry_after=kwargs.pop("retry_after", 0.5)) if redis else None
        cache = FeatureCache(memory=memory, redis=tier, namespace=namespace, metrics=CacheMetrics(), **kwargs)
        caches.append(cache)
        if subscribe and cache.bus is not None:
            await cache.start()
            assert await cache.bus.wait_connected(5), "the invalidation subscriber did not connect"
        return cache

    yield make
    for cache in caches:
        # Bounded: closing against a Redis a test has killed must fail the test, not hang it.
        await asyncio.wait_for(cache.aclose(), 10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.kill()
