"""FeatureCache.get_many: tiers, coalescing, TTLs, XFetch, versions and stale-if-error."""

from __future__ import annotations

import asyncio

import pytest

from stalwart.cache import CacheMetrics, CachePolicy, Expiring, FeatureCache, MemoryTier
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from stalwart.errors import CallNotPermitted, CallTimeout, FeatureError
from tests.cache.conftest import CacheFactory, Clock, Source

ROWS = {(i,): {"amount": float(i), "country": "FR"} for i in range(200)}
NO_EARLY = CachePolicy(ttl=10, negative_ttl=2, xfetch_beta=0)


def sample(metrics: CacheMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_concurrent_misses_on_one_key_make_one_source_call() -> None:
    """100 requests missing the same key at once cost the source one call, not 100."""
    source = Source(ROWS, delay=0.02)
    fraud = FeatureCache().bind("fraud", "v1")
    results = await asyncio.gather(*[fraud.get_many([(7,)], source.load) for _ in range(100)])
    assert len(source.calls) == 1
    assert all(r.rows == {(7,): ROWS[(7,)]} for r in results)
    assert sum(r.coalesced for r in results) == 99


@pytest.mark.redis
async def test_concurrent_misses_with_redis_make_one_source_call(make_cache: CacheFactory) -> None:
    """Coalescing holds with the Redis tier in the path (the Redis read is shared too)."""
    source = Source(ROWS, delay=0.02)
    cache = await make_cache()
    fraud = cache.bind("fraud", "v1")
    await asyncio.gather(*[fraud.get_many([(7,)], source.load) for _ in range(100)])
    assert len(source.calls) == 1
    assert sample(cache.metrics, "stalwart_cache_coalesced_total", feature_set="fraud") == 99
    assert sample(cache.metrics, "stalwart_cache_misses_total", tier="redis", feature_set="fraud") == 1


async def test_a_request_for_many_entities_makes_one_batched_call_for_its_misses() -> None:
    """Hits are served from memory and all misses go to the source in one call."""
    source = Source(ROWS)
    fraud = FeatureCache().bind("fraud", "v1", NO_EARLY)
    await fraud.get_many([(i,) for i in range(10)], source.load)
    result = await fraud.get_many([(i,) for i in range(50)], source.load)
    assert len(source.calls) == 2
    assert sorted(source.calls[1]) == [(i,) for i in range(10, 50)]
    assert (result.memory_hits, result.loaded) == (10, 40)
    assert list(result.rows) == [(i,) for i in range(50)]  # the request's order


async def test_overlapping_requests_load_each_entity_once() -> None:
    """A request whose keys are partly being loaded by another waits for those and loads
    only the rest."""
    source = Source(ROWS, delay=0.02)
    fraud = FeatureCache().bind("fraud", "v1")
    _, second = await asyncio.gather(
        fraud.get_many([(i,) for i in range(10)], source.load),
        fraud.get_many([(i,) for i in range(5, 15)], source.load),
    )
    assert sorted(k for call in source.calls for k in call) == [(i,) for i in range(15)]
    assert second.coalesced == 5
    assert second.rows == {(i,): ROWS[(i,)] for i in range(5, 15)}


async def test_values_expire_after_ttl_and_missing_rows_after_negative_ttl() -> None:
    """A row is served from cache for ttl seconds; 'no such entity' for negative_ttl."""
    clock, source = Clock(), Source(ROWS)
    fraud = FeatureCache(clock=clock).bind("fraud", "v1", NO_EARLY)
    keys = [(1,), (999,)]  # 999 has no row
    first = await fraud.get_many(keys, source.load)
    assert first.rows == {(1,): ROWS[(1,)], (999,): None}
    clock.advance(1.9)
    await fraud.get_many(keys, source.load)
    assert len(source.calls) == 1
    clock.advance(0.2)  # past negative_ttl: only the missing row is asked again
    await fraud.get_many(keys, source.load)
    assert source.calls[1] == [(999,)]
    clock.advance(8)  # past ttl
    await fraud.get_many([(1,)], source.load)
    assert source.calls[2] == [(1,)]


async def test_zero_negative_ttl_never_caches_a_missing_row() -> None:
    """With negative_ttl=0 a new entity is seen as soon as its row exists."""
    source = Source(ROWS)
    fraud = FeatureCache().bind("fraud", "v1", CachePolicy(negative_ttl=0))
    assert (await fraud.get_many([(999,)], source.load)).rows == {(999,): None}
    source.rows[(999,)] = {"amount": 1.0}
    assert (await fraud.get_many([(999,)], source.load)).rows == {(999,): {"amount": 1.0}}


async def test_xfetch_refreshes_early_near_expiry_and_never_far_from_it() -> None:
    """With XFetch a hot key is reloaded shortly before it expires (not at the same instant
    for every replica); far from expiry it is a plain hit."""
    clock, source = Clock(), Source(ROWS, delay=0.01)
    draws = [0.0]
    cache = FeatureCache(clock=clock, rand=lambda: draws[0])
    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=100, xfetch_beta=1.0))
    await fraud.get_many([(1,)], source.load)
    # U = 1 - 2**-53 gives -ln(1-U) = 36.7: the window is 36.7 * delta >= 0.367 s, since
    # the load took at least 0.01 s (and, on this machine, far less than 0.25 s).
    draws[0] = 1.0 - 2.0**-53
    clock.advance(100 - 10)
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 1
    clock.advance(10 - 0.3)  # 0.3 s before expiry: inside the window
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2
    assert sample(cache.metrics, "stalwart_cache_early_refreshes_total", feature_set="fraud") == 1
    # With U = 0 (-ln 1 = 0) the same distance from expiry is a plain hit.
    draws[0] = 0.0
    clock.advance(100 - 0.3)
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2


