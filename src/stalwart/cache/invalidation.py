"""Invalidation: drop values here, in Redis, and in every other replica's in-process tier.

:class:`Invalidator` does one invalidation everywhere: the local in-process tier (and any
load of those entities in flight, so it is not written back), then Redis, where one Lua
script tombstones the keys (or replaces the FeatureSet's epoch) *and* publishes the
message, so no replica can be told before Redis forgets the value.

:class:`InvalidationBus` is each replica's subscriber. It uses Redis pub/sub rather than
streams: pub/sub delivers in a fraction of a millisecond with no per-message storage or
trimming, and the one thing streams would add, replaying what a disconnected replica
missed, is not needed, because a replica that may have missed anything drops its whole
in-process tier instead (on disconnect *and* on every (re)subscription), then refills it
from Redis, which was invalidated in place. Dropping is cheaper to get right than replay:
there is no window to size and no gap to detect.

While disconnected, the replica is blind to other replicas' writes, so the cache limits
the in-process lifetime of what it loads then (``offline_ttl``); invalidations made here
while Redis is down are kept (bounded) and published when it returns.

Without Redis, the processes of one host that serve together (the workers of ``stalwart
serve --workers N``) still hear each other: :attr:`Invalidator.peers` passes each
invalidation made here to them (through their supervisor), and they apply it with
:meth:`Invalidator.receive`, as a Redis message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._optional import require
from stalwart.cache.background import Background
from stalwart.cache.memory import MemoryTier
from stalwart.cache.metrics import CacheMetrics
from stalwart.cache.tier import CacheTier
from stalwart.errors import CacheUnavailable
from stalwart.monitoring.logs import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["PEER_MESSAGE_BYTES", "Invalidation", "InvalidationBus", "Invalidator"]

_log = get_logger("stalwart.cache")

_CHUNK = 1000  # entities per Redis script call and per message
PEER_MESSAGE_BYTES = 32 * 1024
"""The longest message passed to :attr:`Invalidator.peers`: an invalidation of entities
that encodes longer goes to them as one of their whole FeatureSet (more, never less)."""

LocalHook = Callable[[str | None, frozenset[str] | None], None]
"""Called with (feature set or None for all, entities or None for the whole set)."""


class Invalidation(msgspec.Struct, array_like=True, frozen=True):
    """The pub/sub message: which values to drop, who sent it, and when."""

    origin: str
    feature_set: str | None  # None: every FeatureSet of the namespace
    entities: list[str] | None  # encoded entity keys; None: the whole FeatureSet
    sent_at: float  # wall clock, for the propagation delay

    @property
    def scope(self) -> str:
        if self.feature_set is None:
            return "all"
        return "feature_set" if self.entities is None else "entities"


class Invalidator:
    """Invalidates locally and through the shared tier; remembers what Redis missed."""

    def __init__(
        self,
        *,
        memory: MemoryTier | None,
        shared: CacheTier | None,
        metrics: CacheMetrics,
        replica_id: str,
        on_local: LocalHook,
        clock: Callable[[], float] = time.time,
        max_pending: int = 10_000,
    ) -> None:
        self.memory = memory
        self.shared = shared
        self.metrics = metrics
        self.replica_id = replica_id
        self.listeners: list[Callable[[Invalidation, float], None]] = []
        """Called with each message received from another replica and its delay (seconds)."""
        self.peers: Callable[[bytes], bool] | None = None
        """Without a shared tier: the processes on this host that serve beside this one (the
        other workers of ``stalwart serve --workers N``). Given each invalidation made here,
        as a message their :meth:`receive` takes; returns whether it was passed on."""
        self._on_local = on_local
        self._clock = clock
        self._max_pending = max_pending
        self._pending: dict[str | None, set[str] | None] = {}
        self._pending_count = 0
        self._replaying = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Invalidation)

    async def invalidate(
        self, feature_set: str | None, entities: Sequence[str] | None = None, *, announce: bool = True
    ) -> bool:
        """Invalidate entities of a FeatureSet (every version), a whole FeatureSet
        (``entities=None``) or everything (``feature_set=None``).

        The local drop always happens. Returns True when Redis took it (and so every
        replica will), False when Redis is unavailable: the invalidation is then kept and
        published when Redis returns, and the other replicas drop their in-process tiers
        on reconnect anyway. ``announce=False`` skips the message to other replicas, for
        sources every replica watches by itself (PostgreSQL NOTIFY).
        """
        if feature_set is not None and entities is not None:
            entities = list(dict.fromkeys(entities))
            if not entities:
                return True
        self.drop_local(feature_set, entities)
        if self.shared is None:
            return self._tell_peers(feature_set, entities) if announce else True
        try:
            await self._publish(feature_set, entities, announce=announce)
        except CacheUnavailable:
            self._remember(feature_set, entities)
            return False
        return True

    async def _publish(
        self, feature_set: str | None, entities: Sequence[str] | None, *, announce: bool = True
    ) -> None:
        shared = self.shared
        if shared is None:
            return
        if feature_set is None or entities is None:
            message = self._message(feature_set, None) if announce else None
            await shared.clear(feature_set, announce=message)
            if announce:
                self.metrics.invalidations_sent.labels("all" if feature_set is None else "feature_set").inc()
            return
        for start in range(0, len(entities), _CHUNK):
            chunk = list(entities[start : start + _CHUNK])
            message = self._message(feature_set, chunk) if announce else None
            await shared.delete(feature_set, chunk, announce=message)
        if announce:
            self.metrics.invalidations_sent.labels("entities").inc()

    def _tell_peers(self, feature_set: str | None, entities: Sequence[str] | None) -> bool:
        peers = self.peers
        if peers is None:
            return True
        message = self._message(feature_set, None if entities is None else list(entities))
        if len(message) > PEER_MESSAGE_BYTES:
            entities = None
            message = self._message(feature_set, None)
        if not peers(message):
            return False
        scope = "all" if feature_set is None else "feature_set" if entities is None else "entities"
        self.metrics.invalidations_sent.labels(scope).inc()
        return True

    def _message(self, feature_set: str | None, entities: list[str] | None) -> bytes:
        return self._encoder.encode(Invalidation(self.replica_id, feature_set, entities, self._clock()))

    def drop_local(self, feature_set: str | None, entities: Sequence[str] | None) -> None:
        """Drop from the in-process tier and mark loads in flight as not to be cached."""
        if self.memory is not None:
            if feature_set is not None and entities is not None:
                self.memory.delete(feature_set, entities)
            else:
                self.memory.clear(feature_set)
        self._on_local(feature_set, None if entities is None else frozenset(entities))

    def receive(self, raw: bytes) -> None:
        """Apply a message from the channel (our own are skipped: already applied)."""
        try:
            message = self._decoder.decode(raw)
        except msgspec.DecodeError:
            # An invalidation we cannot read may have been about anything.
            _log.warning("cache_invalidation_undecodable", size=len(raw))
            self.reset()
            return
        if message.origin == self.replica_id:
            return
        self.drop_local(message.feature_set, message.entities)
        delay = self._clock() - message.sent_at
        self.metrics.invalidations_received.labels(message.scope).inc()
        self.metrics.invalidation_delay.observe(max(delay, 0.0))
        for listener in self.listeners:
            listener(message, delay)

    def reset(self) -> None:
        """Drop the whole in-process tier: invalidations may have been missed."""
        self.drop_local(None, None)
        self.metrics.resets.inc()

    def _remember(self, feature_set: str | None, entities: Sequence[str] | None) -> None:
        pending = self._pending
        if None in pending:
            return
        if feature_set is None:
            pending.clear()
            pending[None] = None
            self._pending_count = 0
        elif entities is None or pending.get(feature_set, set()) is None:
            self._pending_count -= len(pending.get(feature_set) or ())
            pending[feature_set] = None
        else:
            held = pending.setdefault(feature_set, set())
            if held is not None:
                before = len(held)
                held.update(entities)
                self._pending_count += len(held) - before
        if self._pending_count > self._max_pending:
            # Too many to list: invalidate the FeatureSets whole when Redis returns.
            for name in pending:
                pending[name] = None
            self._pending_count = 0
        self.metrics.invalidations_pending.set(self.pending)

    @property
    def pending(self) -> int:
        """Invalidations waiting for Redis, counting those a replay is publishing now (one
        is not applied until Redis has taken it)."""
        return len(self._pending) + self._replaying

    async def replay(self) -> bool:
        """Publish what Redis missed; returns True when nothing is left pending."""
        todo, self._pending = self._pending, {}
        self._pending_count = 0
        self._replaying += len(todo)
        try:
            for name, entities in todo.items():
                await self._publish(name, None if entities is None else sorted(entities))
        except CacheUnavailable:
            for name, entities in todo.items():
                self._remember(name, None if entities is None else list(entities))
        finally:
            self._replaying -= len(todo)
        self.metrics.invalidations_pending.set(self.pending)
        return not self._pending


class InvalidationBus(Background):
    """One replica's subscription to its namespace's invalidation channel.

    Start it in the application's lifespan (:meth:`FeatureCache.start` does). It reconnects
    by itself with exponential backoff; every (re)subscription and every disconnection
    drops the in-process tier, and a silent connection (no reply to a ping within three
    heartbeats) counts as a disconnection.
    """

    _task_name = "stalwart-cache-bus"

    def __init__(
        self,
        client: Redis,
        *,
        channel: str,
        invalidator: Invalidator,
        metrics: CacheMetrics,
        on_up: Callable[[], Awaitable[None]] | None = None,
        heartbeat: float = 1.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        redis = require("redis", extra="redis", purpose="Cache invalidation across replicas")
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self.client = client
        self.channel = channel
        self.invalidator = invalidator
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.backoff = backoff
        self.connected = False
        self._on_up = on_up
        super().__init__()

    def _stopped(self) -> None:
        self._down(None)

    async def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._listen(pubsub)
            except self._errors as exc:
                self._down(exc)
            except Exception as exc:  # noqa: BLE001 - a subscriber that died silently would leave this replica serving invalidated values; log, drop, resubscribe
                _log.exception("cache_invalidation_subscriber_failed", channel=self.channel)
                self._down(exc)
            finally:
                with contextlib.suppress(*self._errors):
                    # redis-py < 8.2 leaves PubSub.aclose unannotated, 8.2 annotates it: the
                    # ignore covers both (the lock pins one; make test-latest may meet the other).
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            if self._up.is_set():
                delay = self.backoff[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _listen(self, pubsub: Any) -> None:
        last_heard = last_ping = last_replay = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self.heartbeat)
            now = time.monotonic()
            if self.invalidator.pending and now - last_replay >= self.heartbeat:
                # Redis failed a publish while this subscription stayed up: retry now.
                last_replay = now
                await self.invalidator.replay()
            if message is None:
                if now - last_heard > 3 * self.heartbeat:
                    raise OSError("no reply from Redis within three heartbeats")
                if now - last_ping >= self.heartbeat:
                    await pubsub.ping()
                    last_ping = now
                continue
            last_heard = now
            kind = message["type"]
            if kind == "message":
                self.invalidator.receive(message["data"])
            elif kind == "subscribe":
                await self._subscribed()

    async def _subscribed(self) -> None:
        # Whatever was published while we were not subscribed is lost to us: drop it all.
        self.invalidator.reset()
        self.connected = True
        self.metrics.subscribed.set(1)
        self._up.set()
        if self._on_up is not None:
            await self._on_up()
        _log.info("cache_invalidation_subscribed", channel=self.channel)
        await self.invalidator.replay()

    def _down(self, exc: BaseException | None) -> None:
        was = self.connected
        self.connected = False
        self._up.clear()
        self.metrics.subscribed.set(0)
        if was:
            self.invalidator.reset()
            if exc is not None:
                _log.warning("cache_invalidation_disconnected", channel=self.channel, error=repr(exc))
