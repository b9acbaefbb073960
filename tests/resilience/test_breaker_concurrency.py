"""The breaker under concurrent callers: threads and asyncio tasks, randomized and bounded.

The property that matters: in HALF_OPEN no more than the permitted number of trial calls
are ever in flight at once, and the verdict rests on exactly that many calls.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stalwart.errors import ModelError, ValidationFailed
from stalwart.resilience import BreakerConfig, BreakerState, CircuitBreaker, Permit
from tests.resilience.clock import FakeClock


@pytest.fixture(autouse=True)
def eager_thread_switching() -> Iterator[None]:
    """Switch threads every microsecond, so races have every chance to show."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def half_open_breaker(clock: FakeClock, permitted: int) -> CircuitBreaker:
    breaker = CircuitBreaker(
        "model-a",
        BreakerConfig(
            sliding_window_size=1,
            minimum_number_of_calls=1,
            wait_duration_in_open_state=1,
            permitted_number_of_calls_in_half_open_state=permitted,
        ),
        clock=clock,
    )
    breaker.transition_to(BreakerState.OPEN)
    clock.advance(1.5)
    return breaker


class InFlight:
    """Counts calls in flight and remembers the most ever seen at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(permitted=st.integers(1, 6), threads=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_threads_never_exceed_the_half_open_permits(permitted: int, threads: int, seed: int) -> None:
    """Many threads racing for trial permits (returning them as ignored calls, so the
    breaker stays HALF_OPEN) never have more than the permitted number in flight. (That
    all permits get used is the next test's job: here it depends on the scheduler.)"""
    breaker = half_open_breaker(FakeClock(), permitted)
    inflight = InFlight()
    start = threading.Barrier(threads)
    stop_at = time.monotonic() + 0.1
    errors: list[BaseException] = []

    def worker(rng: random.Random) -> None:
        try:
            start.wait()
            while time.monotonic() < stop_at:
                permit = breaker.try_acquire()
                if permit is None:
                    continue
                inflight.enter()
                if rng.random() < 0.5:
                    time.sleep(0)  # let another thread in while we hold the permit
                inflight.leave()
                permit.on_error(ValidationFailed("ignored", []))
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(random.Random(seed + i),)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=10)
    assert not errors
    assert 1 <= inflight.peak <= permitted
    assert breaker.state is BreakerState.HALF_OPEN


def test_threads_at_once_get_exactly_the_permitted_trials() -> None:
    """Round after round, threads released together get exactly `permitted` trial permits;
    the verdict is taken on exactly those calls."""
    threads, permitted = 16, 4
    for round_no in range(40):
        clock = FakeClock()
        breaker = half_open_breaker(clock, permitted)
        start = threading.Barrier(threads)
        granted: list[Permit] = []
        lock = threading.Lock()

        def worker(
            breaker: CircuitBreaker = breaker,
            start: threading.Barrier = start,
            granted: list[Permit] = granted,
            lock: threading.Lock = lock,
        ) -> None:
            start.wait()
            permit = breaker.try_acquire()
            if permit is not None:
                with lock:
                    granted.append(permit)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=10)
        assert len(granted) == permitted, f"round {round_no}"
        for permit in granted[:-1]:
            permit.on_success(0.001)
        assert breaker.state is BreakerState.HALF_OPEN
        granted[-1].on_error(ModelError("x"), 0.001)  # 1 of 4 failed: below 50%
        assert breaker.snapshot().state is BreakerState.CLOSED


async def test_asyncio_tasks_never_exceed_the_half_open_permits() -> None:
    """Hundreds of tasks interleaving at await points never hold more trial permits than
    allowed, and the verdict is taken on exactly the permitted number of trial calls."""
    rng = random.Random(7)
    for permitted in (1, 3, 10):
        breaker = half_open_breaker(FakeClock(), permitted)
        inflight = InFlight()
        trials_recorded = 0

        async def caller(breaker: CircuitBreaker = breaker, inflight: InFlight = inflight) -> None:
            nonlocal trials_recorded
            for _ in range(20):
                permit = breaker.try_acquire()
                if permit is None:
                    await asyncio.sleep(0)
                    continue
                # One thread: nothing ran between the acquire and this read.
                trial = breaker.state is BreakerState.HALF_OPEN
                if trial:
                    inflight.enter()
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)
                if trial:
                    inflight.leave()
                if rng.random() < 0.7:
                    permit.release()  # ignored: gives the permit back
                else:
                    trials_recorded += trial
                    permit.on_success(0.001)

        await asyncio.gather(*(caller() for _ in range(200)))
        assert inflight.peak == permitted
        assert trials_recorded == permitted
        assert breaker.state is BreakerState.CLOSED