async def test_a_failed_early_refresh_serves_the_still_fresh_value_undegraded() -> None:
    """An early refresh that fails is invisible: the value is still within its TTL."""
    clock, source = Clock(), Source(ROWS, delay=0.01)
    fraud = FeatureCache(clock=clock, rand=lambda: 1.0 - 2.0**-53).bind("fraud", "v1", CachePolicy(ttl=10))
    await fraud.get_many([(1,)], source.load)
    clock.advance(9.8)
    source.error = CallTimeout("source timed out")
    result = await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2
    assert result.rows == {(1,): ROWS[(1,)]}
    assert not result.degraded


async def test_jitter_spreads_expiry() -> None:
    """ttl_jitter shortens each TTL by a random fraction, so keys loaded together expire apart."""
    draws = iter([0.0, 0.5, 1.0 - 1e-9])
    clock, source = Clock(), Source(ROWS)
    fraud = FeatureCache(clock=clock, rand=lambda: next(draws, 0.0)).bind(
        "fraud", "v1", CachePolicy(ttl=10, ttl_jitter=0.5, xfetch_beta=0)
    )
    await fraud.get_many([(1,), (2,), (3,)], source.load)
    clock.advance(5.5)  # key 3 (TTL ~5) expired, key 2 (7.5) and key 1 (10) not
    await fraud.get_many([(1,), (2,), (3,)], source.load)
    assert source.calls[1] == [(3,)]


async def test_a_changed_definition_never_reads_old_values() -> None:
    """Binding a new version of a FeatureSet misses, even for entities cached under the old."""
    fraud_v1 = FeatureCache()
    old = fraud_v1.bind("fraud", "aaaa")
    source = Source(ROWS)
    await old.get_many([(1,)], source.load)
    new_source = Source({(1,): {"amount": -1.0}})
    new = fraud_v1.bind("fraud", "bbbb")
    assert (await new.get_many([(1,)], new_source.load)).rows == {(1,): {"amount": -1.0}}
    assert len(new_source.calls) == 1
    assert (await old.get_many([(1,)], source.load)).rows == {(1,): ROWS[(1,)]}


@pytest.mark.redis
async def test_a_changed_definition_never_reads_old_values_from_redis(make_cache: CacheFactory) -> None:
    """A replica running the new definition does not read values the old one put in Redis."""
    old_replica, new_replica = await make_cache(), await make_cache()
    await old_replica.bind("fraud", "aaaa").get_many([(1,)], Source(ROWS).load)
    new_source = Source({(1,): {"amount": -1.0}})
    result = await new_replica.bind("fraud", "bbbb").get_many([(1,)], new_source.load)
    assert result.rows == {(1,): {"amount": -1.0}}
    assert (result.redis_hits, len(new_source.calls)) == (0, 1)


@pytest.mark.parametrize(
    "error",
    [CallNotPermitted("breaker open"), CallTimeout("timed out"), FeatureError("source down"), ConnectionError("refused")],
)
async def test_stale_if_error_serves_within_the_bound_and_marks_it(error: Exception) -> None:
    """When the source fails (open breaker, timeout, source error), a value up to
    max_staleness past its TTL is served and reported stale."""
    clock, source = Clock(), Source(ROWS)
    cache = FeatureCache(clock=clock)
    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=10, max_staleness=30, xfetch_beta=0))
    await fraud.get_many([(1,), (2,)], source.load)
    clock.advance(39)
    source.error = error
    result = await fraud.get_many([(1,), (2,)], source.load)
    assert result.rows == {(1,): ROWS[(1,)], (2,): ROWS[(2,)]}
    assert result.stale == {(1,), (2,)}
    assert result.stale_errors == {(1,): error, (2,): error}
    assert result.degraded
    assert sample(cache.metrics, "stalwart_cache_stale_serves_total", feature_set="fraud") == 2


