"""The shared cache tier on Redis.

Writing back a loaded value races with invalidations: a value read from the source just
before a write and stored just after would live on. :class:`RedisTier` closes that race
inside Redis: every read notes what it saw (the FeatureSet's epoch, each key's bytes), and
the write-back is one Lua script that stores a key only if nothing changed since
(invalidation overwrites a key with a tombstone, or replaces the epoch, and the script
then refuses). See ``invalidation.py`` for the in-process side of the same race.

The redis package is imported when a tier or client is built, not when this module is.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._optional import require
from stalwart.cache.keys import (
    KeySpace,
    channel_name,
    check_namespace,
    epoch_key,
    namespace_pattern,
    set_prefix,
    versions_key,
)
from stalwart.cache.tier import Entry, Snapshot
from stalwart.errors import CacheUnavailable, ConfigError
from stalwart.monitoring.logs import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisTier", "redis_client"]

_log = get_logger("stalwart.cache")

# A value whose first byte is 0xc1 (never used by msgpack) is a tombstone: the key was
# invalidated. Its random tail makes every tombstone differ from the previous one.
_TOMBSTONE = b"\xc1"

_READ_NOTE = """
Read path: one pipeline (one round trip) of
  ZADD versions NX <now> <version>   -- invalidations will tombstone this version's keys
  SET epoch <token> NX               -- a FeatureSet epoch always exists (new one after a restart)
  MGET epoch key1 key2 ...
"""

# KEYS: epoch, versions, value keys. ARGV: expected epoch, version, now, then per key
# (sha1 of the bytes seen or '' when absent, value, px).
_WRITE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
local out = {}
for i = 3, #KEYS do
  local j = 4 + (i - 3) * 3
  local cur = redis.call('GET', KEYS[i])
  local same
  if cur then same = redis.sha1hex(cur) == ARGV[j] else same = ARGV[j] == '' end
  if same then
    redis.call('SET', KEYS[i], ARGV[j + 1], 'PX', ARGV[j + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS: versions. ARGV: set prefix, tombstone, px, oldest score kept, channel, message,
# entities...
_DELETE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
local versions = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, v in ipairs(versions) do
  for i = 7, #ARGV do
    redis.call('SET', ARGV[1] .. v .. ':' .. ARGV[i], ARGV[2], 'PX', ARGV[3])
  end
end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return #versions
"""

# KEYS: epoch. ARGV: new epoch, channel, message.
_NEW_EPOCH_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""


@dataclass(slots=True)
class _Seen:
    epoch: bytes
    observed: dict[str, bytes | None]  # entity -> the bytes read (None: absent)


def _fingerprint(observed: dict[str, bytes | None], entity: str) -> str:
    """What the write script compares a key's current bytes with: their sha1, '' when the
    key was absent, '-' (matches nothing) when the key was not read."""
    if entity not in observed:
        return "-"
    raw = observed[entity]
    return "" if raw is None else hashlib.sha1(raw).hexdigest()  # noqa: S324 - an identity check, not security


def _new_token() -> bytes:
    return os.urandom(8)


