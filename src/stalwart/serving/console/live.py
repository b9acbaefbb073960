"""Live numbers for the console: each deployment's (and ``/v2`` model's) last minutes, per second.

:class:`LiveStats` is a request tap (:class:`~stalwart.serving.dataplane.RequestTap`): on
the event loop it adds one request's outcome to its key's current second and returns,
nothing awaited, nothing queued. A key keeps :data:`SPAN` seconds in a ring of per-second
counts (requests, server errors, client errors, shed, degraded, validation violations,
feature-cache hits and lookups, requests per variant) and a latency histogram of
logarithmic buckets (each about 19% wider than the last, from 50 µs to about 100 s), so a
percentile over any stretch is the merge of its seconds, within one bucket's width (the
console shows it to two significant digits). Its memory is fixed per key, and keys are
bounded: deployments are the project's, models the registry's (a ``/v2`` request for an
unknown model is not counted).

Latency percentiles are over answered requests (status below 400, degraded ones included):
a shed or refused request answers at once and would make the model look fast.

These are one process's numbers: with several replicas each console shows its own. What
every replica shares (rollouts, drift, the prediction log) comes from the database.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from stalwart.errors import Overloaded, ValidationFailed
from stalwart.serving.dataplane import Outcome
from stalwart.serving.errors import status_for

__all__ = ["SPAN", "Key", "LiveSnapshot", "LiveStats"]

SPAN: Final = 120
"""Seconds each key keeps."""

Key = tuple[Literal["deployment", "model"], str]
"""``("deployment", name)`` for ``/v1`` requests, ``("model", name)`` for ``/v2`` ones."""

_FACTOR: Final = 2 ** 0.25
# Upper bounds (ms) of the latency buckets; the last bucket takes everything above.
_BOUNDS: Final = tuple(0.05 * _FACTOR**i for i in range(int(math.log(120_000 / 0.05, _FACTOR)) + 1))
# Where a cached value came from, per Resolved.cache: these counts needed no source round trip.
_HITS: Final = ("memory", "redis", "coalesced")


@dataclass(slots=True)
class _Second:
    """One second of one key; reused when the ring comes round to it again."""

    at: int = -1
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    shed: int = 0
    degraded: int = 0
    violations: int = 0
    cache_hits: int = 0
    cache_lookups: int = 0
    variants: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(_BOUNDS) + 1))

    def reset(self, at: int) -> None:
        self.at = at
        self.requests = self.errors = self.rejected = self.shed = 0
        self.degraded = self.violations = self.cache_hits = self.cache_lookups = 0
        self.variants.clear()
        self.latency = [0] * (len(_BOUNDS) + 1)


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """A key's numbers over its last ``seconds`` (rates per request, None without requests).

    ``series`` holds, oldest first, each second's requests and p99 latency (ms; None in a
    second with no answered request): what the sparklines draw."""

    seconds: int
    requests: int
    rate: float
    error_rate: float | None
    rejected_rate: float | None
    shed_rate: float | None
    degraded_rate: float | None
    violation_rate: float | None
    cache_hit_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    variants: Mapping[str, int]
    series: tuple[tuple[int, float | None], ...]


class LiveStats:
    """The console's request tap and the per-second windows it fills (see the module)."""

    def __init__(self, *, span: int = SPAN, clock: Callable[[], float] = time.monotonic) -> None:
        self._span = span
        self._clock = clock
        self._rings: dict[Key, list[_Second]] = {}
        self._since: dict[Key, int] = {}

    def __call__(self, outcome: Outcome) -> None:
        """Count one request (the tap: on the event loop, O(1), returns nothing to await)."""
        error = outcome.error
        if outcome.deployment is not None:
            key: Key = ("deployment", outcome.deployment)
        elif outcome.info.model:
            key = ("model", outcome.info.model)
        else:
            return
        if error is None:
            status = 200
        elif isinstance(error, asyncio.CancelledError):
            status = 499
        else:
            status = status_for(error)
        prediction = outcome.prediction
        exchange = outcome.exchange
        note = exchange.validation if exchange is not None else None
        violated = isinstance(error, ValidationFailed) or (note is not None and bool(note.summary.get("violations")))
        hits = lookups = 0
        for counts in (outcome.features.get("cache") or {}).values():
            for source, n in counts.items():
                lookups += n
                if source in _HITS:
                    hits += n
        self.record(
            key,
            status=status,
            latency_ms=(time.perf_counter() - outcome.info.started) * 1000,
            variant=outcome.routed or outcome.variant,
            shed=isinstance(error, Overloaded),
            degraded=prediction is not None and prediction.degraded is not None,
            violated=violated,
            cache_hits=hits,
            cache_lookups=lookups,
        )

    def record(
        self,
        key: Key,
        *,
        status: int,
        latency_ms: float,
        variant: str | None = None,
        shed: bool = False,
        degraded: bool = False,
        violated: bool = False,
        cache_hits: int = 0,
        cache_lookups: int = 0,
    ) -> None:
        """Count one request of ``key`` in the current second."""
        now = int(self._clock())
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = [_Second() for _ in range(self._span)]
            self._since[key] = now
        second = ring[now % self._span]
        if second.at != now:
            second.reset(now)
        second.requests += 1
        if status >= 500:
            second.errors += 1
        elif status >= 400:
            second.rejected += 1
        else:
            second.latency[bisect.bisect_left(_BOUNDS, latency_ms)] += 1
        second.shed += shed
        second.degraded += degraded
        second.violations += violated
        second.cache_hits += cache_hits
        second.cache_lookups += cache_lookups
        if variant is not None:
            second.variants[variant] = second.variants.get(variant, 0) + 1

    def seen(self) -> list[Key]:
        """Every key that has had a request since the process started."""
        return sorted(self._rings)

    def snapshot(self, key: Key, seconds: int = 60) -> LiveSnapshot:
        """``key``'s numbers over its last ``seconds`` (at most the span), the second now
        under way included; zeros for a key with no request."""
        seconds = max(1, min(seconds, self._span))
        now = int(self._clock())
        ring = self._rings.get(key)
        window = [self._second(ring, at) for at in range(now - seconds + 1, now + 1)] if ring is not None else []
        # A key seen for ten seconds has a rate over those ten, not over the whole minute.
        elapsed = min(seconds, now - self._since.get(key, now) + 1)
        totals: dict[str, int] = {}
        for name in ("requests", "errors", "rejected", "shed", "degraded", "violations", "cache_hits", "cache_lookups"):
            totals[name] = sum(getattr(s, name) for s in window if s is not None)
        latency = [0] * (len(_BOUNDS) + 1)
        variants: dict[str, int] = {}
        series: list[tuple[int, float | None]] = []
        for s in window:
            if s is None:
                series.append((0, None))
                continue
            for i, n in enumerate(s.latency):
                latency[i] += n
            for name, n in s.variants.items():
                variants[name] = variants.get(name, 0) + n
            series.append((s.requests, _quantile(s.latency, 0.99)))
        n = totals["requests"]
        return LiveSnapshot(
            seconds=seconds,
            requests=n,
            rate=n / elapsed if n else 0.0,
            error_rate=_share(totals["errors"], n),
            rejected_rate=_share(totals["rejected"], n),
            shed_rate=_share(totals["shed"], n),
            degraded_rate=_share(totals["degraded"], n),
            violation_rate=_share(totals["violations"], n),
            cache_hit_rate=_share(totals["cache_hits"], totals["cache_lookups"]),
            p50=_quantile(latency, 0.5),
            p95=_quantile(latency, 0.95),
            p99=_quantile(latency, 0.99),
            variants=dict(sorted(variants.items())),
            series=tuple(series),
        )

    def _second(self, ring: list[_Second], at: int) -> _Second | None:
        second = ring[at % self._span]
        return second if second.at == at else None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram of :data:`_BOUNDS`, as its bucket's geometric middle."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            if i == 0 or i == len(_BOUNDS):  # the first and the open-ended last: their bound
                return _BOUNDS[min(i, len(_BOUNDS) - 1)]
            return _BOUNDS[i] / math.sqrt(_FACTOR)
    return _BOUNDS[-1]  # pragma: no cover - the loop always reaches the rank

