"""Prometheus metrics of the feature cache, registered in the server's CollectorRegistry.

Labels are bounded: ``feature_set`` is a defined FeatureSet's name (never a request value),
``tier`` is ``memory`` or ``redis``, ``scope`` is ``entities``, ``feature_set`` or ``all``.
The per-FeatureSet children are looked up once, when a FeatureSet is bound, so the hot
path pays only the increments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stalwart.monitoring.metrics import gauge_function

__all__ = ["CacheMetrics", "SetCounters"]

# Loopback pub/sub lands in well under a millisecond; the buckets start there.
_DELAY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(slots=True)
class SetCounters:
    """The counters of one FeatureSet, resolved once at bind time."""

    memory_hits: Any
    memory_misses: Any
    redis_hits: Any
    redis_misses: Any
    stale_serves: Any
    coalesced: Any
    source_calls: Any
    source_calls_saved: Any
    early_refreshes: Any
    writes_refused: Any


class CacheMetrics:
    """Hits and misses per tier, invalidations sent and received, stale serves, coalesced
    keys, source calls made and saved, tier errors, and the in-process tier's size."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hits = Counter(
            "stalwart_cache_hits", "Entities served fresh from a cache tier", ("tier", "feature_set"), registry=r
        )
        self.misses = Counter(
            "stalwart_cache_misses",
            "Entities a cache tier could not serve fresh (absent, expired or refreshing early)",
            ("tier", "feature_set"),
            registry=r,
        )
        self.stale_serves = Counter(
            "stalwart_cache_stale_serves",
            "Entities served past their TTL because the source failed (stale-if-error)",
            ("feature_set",),
            registry=r,
        )
        self.coalesced = Counter(
            "stalwart_cache_coalesced",
            "Entities that waited for another request's load instead of calling the source",
            ("feature_set",),
            registry=r,
        )
        self.source_calls = Counter(
            "stalwart_cache_source_calls", "Loader (source) calls the cache made", ("feature_set",), registry=r
        )
        self.source_calls_saved = Counter(
            "stalwart_cache_source_calls_saved",
            "Lookups answered without a source call of their own (one call each without a cache)",
            ("feature_set",),
            registry=r,
        )
        self.early_refreshes = Counter(
            "stalwart_cache_early_refreshes",
            "Fresh entities reloaded early by XFetch to avoid a synchronized expiry",
            ("feature_set",),
            registry=r,
        )
        self.writes_refused = Counter(
            "stalwart_cache_writes_refused",
            "Loaded values not cached because an invalidation arrived while they were loading",
            ("feature_set",),
            registry=r,
        )
        self.invalidations_sent = Counter(
            "stalwart_cache_invalidations_sent", "Invalidations this replica published", ("scope",), registry=r
        )
        self.invalidations_received = Counter(
            "stalwart_cache_invalidations_received",
            "Invalidations received from other replicas",
            ("scope",),
            registry=r,
        )
        self.invalidations_pending = Gauge(
            "stalwart_cache_invalidations_pending",
            "Invalidations waiting for Redis to come back before they can be published",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.invalidation_delay = Histogram(
            "stalwart_cache_invalidation_delay_seconds",
            "Time from an invalidation's publication to its application on this replica",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.tier_errors = Counter(
            "stalwart_cache_tier_errors", "Cache tier calls that failed and were skipped", ("tier", "op"), registry=r
        )
        self.resets = Counter(
            "stalwart_cache_resets",
            "In-process tier drops because invalidations may have been missed (Redis reconnect)",
            registry=r,
        )
        self.subscribed = Gauge(
            "stalwart_cache_invalidation_subscribed",
            "1 while this replica receives invalidations from Redis",
            registry=r,
            multiprocess_mode="livemin",  # workers: 1 when every one of them does
        )
        self.memory_entries = Gauge(
            "stalwart_cache_memory_entries", "Entries held by the in-process tier", registry=r, multiprocess_mode="livesum"
        )
        self.memory_bytes = Gauge(
            "stalwart_cache_memory_bytes", "Estimated bytes held by the in-process tier", registry=r, multiprocess_mode="livesum"
        )

    def for_set(self, feature_set: str) -> SetCounters:
        """The children for one FeatureSet (resolve once; increments are then cheap)."""
        return SetCounters(
            memory_hits=self.hits.labels("memory", feature_set),
            memory_misses=self.misses.labels("memory", feature_set),
            redis_hits=self.hits.labels("redis", feature_set),
            redis_misses=self.misses.labels("redis", feature_set),
            stale_serves=self.stale_serves.labels(feature_set),
            coalesced=self.coalesced.labels(feature_set),
            source_calls=self.source_calls.labels(feature_set),
            source_calls_saved=self.source_calls_saved.labels(feature_set),
            early_refreshes=self.early_refreshes.labels(feature_set),
            writes_refused=self.writes_refused.labels(feature_set),
        )

    def watch_memory(self, entries: Callable[[], float], nbytes: Callable[[], float]) -> None:
        """Report the in-process tier's size when scraped."""
        gauge_function(self.memory_entries, entries)
        gauge_function(self.memory_bytes, nbytes)

    def tier_error(self, tier: str) -> Callable[[str], None]:
        """A callback counting failed calls of one tier, by operation."""

        def count(op: str) -> None:
            self.tier_errors.labels(tier, op).inc()

        return count

