"""The tiers on their own: the in-process tier's bounds and eviction, the Redis tier's
round trips and its refusal to write back over an invalidation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.cache.keys import KeySpace
from stalwart.cache.memory import MemoryTier, estimate_bytes
from stalwart.cache.redis import RedisTier
from stalwart.cache.tier import Entry
from stalwart.errors import CacheUnavailable, ConfigError
from tests.conftest import REDIS_URL

SPACE = KeySpace("t", "fraud", "v1")


def entry(value: object = 1, *, fresh: float = 100.0, usable: float | None = None) -> Entry:
    return Entry({"x": value}, 0.0, fresh, usable if usable is not None else fresh, 0.001)


def keys_held(tier: MemoryTier, names: list[str]) -> set[str]:
    found = tier.get_many([SPACE.key(n) for n in names], now=0.0)
    return {n for n, e in zip(names, found, strict=True) if e is not None}


def test_memory_tier_is_bounded_by_entries_and_spares_recently_hit_ones() -> None:
    """At max_entries, a new value evicts an entry nobody read since it was added."""
    tier = MemoryTier(max_entries=3)
    tier.put_many(SPACE, [("a", entry()), ("b", entry()), ("c", entry())], now=0.0)
    tier.get_many([SPACE.key("a")], now=0.0)  # a is hit; b and c are not
    tier.put_many(SPACE, [("d", entry())], now=0.0)
    assert len(tier) == 3
    assert keys_held(tier, ["a", "b", "c", "d"]) == {"a", "c", "d"}
    assert tier.evictions == 1


def test_memory_tier_is_bounded_by_bytes() -> None:
    """Large rows are bounded by max_bytes even when the entry count is far from its limit."""
    big = Entry({"blob": "x" * 10_000}, 0.0, 100.0, 100.0, 0.0)
    size = estimate_bytes(SPACE.key("0"), big)
    tier = MemoryTier(max_entries=1000, max_bytes=size * 3 + 10)
    tier.put_many(SPACE, [(str(i), big) for i in range(10)], now=0.0)
    assert len(tier) == 3
    assert tier.bytes <= tier.max_bytes
    assert keys_held(tier, [str(i) for i in range(10)]) == {"7", "8", "9"}


def test_memory_tier_skips_a_value_larger_than_the_whole_budget() -> None:
    """One oversized row is not cached (it would evict everything and still not fit)."""
    tier = MemoryTier(max_entries=10, max_bytes=500)
    tier.put_many(SPACE, [("small", entry()), ("huge", Entry({"b": "x" * 1000}, 0.0, 9.0, 9.0, 0.0))], now=0.0)
    assert keys_held(tier, ["small", "huge"]) == {"small"}


def test_memory_tier_forgets_unusable_entries() -> None:
    """An entry past its usable_until is gone, even before eviction reaches it."""
    tier = MemoryTier()
    tier.put_many(SPACE, [("a", entry(fresh=10.0, usable=20.0))], now=0.0)
    assert tier.get_many([SPACE.key("a")], now=15.0)[0] is not None
    assert tier.get_many([SPACE.key("a")], now=20.0)[0] is None
    assert len(tier) == 0


def test_memory_tier_deletes_an_entity_in_every_version() -> None:
    """Invalidating an entity drops it from every version of the FeatureSet, not others."""
    tier = MemoryTier()
    v2, other = KeySpace("t", "fraud", "v2"), KeySpace("t", "other", "v1")
    for space in (SPACE, v2, other):
        tier.put_many(space, [("1", entry()), ("2", entry())], now=0.0)
    assert tier.delete("fraud", ["1"]) == 2
    assert tier.get_many([SPACE.key("1"), v2.key("1"), other.key("1"), SPACE.key("2")], now=0.0)[:3] == [None, None, entry()]
    assert tier.clear("fraud") == 2
    assert len(tier) == 2
    assert tier.clear() == 2
    assert tier.bytes == 0


def test_memory_tier_refuses_nonsense_bounds() -> None:
    """A zero-sized cache is a configuration mistake, reported as such."""
    with pytest.raises(ConfigError):
        MemoryTier(max_entries=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 20), st.integers(0, 300)),
        max_size=200,
    ),
    st.integers(1, 8),
    st.integers(400, 3000),
)
def test_memory_tier_never_exceeds_its_bounds_and_never_returns_a_wrong_value(
    ops: list[tuple[str, int, int]], max_entries: int, max_bytes: int
) -> None:
    """Under any sequence of puts, gets and deletes, both bounds hold, the byte count is
    exact, and a value read is the last one written for that key."""
    tier = MemoryTier(max_entries=max_entries, max_bytes=max_bytes)
    last: dict[str, Entry] = {}
    for op, k, size in ops:
        name = str(k)
        if op == "put":
            value = Entry({"s": "y" * size}, 0.0, 9.0, 9.0, 0.0)
            tier.put_many(SPACE, [(name, value)], now=0.0)
            last[name] = value
        elif op == "get":
            got = tier.get_many([SPACE.key(name)], now=0.0)[0]
            assert got is None or got is last[name]
        else:
            tier.delete("fraud", [name])
            last.pop(name, None)
        assert len(tier) <= max_entries
        assert tier.bytes <= max_bytes
        held = [n for n in tier._nodes.values()]
        assert tier.bytes == sum(n.size for n in held)



@pytest.mark.redis
async def test_redis_tier_round_trip_in_one_call(namespace: str) -> None:
    """Entries written for many entities come back from one get_many, absent ones as None."""
    tier = RedisTier.from_url(REDIS_URL, namespace=namespace)
    space = KeySpace(namespace, "fraud", "v1")
    try:
        seen = await tier.get_many(space, ["1", "2", "3"])
        assert seen.entries == [None, None, None]
        stored = await tier.set_many(space, [("1", entry(1, fresh=9e12)), ("2", entry(2, fresh=9e12))], seen)
        assert stored == [True, True]
        again = await tier.get_many(space, ["1", "2", "3"])
        assert [e.row if e else None for e in again.entries] == [{"x": 1}, {"x": 2}, None]
    finally:
        await tier.aclose()


@pytest.mark.redis
async def test_redis_tier_refuses_a_write_back_after_an_invalidation(namespace: str) -> None:
    """A value loaded before an invalidation is not stored after it (entity or whole set)."""
    tier = RedisTier.from_url(REDIS_URL, namespace=namespace)
    space = KeySpace(namespace, "fraud", "v1")
    try:
        seen = await tier.get_many(space, ["1", "2"])
        await tier.delete("fraud", ["1"])
        assert await tier.set_many(space, [("1", entry(fresh=9e12)), ("2", entry(fresh=9e12))], seen) == [False, True]
        seen = await tier.get_many(space, ["3"])
        await tier.clear("fraud")
        assert await tier.set_many(space, [("3", entry(fresh=9e12))], seen) == [False]
        # A fresh read after the invalidation may write again.
        seen = await tier.get_many(space, ["1", "3"])
        assert await tier.set_many(space, [("1", entry(fresh=9e12)), ("3", entry(fresh=9e12))], seen) == [True, True]
    finally:
        await tier.aclose()


@pytest.mark.redis
async def test_redis_tier_whole_set_invalidation_hides_every_version(namespace: str) -> None:
    """Clearing a FeatureSet makes its existing values unreadable at once, in O(1)."""
    tier = RedisTier.from_url(REDIS_URL, namespace=namespace)
    spaces = [KeySpace(namespace, "fraud", v) for v in ("v1", "v2")]
    try:
        for space in spaces:
            seen = await tier.get_many(space, ["1"])
            await tier.set_many(space, [("1", entry(fresh=9e12))], seen)
            assert (await tier.get_many(space, ["1"])).entries[0] is not None
        await tier.clear("fraud")
        for space in spaces:
            assert (await tier.get_many(space, ["1"])).entries[0] is None
    finally:
        await tier.aclose()


async def test_redis_tier_fails_fast_and_backs_off_when_redis_is_down() -> None:
    """With Redis unreachable, calls raise CacheUnavailable quickly, then skip the network."""
    from tests.servers import free_port

    errors: list[str] = []
    tier = RedisTier.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="t", retry_after=30, on_error=errors.append)
    try:
        with pytest.raises(CacheUnavailable, match="STALWART_REDIS_URL"):
            await tier.get_many(SPACE, ["1"])
        assert not tier.available
        with pytest.raises(CacheUnavailable, match="backing off"):
            await tier.get_many(SPACE, ["1"])
        assert errors == ["get"]
    finally:
        await tier.aclose()


@pytest.mark.redis
async def test_redis_tier_stores_without_a_snapshot_when_asked(namespace: str) -> None:
    """set_many without a snapshot (a warm-up, not a load) stores unconditionally, with the
    entry's lifetime as the key's TTL."""
    tier = RedisTier.from_url(REDIS_URL, namespace=namespace)
    space = KeySpace(namespace, "fraud", "v1")
    try:
        now = tier.clock()
        assert await tier.set_many(space, [("9", Entry({"x": 9}, now, now + 30, now + 60, 0.0))]) == [True]
        found = await tier.get_many(space, ["9"])
        assert found.entries[0] is not None
        assert found.entries[0].row == {"x": 9}
        ttl_ms = await tier.client.pttl(space.key("9"))
        assert 55_000 < ttl_ms <= 60_000
    finally:
        await tier.aclose()