class RedisTier:
    """The shared tier on Redis (redis-py's asyncio client), one round trip per batch.

    Values are msgspec msgpack of ``(epoch, Entry)``, stored with a TTL ending at the
    entry's ``usable_until``. A failure marks the tier down for ``retry_after`` seconds, so
    an outage costs one failed call per interval, not one per request; every failure
    raises :class:`CacheUnavailable`. Build it with :meth:`from_url`.
    """

    name = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "stalwart",
        retry_after: float = 0.5,
        tombstone_ttl: float = 60.0,
        version_horizon: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        redis = require("redis", extra="redis", purpose="The Redis cache tier")
        self.client = client
        self.namespace = check_namespace(namespace)
        self.retry_after = retry_after
        self.tombstone_ttl = tombstone_ttl
        self.version_horizon = version_horizon
        self.clock = clock
        """Wall clock of entry times; a FeatureCache sets it to its own."""
        self.on_error = on_error
        """Called with the operation's name on each failure (the cache counts them)."""
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._down_until = 0.0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(tuple[bytes, Entry])
        self._write = client.register_script(_WRITE_SCRIPT)
        self._delete = client.register_script(_DELETE_SCRIPT)
        self._new_epoch = client.register_script(_NEW_EPOCH_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "stalwart",
        timeout: float = 0.25,
        max_connections: int = 64,
        **kwargs: Any,
    ) -> RedisTier:
        """A tier on ``url`` (``STALWART_REDIS_URL``): no client-side retries, short
        timeouts, because a slow cache is worse than none."""
        return cls(redis_client(url, timeout=timeout, max_connections=max_connections), namespace=namespace, **kwargs)

    @property
    def available(self) -> bool:
        """False while the tier is backing off after a failure."""
        return time.monotonic() >= self._down_until

    async def reconnected(self) -> None:
        """Redis is back (the invalidation bus says so): stop backing off, and close idle
        pooled connections, which would each fail once if Redis restarted."""
        self._down_until = 0.0
        with contextlib.suppress(*self._errors):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    def _check(self, op: str) -> None:
        if time.monotonic() < self._down_until:
            raise CacheUnavailable(f"Redis cache tier is backing off after a failure ({op})")

    def _failed(self, op: str, exc: BaseException) -> CacheUnavailable:
        self._down_until = time.monotonic() + self.retry_after
        if self.on_error is not None:
            self.on_error(op)
        _log.warning("cache_tier_error", tier="redis", op=op, error=repr(exc))
        return CacheUnavailable(
            f"Redis cache tier failed on {op} ({exc}); serving without it for "
            f"{self.retry_after}s. Check that STALWART_REDIS_URL points at a running Redis"
        )

    async def get_many(self, space: KeySpace, entities: Sequence[str]) -> Snapshot:
        self._check("get")
        epoch = space.epoch_key
        prefix = space.prefix
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(space.versions_key, {space.version_segment: self.clock()}, nx=True)
                pipe.set(epoch, _new_token(), nx=True)
                pipe.mget([epoch, *[prefix + e for e in entities]])
                replies = await pipe.execute()
        except self._errors as exc:
            raise self._failed("get", exc) from exc
        values: list[bytes | None] = replies[2]
        current: bytes = values[0] or b""
        now = self.clock()
        entries: list[Entry | None] = []
        # Every key's bytes, usable entries included: one past its TTL (kept for
        # stale-if-error) or picked for an early refresh is reloaded and written back, and
        # the write must be able to replace it. Hashed only for the keys written back.
        observed: dict[str, bytes | None] = {}
        for entity, raw in zip(entities, values[1:], strict=True):
            entries.append(self._decode(raw, current, now))
            observed[entity] = raw
        return Snapshot(entries, _Seen(current, observed))

    def _decode(self, raw: bytes | None, epoch: bytes, now: float) -> Entry | None:
        if raw is None or raw[:1] == _TOMBSTONE:
            return None
        try:
            stored_epoch, entry = self._decoder.decode(raw)
        except msgspec.DecodeError:
            _log.warning("cache_entry_undecodable", tier="redis", size=len(raw))
            return None
        if stored_epoch != epoch or entry.usable_until <= now:
            return None
        return entry

    async def set_many(
        self, space: KeySpace, items: Sequence[tuple[str, Entry]], seen: Snapshot | None = None
    ) -> list[bool]:
        self._check("set")
        now = self.clock()
        if seen is None:
            return await self._set_unguarded(space, items, now)
        token = seen.token
        if not isinstance(token, _Seen):
            raise ConfigError("RedisTier.set_many was given a snapshot from another tier")
        keys = [space.epoch_key, space.versions_key]
        args: list[bytes | str | int | float] = [token.epoch, space.version_segment, now]
        for entity, entry in items:
            px = math.ceil((entry.usable_until - now) * 1000)
            keys.append(space.prefix + entity)
            args.extend((_fingerprint(token.observed, entity), self._encoder.encode((token.epoch, entry)), max(px, 1)))
        try:
            stored: list[int] = await self._write(keys=keys, args=args)
        except self._errors as exc:
            raise self._failed("set", exc) from exc
        if not stored:
            return [False] * len(items)
        return [bool(flag) for flag in stored]

    async def _set_unguarded(self, space: KeySpace, items: Sequence[tuple[str, Entry]], now: float) -> list[bool]:
        epoch = space.epoch_key
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(epoch, _new_token(), nx=True)
                pipe.get(epoch)
                replies = await pipe.execute()
                current: bytes = replies[1]
                for entity, entry in items:
                    px = math.ceil((entry.usable_until - now) * 1000)
                    pipe.set(space.prefix + entity, self._encoder.encode((current, entry)), px=max(px, 1))
                await pipe.execute()
        except self._errors as exc:
            raise self._failed("set", exc) from exc
        return [True] * len(items)

    async def delete(
        self, feature_set: str, entities: Sequence[str], *, announce: bytes | None = None
    ) -> None:
        self._check("delete")
        prefix = set_prefix(self.namespace, feature_set)
        tombstone = _TOMBSTONE + _new_token()
        px = math.ceil(self.tombstone_ttl * 1000)
        oldest = self.clock() - self.version_horizon
        args: list[bytes | str | int | float] = [prefix, tombstone, px, oldest, self.channel, announce or b""]
        args.extend(entities)
        try:
            await self._delete(keys=[versions_key(self.namespace, feature_set)], args=args)
        except self._errors as exc:
            raise self._failed("delete", exc) from exc

    async def clear(self, feature_set: str | None = None, *, announce: bytes | None = None) -> None:
        self._check("clear")
        try:
            if feature_set is not None:
                await self._new_epoch(
                    keys=[epoch_key(self.namespace, feature_set)],
                    args=[_new_token(), self.channel, announce or b""],
                )
                return
            batch: list[bytes] = []
            async for key in self.client.scan_iter(match=namespace_pattern(self.namespace), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self.client.unlink(*batch)
                    batch.clear()
            if batch:
                await self.client.unlink(*batch)
            if announce:
                await self.client.publish(self.channel, announce)
        except self._errors as exc:
            raise self._failed("clear", exc) from exc

    @property
    def channel(self) -> str:
        """The pub/sub channel invalidations of this namespace are announced on."""
        return channel_name(self.namespace)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def redis_client(url: str, *, timeout: float = 0.25, max_connections: int = 64) -> Redis:
    """An asyncio Redis client that fails fast: no retries, short timeouts."""
    require("redis", extra="redis", purpose="The Redis cache tier")
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    try:
        return Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
        )
    except ValueError as exc:
        raise ConfigError(
            f"STALWART_REDIS_URL is not a Redis URL ({exc}); use redis://host:port/db"
        ) from exc