async def test_stale_if_error_stops_at_the_bound() -> None:
    """Past max_staleness the source's error reaches the caller: no unbounded staleness."""
    clock, source = Clock(), Source(ROWS)
    fraud = FeatureCache(clock=clock).bind("fraud", "v1", CachePolicy(ttl=10, max_staleness=30, xfetch_beta=0))
    await fraud.get_many([(1,)], source.load)
    clock.advance(40.01)
    source.error = CallNotPermitted("breaker open")
    with pytest.raises(CallNotPermitted):
        await fraud.get_many([(1,)], source.load)


async def test_stale_if_error_is_off_by_default_and_ignores_bugs() -> None:
    """Without a declared bound nothing stale is served, and a bug in the loader is never
    hidden behind a stale value."""
    clock, source = Clock(), Source(ROWS)
    cache = FeatureCache(clock=clock)
    strict = cache.bind("strict", "v1", CachePolicy(ttl=10, xfetch_beta=0))
    lenient = cache.bind("lenient", "v1", CachePolicy(ttl=10, max_staleness=60, xfetch_beta=0))
    await strict.get_many([(1,)], source.load)
    await lenient.get_many([(1,)], source.load)
    clock.advance(11)
    source.error = FeatureError("down")
    with pytest.raises(FeatureError):
        await strict.get_many([(1,)], source.load)
    source.error = KeyError("bug")
    with pytest.raises(KeyError):
        await lenient.get_many([(1,)], source.load)


async def test_partial_results_list_what_could_not_be_served() -> None:
    """With allow_partial, entities with a stale value are served and the others listed."""
    clock, source = Clock(), Source(ROWS)
    fraud = FeatureCache(clock=clock).bind("fraud", "v1", CachePolicy(ttl=10, max_staleness=30, xfetch_beta=0))
    await fraud.get_many([(1,)], source.load)
    clock.advance(15)
    source.error = CallTimeout("timed out")
    result = await fraud.get_many([(1,), (2,)], source.load, allow_partial=True)
    assert result.rows == {(1,): ROWS[(1,)]}
    assert result.stale == {(1,)}
    assert isinstance(result.failed[(2,)], CallTimeout)


@pytest.mark.redis
async def test_stale_if_error_uses_redis_when_memory_has_nothing(make_cache: CacheFactory) -> None:
    """A replica that never held a value can still serve it stale from Redis."""
    clock, source = Clock(), Source(ROWS)
    policy = CachePolicy(ttl=10, max_staleness=30, xfetch_beta=0)
    writer, reader = await make_cache(clock=clock), await make_cache(clock=clock)
    await writer.bind("fraud", "v1", policy).get_many([(1,)], source.load)
    await asyncio.sleep(0.05)  # let the write-back land
    clock.advance(20)
    source.error = CallNotPermitted("breaker open")
    result = await reader.bind("fraud", "v1", policy).get_many([(1,)], source.load)
    assert result.rows == {(1,): ROWS[(1,)]}
    assert result.stale == {(1,)}


async def test_an_invalidation_during_a_load_keeps_the_loaded_value_out_of_the_cache() -> None:
    """A value read before a write and returned after its invalidation is served to the
    requests that were waiting, but not cached; a request arriving after the invalidation
    starts its own load instead of joining the old one."""
    source = Source({(1,): {"v": "old"}})
    source.gate = asyncio.Event()
    cache = FeatureCache()
    fraud = cache.bind("fraud", "v1")
    early = asyncio.create_task(fraud.get_many([(1,)], source.load))
    await asyncio.sleep(0.01)  # the load has read "old" and waits
    source.rows[(1,)] = {"v": "new"}
    await cache.invalidate("fraud", [(1,)])
    late = asyncio.create_task(fraud.get_many([(1,)], source.load))
    await asyncio.sleep(0.01)
    source.gate.set()
    assert (await early).rows == {(1,): {"v": "old"}}
    assert (await late).rows == {(1,): {"v": "new"}}
    assert len(source.calls) == 2
    assert (await fraud.get_many([(1,)], source.load)).rows == {(1,): {"v": "new"}}
    assert len(source.calls) == 2
    assert sample(cache.metrics, "stalwart_cache_writes_refused_total", feature_set="fraud") == 1


