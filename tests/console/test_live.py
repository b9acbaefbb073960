"""The console's live numbers: per-second windows per deployment, rates and percentiles over
the last seconds, and a key's old seconds forgotten as the clock moves on."""

from __future__ import annotations

import pytest

from stalwart.serving.console.live import SPAN, LiveStats


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_shares_over_the_window() -> None:
    """Requests per second over the seconds the key has been seen, and each outcome's share."""
    clock = Clock()
    live = LiveStats(clock=clock)
    key = ("deployment", "fraud")
    for second in range(10):
        clock.now = 1_000.0 + second
        for i in range(10):
            live.record(key, status=200 if i else 503, latency_ms=2.0, variant="canary" if i < 3 else "primary",
                        shed=i == 0, degraded=i == 1, violated=i == 2, cache_hits=1, cache_lookups=2)
    snap = live.snapshot(key, 60)
    assert snap.requests == 100
    assert snap.rate == pytest.approx(10.0)  # 100 requests in the 10 s seen, not in 60
    assert snap.error_rate == pytest.approx(0.1)
    assert (snap.shed_rate, snap.degraded_rate, snap.violation_rate) == (pytest.approx(0.1),) * 3
    assert snap.cache_hit_rate == pytest.approx(0.5)
    assert snap.variants == {"canary": 30, "primary": 70}
    assert len(snap.series) == 60
    assert snap.series[-1][0] == 10
    assert snap.series[0] == (0, None)


def test_percentiles_are_within_a_bucket_and_count_answered_requests_only() -> None:
    """p50/p95/p99 are within one logarithmic bucket (about 19%) of the exact values; a shed
    request's instant 503 does not make the model look fast."""
    clock = Clock()
    live = LiveStats(clock=clock)
    key = ("model", "scorer")
    latencies = [float(i) for i in range(1, 1001)]  # 1 ms .. 1000 ms
    for ms in latencies:
        live.record(key, status=200, latency_ms=ms)
    for _ in range(500):
        live.record(key, status=503, latency_ms=0.01, shed=True)
    snap = live.snapshot(key)
    for got, exact in ((snap.p50, 500.0), (snap.p95, 950.0), (snap.p99, 990.0)):
        assert got is not None
        assert abs(got / exact - 1) < 0.2, (got, exact)


def test_old_seconds_leave_the_window_and_the_span_bounds_it() -> None:
    """A second older than the window no longer counts; a ring slot reused by a later
    second starts from zero; a window longer than the span is the span."""
    clock = Clock()
    live = LiveStats(clock=clock)
    key = ("deployment", "fraud")
    live.record(key, status=500, latency_ms=1.0)
    clock.now += 30
    assert live.snapshot(key, 60).requests == 1
    assert live.snapshot(key, 10).requests == 0
    clock.now += SPAN  # the first second's slot comes round again
    live.record(key, status=200, latency_ms=1.0)
    snap = live.snapshot(key, 10_000)
    assert (snap.requests, snap.error_rate, snap.seconds) == (1, 0.0, SPAN)
    assert live.snapshot(("deployment", "other")).requests == 0
    assert live.seen() == [key]
