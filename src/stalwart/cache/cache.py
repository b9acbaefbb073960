"""The feature value cache: memory, then Redis, then one batched source call.

>>> cache = FeatureCache()                                          # doctest: +SKIP
>>> fraud = cache.bind("fraud", version="3f9a0c", policy=CachePolicy(ttl=30))
>>> result = await fraud.get_many([(17,), (18,)], load_transactions)  # doctest: +SKIP
>>> result.rows[(17,)], result.stale                                # doctest: +SKIP
({'amount_1h': 42.0}, frozenset())

How one :meth:`FeatureSetCache.get_many` goes:

1. The in-process tier answers what it holds fresh. XFetch may pick a fresh entry for an
   early reload (probability rising as expiry nears, faster for values slow to compute),
   so hot keys are refreshed one at a time instead of all at the same instant.
2. Each remaining key is either already being fetched by another request (the request
   waits for that one: *coalescing*) or is fetched now, by one background task per request:
   Redis (one round trip for all keys), then the loader, once, for every key Redis lacked.
3. Loaded values fill Redis and then the in-process tier, unless an invalidation of that
   entity arrived during the load (the value may predate the write that caused it).
4. When the loader fails with a source error (:data:`DEFAULT_STALE_ON`), each key with an
   entry within its staleness bound is served from it and reported in ``stale``; the
   others re-raise the error (or, with ``allow_partial=True``, are listed in ``failed``).

Window aggregates. A value like "transactions in the last hour" changes as time passes,
without any write, as old events leave the window, so a TTL alone cannot keep it right.
Compute such features over windows that end at a step boundary
(``as_of = floor(now / step) * step``, the same rule in training, so there is no skew):
the value is then exact for the whole step, and events arriving now (time stamps after
``as_of``) do not change it. Give the policy that ``window_step``: entries are fresh only
until the end of the step they were computed in, and late writes (events stamped before
``as_of``) still invalidate through ``stalwart.features.write``/NOTIFY like any other write.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stalwart.cache.invalidation import InvalidationBus, Invalidator
from stalwart.cache.keys import EntityKey, KeySpace, channel_name, check_namespace, encode_entity
from stalwart.cache.memory import MemoryTier
from stalwart.cache.metrics import CacheMetrics, SetCounters
from stalwart.cache.redis import RedisTier
from stalwart.cache.tier import Entry, Row, Snapshot
from stalwart.durations import Seconds
from stalwart.errors import CacheUnavailable, ConfigError, FeatureError, ResilienceError
from stalwart.monitoring.logs import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from stalwart.config import Settings

__all__ = [
    "DEFAULT_STALE_ON",
    "CachePolicy",
    "CacheResult",
    "Expiring",
    "FeatureCache",
    "FeatureSetCache",
    "Loader",
]


@dataclass(frozen=True, slots=True)
class Expiring:
    """A loaded row (or None: no row) that stops being right at ``until`` (wall-clock
    seconds, on the cache's clock) even if nothing is written: a window aggregate whose
    oldest event leaves the window then, a latest value that grows too old.

    A loader returns it in place of a bare row; the entry is then fresh until the earlier
    of its TTL and ``until``. XFetch does not refresh such an entry early when ``until``
    decides: a reload before then would compute the same value.
    """

    row: Row | None
    until: float


Loader = Callable[[list[EntityKey]], Awaitable[Mapping[EntityKey, Row | Expiring | None]]]
"""Loads the rows of many entities in one source call; a key missing from the result, or
mapped to None, has no row (cached as such for the policy's ``negative_ttl``). A value may
be an :class:`Expiring` to bound its freshness."""

DEFAULT_STALE_ON: tuple[type[BaseException], ...] = (FeatureError, ResilienceError, OSError)
"""Loader errors that allow stale-if-error: source failures, an open breaker
(``CallNotPermitted``), timeouts (``CallTimeout``, ``TimeoutError``) and connection errors.
Anything else (a bug, a bad request) is re-raised even when a stale value exists."""

_MAX_LIFETIME = 7 * 86400.0  # the Redis tier keeps version lists this long
_log = get_logger("stalwart.cache")


class CachePolicy(BaseModel):
    """How one FeatureSet is cached; validated once, when the FeatureSet is bound.

    Durations are seconds, or strings such as ``"30s"``, ``"10m"``, ``"1h"``.

    ``max_staleness`` is the declared bound of stale-if-error: 0 (the default) never serves
    a value past its TTL. ``xfetch_beta`` scales XFetch early refresh (0 turns it off, 1 is
    the paper's optimum, higher refreshes earlier); ``ttl_jitter`` shortens each TTL by a
    random fraction up to that much. ``window_step`` is for window aggregates (see the
    module docstring); it turns XFetch off, since the value cannot change within a step.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttl: Seconds = Field(default=60.0, gt=0, description="seconds a value is served fresh")
    negative_ttl: Seconds = Field(
        default=10.0, ge=0, description="seconds 'the source has no row' is cached (0: never)"
    )
    max_staleness: Seconds = Field(
        default=0.0, ge=0, description="seconds past the TTL a value may serve while the source fails"
    )
    memory: bool = Field(default=True, description="use the in-process tier")
    redis: bool = Field(default=True, description="use the Redis tier (when Redis is configured)")
    xfetch_beta: float = Field(default=1.0, ge=0)
    ttl_jitter: float = Field(default=0.0, ge=0, lt=1)
    window_step: Seconds | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounded(self) -> CachePolicy:
        if max(self.ttl, self.negative_ttl) + self.max_staleness > _MAX_LIFETIME:
            raise ValueError("ttl + max_staleness must be at most 7 days")
        return self


@dataclass(slots=True)
class CacheResult:
    """What :meth:`FeatureSetCache.get_many` found.

    ``rows`` maps each requested entity to its row, or None when the source has none. Rows
    are shared with the cache: treat them as read-only. ``stale`` lists entities served
    past their TTL because the source failed (mark the response degraded), and
    ``stale_errors`` the failure behind each; ``failed`` (only with ``allow_partial=True``)
    those that could be served neither fresh nor stale, with the error.
    """

    rows: dict[EntityKey, Row | None]
    stale: frozenset[EntityKey] = frozenset()
    failed: dict[EntityKey, BaseException] = field(default_factory=dict)
    memory_hits: int = 0
    redis_hits: int = 0
    loaded: int = 0
    coalesced: int = 0
    stale_errors: dict[EntityKey, BaseException] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        """True when any entity was served stale or not at all."""
        return bool(self.stale or self.failed)


_REDIS, _SOURCE, _FALLBACK, _ERROR = 1, 2, 3, 4


class _Outcome:
    __slots__ = ("entry", "error", "origin")

    def __init__(self, origin: int, entry: Entry | None = None, error: BaseException | None = None) -> None:
        self.origin = origin
        self.entry = entry
        self.error = error


def _fresh(outcome: _Outcome, now: float) -> bool:
    return outcome.entry is not None and outcome.entry.fresh_until > now


class _Flight:
    """One entity being fetched; requests for the same key wait on its future."""

    __slots__ = ("dirty", "entity", "feature_set", "future", "key")

    def __init__(self, key: str, feature_set: str, entity: str, future: asyncio.Future[_Outcome]) -> None:
        self.key = key
        self.feature_set = feature_set
        self.entity = entity
        self.future = future
        self.dirty = False  # invalidated while in flight: serve, but never cache


class FeatureCache:
    """The two-tier feature value cache of one replica.

    Build it once per process (:meth:`from_settings` reads ``STALWART_REDIS_URL``), bind each
    FeatureSet with :meth:`bind`, and run :meth:`start`/:meth:`aclose` in the application's
    lifespan. Without Redis, the in-process tier works alone.
    """

    def __init__(
        self,
        *,
        memory: MemoryTier | None = None,
        redis: RedisTier | None = None,
        metrics: CacheMetrics | None = None,
        namespace: str = "stalwart",
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        stale_on: tuple[type[BaseException], ...] = DEFAULT_STALE_ON,
        offline_ttl: float | None = 5.0,
        heartbeat: float = 1.0,
        replica_id: str | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.memory = memory if memory is not None else MemoryTier()
        self.redis = redis
        self.metrics = metrics or CacheMetrics()
        self.replica_id = replica_id or uuid.uuid4().hex
        self.stale_on = stale_on
        self.offline_ttl = offline_ttl
        self.clock = clock
        self.rand = rand
        # A load older than this is not written back: the tombstone that would refuse it
        # may have expired (see RedisTier.tombstone_ttl).
        self.max_write_back = (redis.tombstone_ttl if redis is not None else 60.0) / 2
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics.watch_memory(lambda: len(self.memory), lambda: self.memory.bytes)
        if redis is not None and redis.namespace != namespace:
            raise ConfigError(
                f"the Redis tier's namespace {redis.namespace!r} differs from the cache's "
                f"{namespace!r}; build both with the same namespace"
            )
        self.invalidator = Invalidator(
            memory=self.memory,
            shared=redis,
            metrics=self.metrics,
            replica_id=self.replica_id,
            on_local=self._forget_flights,
            clock=clock,
        )
        self.bus: InvalidationBus | None = None
        if redis is not None:
            redis.on_error = self.metrics.tier_error("redis")
            redis.clock = clock  # entry times are read and written on one clock
            self.bus = InvalidationBus(
                redis.client,
                channel=channel_name(namespace),
                invalidator=self.invalidator,
                metrics=self.metrics,
                on_up=redis.reconnected,
                heartbeat=heartbeat,
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, registry: CollectorRegistry | None = None, **kwargs: Any
    ) -> FeatureCache:
        """The cache the settings describe: Redis when ``STALWART_REDIS_URL`` is set, the
        in-process tier sized by ``STALWART_CACHE_MAX_ENTRIES``/``_MAX_BYTES``."""
        namespace = settings.cache_namespace
        redis = None
        if settings.redis_url is not None:
            redis = RedisTier.from_url(settings.redis_url.get_secret_value(), namespace=namespace)
        return cls(
            memory=MemoryTier(settings.cache_max_entries, settings.cache_max_bytes),
            redis=redis,
            metrics=CacheMetrics(registry),
            namespace=namespace,
            **kwargs,
        )

    def bind(self, feature_set: str, version: str, policy: CachePolicy | None = None) -> FeatureSetCache:
        """The cache of one FeatureSet version, with its policy (decided once, here)."""
        return FeatureSetCache(self, KeySpace(self.namespace, feature_set, version), policy or CachePolicy())

    async def invalidate(self, feature_set: str, keys: Sequence[EntityKey] | None = None) -> bool:
        """Drop these entities (every version of the FeatureSet), or the whole FeatureSet
        when ``keys`` is None, here, in Redis and in every replica.

        Returns False when Redis could not take it now; it is then published when Redis
        returns (and other replicas drop their in-process tiers when they reconnect).
        """
        entities = None if keys is None else [encode_entity(k) for k in keys]
        return await self.invalidator.invalidate(feature_set, entities)

    async def invalidate_all(self) -> bool:
        """Drop every value of the namespace, everywhere."""
        return await self.invalidator.invalidate(None, None)

    @property
    def subscribed(self) -> bool:
        """True when this replica receives other replicas' invalidations (or needs none)."""
        return self.bus is None or self.bus.connected

    async def start(self) -> None:
        """Start receiving invalidations (call in the app's lifespan; no-op without Redis)."""
        if self.bus is not None:
            await self.bus.start()

    async def aclose(self) -> None:
        """Stop the subscriber, cancel loads in flight, close the Redis connections."""
        if self.bus is not None:
            await self.bus.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()

    def _forget_flights(self, feature_set: str | None, entities: frozenset[str] | None) -> None:
        flights = self._flights
        if not flights:
            return
        doomed = [
            key
            for key, flight in flights.items()
            if (feature_set is None or flight.feature_set == feature_set)
            and (entities is None or flight.entity in entities)
        ]
        for key in doomed:
            # New requests must not join a load that may predate the write.
            flights.pop(key).dirty = True

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("cache_fetch_failed", error=repr(task.exception()))


class FeatureSetCache:
    """The cache of one FeatureSet version: call :meth:`get_many` in front of its source."""

    def __init__(self, cache: FeatureCache, space: KeySpace, policy: CachePolicy) -> None:
        self.cache = cache
        self.space = space
        self.policy = policy
        self.name = space.feature_set
        self.version = space.version
        self._memory = cache.memory if policy.memory else None
        self._shared = cache.redis if policy.redis else None
        self._counters: SetCounters = cache.metrics.for_set(space.feature_set)
        # An early refresh within a window step recomputes the same as-of value: pointless.
        self._beta = 0.0 if policy.window_step is not None else policy.xfetch_beta

    def _early(self, entry: Entry, now: float) -> bool:
        # XFetch (Vattani et al., VLDB 2015): refresh when now - delta*beta*ln(U) >= expiry.
        return now - entry.delta * self._beta * math.log(1.0 - self.cache.rand()) >= entry.fresh_until

    async def get_many(
        self, keys: Sequence[EntityKey], loader: Loader, *, allow_partial: bool = False
    ) -> CacheResult:
        """The rows of ``keys``: from memory, Redis, or one ``loader`` call for the rest.

        Raises what the loader raised when an entity can be served neither fresh nor
        within ``max_staleness`` (unless ``allow_partial``, which lists it in ``failed``).
        """
        if not keys:
            return CacheResult({})
        cache = self.cache
        counters = self._counters
        now = cache.clock()
        prefix = self.space.prefix
        parts = {key: encode_entity(key) for key in keys}
        rows: dict[EntityKey, Row | None] = {}
        todo: dict[str, EntityKey] = {}
        fallback: dict[str, Entry] = {}
        hits = 0
        memory = self._memory
        if memory is not None:
            found = memory.get_many([prefix + part for part in parts.values()], now)
            early = 0
            for (key, part), entry in zip(parts.items(), found, strict=True):
                if entry is None:
                    todo[part] = key
                elif entry.fresh_until > now and not (self._beta and self._early(entry, now)):
                    rows[key] = entry.row
                    hits += 1
                else:
                    if entry.fresh_until > now:
                        early += 1
                    fallback[part] = entry
                    todo[part] = key
            counters.memory_hits.inc(hits)
            if todo:
                counters.memory_misses.inc(len(todo))
                if early:
                    counters.early_refreshes.inc(early)
        else:
            todo = {part: key for key, part in parts.items()}
        if not todo:
            counters.source_calls_saved.inc()
            return CacheResult(rows, memory_hits=hits)
        result = await self._fetch_rest(rows, todo, fallback, hits, loader, allow_partial)
        # Keep the request's order (hits were filled first).
        result.rows = {key: rows[key] for key in parts if key in rows}
        return result

    async def _fetch_rest(
        self,
        rows: dict[EntityKey, Row | None],
        todo: dict[str, EntityKey],
        fallback: dict[str, Entry],
        hits: int,
        loader: Loader,
        allow_partial: bool,
    ) -> CacheResult:
        cache = self.cache
        flights = cache._flights
        prefix = self.space.prefix
        waiting: list[tuple[EntityKey, str, _Flight]] = []
        mine: dict[str, _Flight] = {}
        coalesced = 0
        loop = asyncio.get_running_loop()
        start = cache.clock()
        for part, key in todo.items():
            full = prefix + part
            flight = flights.get(full)
            if flight is not None and flight.future.done() and not _fresh(flight.future.result(), start):
                # That load is over (only its write-back is pending) and its value has
                # expired since: joining it would serve an expired value as a fresh one.
                flight = None
            if flight is None:
                flight = flights[full] = _Flight(full, self.name, part, loop.create_future())
                mine[part] = flight
            else:
                coalesced += 1
            waiting.append((key, part, flight))
        if coalesced:
            self._counters.coalesced.inc(coalesced)
        if mine:
            own = {part: todo[part] for part in mine}
            cache._track(loop.create_task(self._fetch(own, mine, fallback, loader)))
        # asyncio.wait, unlike awaiting the futures, leaves them alone if we are cancelled:
        # other requests may be waiting on the same loads.
        await asyncio.wait([flight.future for _, _, flight in waiting])
        now = cache.clock()
        stale: dict[EntityKey, BaseException] = {}
        failed: dict[EntityKey, BaseException] = {}
        redis_hits = loaded = 0
        source_called = False
        for key, part, flight in waiting:
            outcome = flight.future.result()
            entry = outcome.entry
            error = outcome.error
            if entry is None:
                own_fallback = fallback.get(part)
                if (
                    own_fallback is not None
                    and isinstance(error, cache.stale_on)
                    and own_fallback.usable_until > now
                ):
                    entry = own_fallback
                else:
                    failed[key] = error or FeatureError("the feature cache lost a load; retry")
                    continue
            rows[key] = entry.row
            origin = outcome.origin
            if origin != _REDIS and origin != _SOURCE and entry.fresh_until <= now:
                stale[key] = error or FeatureError("the source failed")
            if origin == _REDIS:
                redis_hits += 1
            elif origin == _SOURCE:
                loaded += 1
                if part in mine:
                    source_called = True
        if stale:
            self._counters.stale_serves.inc(len(stale))
        if not source_called:
            self._counters.source_calls_saved.inc()
        if failed and not allow_partial:
            raise next(iter(failed.values()))
        return CacheResult(rows, frozenset(stale), failed, hits, redis_hits, loaded, coalesced, stale)

    async def _fetch(
        self,
        todo: dict[str, EntityKey],
        flights: dict[str, _Flight],
        fallback: dict[str, Entry],
        loader: Loader,
    ) -> None:
        """Redis, then one loader call, for keys no other request is fetching."""
        cache = self.cache
        counters = self._counters
        space = self.space
        try:
            seen = None
            shared = self._shared
            if shared is not None:
                try:
                    snapshot = await shared.get_many(space, list(todo))
                except CacheUnavailable:
                    counters.redis_misses.inc(len(todo))
                else:
                    seen = snapshot
                    todo = self._take_redis_hits(todo, flights, fallback, snapshot.entries)
            if not todo:
                return
            await self._load(todo, flights, fallback, loader, seen)
        finally:
            error = FeatureError("the feature cache closed while loading; retry the request")
            for flight in flights.values():
                if not flight.future.done():
                    flight.future.set_result(_Outcome(_ERROR, error=error))
                if cache._flights.get(flight.key) is flight:
                    del cache._flights[flight.key]

    def _take_redis_hits(
        self,
        todo: dict[str, EntityKey],
        flights: dict[str, _Flight],
        fallback: dict[str, Entry],
        entries: list[Entry | None],
    ) -> dict[str, EntityKey]:
        now = self.cache.clock()
        rest: dict[str, EntityKey] = {}
        hits: list[tuple[str, Entry]] = []
        for (part, key), entry in zip(todo.items(), entries, strict=True):
            if entry is None:
                rest[part] = key
            elif entry.fresh_until > now and not (self._beta and self._early(entry, now)):
                flights[part].future.set_result(_Outcome(_REDIS, entry))
                if not flights[part].dirty:
                    hits.append((part, entry))
            else:
                held = fallback.get(part)
                if held is None or held.computed_at < entry.computed_at:
                    fallback[part] = entry
                rest[part] = key
        self._counters.redis_hits.inc(len(todo) - len(rest))
        if rest:
            self._counters.redis_misses.inc(len(rest))
        if hits and self._memory is not None:
            self._memory.put_many(self.space, self._offline(hits, now), now)
        return rest

    async def _load(
        self,
        todo: dict[str, EntityKey],
        flights: dict[str, _Flight],
        fallback: dict[str, Entry],
        loader: Loader,
        seen: Snapshot | None,
    ) -> None:
        cache = self.cache
        self._counters.source_calls.inc()
        started = time.monotonic()
        try:
            loaded = await loader(list(todo.values()))
            delta = time.monotonic() - started
            now = cache.clock()
            items = [(part, self._entry(loaded.get(key), now, delta)) for part, key in todo.items()]
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
            now = cache.clock()
            usable = isinstance(exc, cache.stale_on)
            for part in todo:
                held = fallback.get(part)
                if usable and held is not None and held.usable_until > now:
                    flights[part].future.set_result(_Outcome(_FALLBACK, held, exc))
                else:
                    flights[part].future.set_result(_Outcome(_ERROR, error=exc))
            return
        for part, entry in items:
            flights[part].future.set_result(_Outcome(_SOURCE, entry))
        await self._write_back(items, flights, seen, started, now)

    def _entry(self, row: Any, now: float, delta: float) -> Entry:
        policy = self.policy
        until = None
        if type(row) is Expiring:
            until = row.until
            row = row.row
        if row is not None and type(row) is not dict:
            row = dict(row)
        ttl = policy.ttl if row is not None else policy.negative_ttl
        if policy.ttl_jitter:
            ttl *= 1.0 - policy.ttl_jitter * self.cache.rand()
        fresh = now + ttl
        step = policy.window_step
        if step is not None:
            fresh = min(fresh, (math.floor(now / step) + 1) * step)
        if until is not None and until < fresh:
            # The value itself changes at `until`: an early reload would compute the same
            # one, so XFetch (which scales with delta) stays off for this entry.
            fresh, delta = until, 0.0
        return Entry(row, now, fresh, fresh + policy.max_staleness, delta)

    async def _write_back(
        self,
        items: list[tuple[str, Entry]],
        flights: dict[str, _Flight],
        seen: Snapshot | None,
        started: float,
        now: float,
    ) -> None:
        if self.policy.negative_ttl <= 0:
            items = [(part, entry) for part, entry in items if entry.row is not None]
        keep = [(part, entry) for part, entry in items if not flights[part].dirty]
        if time.monotonic() - started > self.cache.max_write_back:
            keep = []
        shared = self._shared
        # Without a snapshot (Redis failed when read) the write could not be guarded
        # against an invalidation in between: Redis is skipped, memory stays guarded.
        if keep and shared is not None and seen is not None:
            try:
                stored = await shared.set_many(self.space, keep, seen)
            except CacheUnavailable:
                pass  # Redis went away during the load: memory alone, guarded below
            else:
                keep = [item for item, ok in zip(keep, stored, strict=True) if ok]
        if keep:
            # An invalidation may have arrived while Redis was writing.
            keep = [(part, entry) for part, entry in keep if not flights[part].dirty]
        if keep and self._memory is not None:
            self._memory.put_many(self.space, self._offline(keep, now), now)
        if len(keep) < len(items):
            self._counters.writes_refused.inc(len(items) - len(keep))

    def _offline(self, items: list[tuple[str, Entry]], now: float) -> list[tuple[str, Entry]]:
        """Limit what we cache in memory while blind to other replicas' invalidations."""
        limit = self.cache.offline_ttl
        if limit is None or self.cache.subscribed:
            return items
        until = now + limit
        return [
            (part, msgspec.structs.replace(entry, fresh_until=min(entry.fresh_until, until), usable_until=min(entry.usable_until, until)))
            if entry.fresh_until > until
            else (part, entry)
            for part, entry in items
        ]