@pytest.mark.redis
async def test_another_replicas_invalidation_during_a_load_keeps_redis_clean(make_cache: CacheFactory) -> None:
    """Even when this replica hears of the invalidation too late, Redis refuses the stale
    write-back (the invalidation tombstoned the key after our read), and so does memory."""
    source = Source({(1,): {"v": "old"}})
    source.gate = asyncio.Event()
    deaf = await make_cache(subscribe=False)  # hears nothing: only Redis can refuse
    writer, reader = await make_cache(), await make_cache()
    loading = asyncio.create_task(deaf.bind("fraud", "v1").get_many([(1,)], source.load))
    await asyncio.sleep(0.02)
    source.rows[(1,)] = {"v": "new"}
    assert await writer.invalidate("fraud", [(1,)])
    source.gate.set()
    assert (await loading).rows == {(1,): {"v": "old"}}
    await asyncio.sleep(0.05)
    fresh = Source({(1,): {"v": "new"}})
    assert (await reader.bind("fraud", "v1").get_many([(1,)], fresh.load)).rows == {(1,): {"v": "new"}}
    assert len(fresh.calls) == 1  # Redis did not hold the old value
    again = await deaf.bind("fraud", "v1").get_many([(1,)], fresh.load)
    assert again.rows == {(1,): {"v": "new"}}  # nor did the deaf replica's memory


async def test_a_cancelled_request_does_not_cancel_the_load_others_wait_for() -> None:
    """A client that gives up does not take down the coalesced load of other clients."""
    source = Source(ROWS, delay=0.05)
    fraud = FeatureCache().bind("fraud", "v1")
    owner = asyncio.create_task(fraud.get_many([(1,)], source.load))
    await asyncio.sleep(0.005)
    waiter = asyncio.create_task(fraud.get_many([(1,)], source.load))
    await asyncio.sleep(0.005)
    owner.cancel()
    assert (await waiter).rows == {(1,): ROWS[(1,)]}
    assert len(source.calls) == 1


async def test_window_aggregates_stay_fresh_only_until_the_step_ends() -> None:
    """A window aggregate computed in one step is never served fresh in the next."""
    clock, source = Clock(start=3600.0 * 10 + 3000), Source(ROWS)  # 50 min into an hour
    fraud = FeatureCache(clock=clock).bind("fraud", "v1", CachePolicy(ttl=3600, window_step=3600, xfetch_beta=0))
    await fraud.get_many([(1,)], source.load)
    clock.advance(599)
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 1
    clock.advance(1)  # the next step begins
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2


async def test_tiers_can_be_switched_off_per_feature_set() -> None:
    """A policy with both tiers off always asks the source (still coalesced)."""
    source = Source(ROWS)
    fraud = FeatureCache().bind("fraud", "v1", CachePolicy(memory=False, redis=False))
    await fraud.get_many([(1,)], source.load)
    await fraud.get_many([(1,)], source.load)
    assert len(source.calls) == 2


async def test_metrics_count_hits_misses_and_source_calls_saved() -> None:
    """The cache's effect is visible in Prometheus: hits, misses and calls saved."""
    metrics, source = CacheMetrics(), Source(ROWS)
    fraud = FeatureCache(metrics=metrics, memory=MemoryTier(max_entries=10)).bind("fraud", "v1", NO_EARLY)
    await fraud.get_many([(1,), (2,)], source.load)
    await fraud.get_many([(1,), (2,)], source.load)
    await fraud.get_many([(1,)], source.load)
    assert sample(metrics, "stalwart_cache_hits_total", tier="memory", feature_set="fraud") == 3
    assert sample(metrics, "stalwart_cache_misses_total", tier="memory", feature_set="fraud") == 2
    assert sample(metrics, "stalwart_cache_source_calls_total", feature_set="fraud") == 1
    assert sample(metrics, "stalwart_cache_source_calls_saved_total", feature_set="fraud") == 2
    assert sample(metrics, "stalwart_cache_memory_entries") == 2


def test_settings_decide_whether_redis_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without STALWART_REDIS_URL the cache is in-process only (the embedded default);
    with it, the Redis tier and the invalidation subscriber are built."""
    from stalwart.config import load_settings

    monkeypatch.delenv("STALWART_REDIS_URL", raising=False)
    monkeypatch.setenv("STALWART_CACHE_MAX_ENTRIES", "123")
    embedded = FeatureCache.from_settings(load_settings())
    assert (embedded.redis, embedded.bus, embedded.memory.max_entries) == (None, None, 123)
    monkeypatch.setenv("STALWART_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("STALWART_CACHE_NAMESPACE", "replicas")
    shared = FeatureCache.from_settings(load_settings())
    assert shared.redis is not None
    assert shared.bus is not None
    assert shared.redis.namespace == "replicas"
    asyncio.run(shared.aclose())


async def test_an_empty_lookup_costs_nothing() -> None:
    """get_many of no keys returns at once without calling the source."""
    source = Source(ROWS)
    assert (await FeatureCache().bind("fraud", "v1").get_many([], source.load)).rows == {}
    assert source.calls == []


async def test_a_loader_can_end_an_entry_s_freshness_before_its_ttl() -> None:
    """A loaded value that stops being right at a known instant (an event leaving a
    window) is fresh until then, not for the whole TTL; and XFetch does not reload it
    early, since a reload before that instant would compute the same value."""
    clock = Clock()
    calls: list[list[EntityKey]] = []

    async def load(keys: list[EntityKey]) -> dict[EntityKey, Expiring | Row | None]:
        calls.append(keys)
        return {(1,): Expiring({"n": 1.0}, clock.now + 5), (2,): {"n": 2.0}, (3,): Expiring(None, clock.now + 500)}

    cache = FeatureCache(clock=clock, rand=lambda: 1.0 - 2.0**-53)  # XFetch as eager as it gets
    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=60, negative_ttl=10))
    first = await fraud.get_many([(1,), (2,), (3,)], load)
    assert first.rows == {(1,): {"n": 1.0}, (2,): {"n": 2.0}, (3,): None}
    clock.advance(4.999)
    await fraud.get_many([(1,)], load)
    assert len(calls) == 1
    clock.advance(0.002)
    await fraud.get_many([(1,)], load)
    assert calls[1:] == [[(1,)]]
    clock.advance(9)  # the TTL, shorter than the row's own limit, still decides for (3,)
    await fraud.get_many([(3,)], load)
    assert calls[2:] == [[(3,)]]


@pytest.mark.redis
async def test_a_request_never_joins_a_finished_load_whose_value_has_expired(make_cache: CacheFactory) -> None:
    """A load that is over but still writing back to Redis is joined only while its value
    is fresh: a request arriving after that value expired gets a new load."""
    clock = Clock()
    cache = await make_cache(clock=clock)
    calls: list[int] = []

    async def load(keys: list[EntityKey]) -> dict[EntityKey, Expiring | Row | None]:
        calls.append(len(calls))
        return {k: Expiring({"n": float(len(calls))}, clock.now + 1) for k in keys}

    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=60, memory=False))
    first = await fraud.get_many([(1,)], load)  # returns before the write-back to Redis ends
    clock.advance(2)
    second = await fraud.get_many([(1,)], load)
    assert (first.rows[(1,)], second.rows[(1,)]) == ({"n": 1.0}, {"n": 2.0})
    assert second.coalesced == 0


@pytest.mark.redis
@pytest.mark.parametrize("memory", [True, False])
async def test_an_expired_entry_still_in_redis_is_replaced_by_its_reload(make_cache: CacheFactory, memory: bool) -> None:
    """Past its TTL an entry stays in Redis (for stale-if-error) until max_staleness ends;
    the reload that follows must replace it there, so the next lookups are hits again
    rather than source calls until the stale entry expires."""
    clock, source = Clock(), Source(ROWS)
    policy = CachePolicy(ttl=10, max_staleness=600, xfetch_beta=0, memory=memory)
    fraud = (await make_cache(clock=clock)).bind("fraud", "v1", policy)
    await fraud.get_many([(1,)], source.load)
    clock.advance(15)  # expired, still usable for stale-if-error
    source.rows[(1,)] = {"amount": 99.0, "country": "FR"}
    reloaded = await fraud.get_many([(1,)], source.load)
    assert reloaded.rows == {(1,): {"amount": 99.0, "country": "FR"}}
    assert len(source.calls) == 2
    other = (await make_cache(clock=clock)).bind("fraud", "v1", policy)  # a replica with nothing in memory
    again = await other.get_many([(1,)], source.load)
    assert again.rows == {(1,): {"amount": 99.0, "country": "FR"}}
    assert again.redis_hits == 1
    assert len(source.calls) == 2
    assert sample(fraud.cache.metrics, "stalwart_cache_writes_refused_total", feature_set="fraud") == 0
