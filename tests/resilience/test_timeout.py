"""Time limits: the caller gets its answer on time, whatever the call does after."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from stalwart.errors import CallTimeout, ModelError
from stalwart.resilience import TimeLimiter, TimeoutConfig, call_with_timeout

SLACK = 0.15  # scheduling noise allowed on a shared two-core machine


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever the event loop would log as an unhandled error ("never retrieved")."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def test_default_is_resilience4j_time_limiter() -> None:
    """One second, and the running call is cancelled on timeout."""
    cfg = TimeoutConfig()
    assert (cfg.timeout_duration, cfg.cancel_running_future) == (1.0, True)


async def test_a_call_within_its_time_returns_its_result() -> None:
    """A call that finishes in time returns its value (or raises its own error)."""

    async def answer(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    async def broken() -> int:
        raise ModelError("nope")

    assert await call_with_timeout(answer, 41, timeout=1.0) == 42
    with pytest.raises(ModelError):
        await call_with_timeout(broken, timeout=1.0)
    assert await call_with_timeout(answer, 1) == 2  # no limit at all


async def test_a_slow_coroutine_is_abandoned_on_time_and_cancelled() -> None:
    """Past the timeout the caller gets CallTimeout at once; the call is cancelled."""
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(CallTimeout) as timed_out:
        await call_with_timeout(slow, timeout=0.05, name="'model-a'")
    assert time.monotonic() - start < 0.05 + SLACK
    assert not timed_out.value.by_deadline
    assert "model-a" in timed_out.value.message
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_a_call_that_swallows_cancellation_cannot_hold_the_caller(
    loop_errors: list[dict[str, Any]],
) -> None:
    """Even a coroutine that ignores cancellation and fails late leaves the caller on time,
    and its late exception is discarded without a 'never retrieved' error."""
    finished = asyncio.Event()

    async def stubborn() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.1)  # keeps going regardless
        finished.set()
        raise ModelError("late failure")

    start = time.monotonic()
    with pytest.raises(CallTimeout):
        await call_with_timeout(stubborn, timeout=0.05)
    assert time.monotonic() - start < 0.05 + SLACK
    await asyncio.wait_for(finished.wait(), 2)
    await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_a_thread_that_cannot_be_interrupted_does_not_block_the_caller(
    executor: ThreadPoolExecutor, loop_errors: list[dict[str, Any]]
) -> None:
    """A model call on a worker thread runs on past the timeout; the caller returns on time,
    on_done fires only when the thread is really done, and its late error is discarded."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    done_at: list[float] = []

    def stuck_model() -> int:
        release.wait(5)
        raise ModelError("too late")

    async def run() -> int:
        return await loop.run_in_executor(executor, stuck_model)

    start = time.monotonic()
    with pytest.raises(CallTimeout):
        await call_with_timeout(
            run, timeout=0.05, cancel=False, on_done=lambda: done_at.append(time.monotonic())
        )
    assert time.monotonic() - start < 0.05 + SLACK
    await asyncio.sleep(0.05)
    assert done_at == []  # the thread still works
    freed = time.monotonic()
    release.set()
    for _ in range(100):
        if done_at:
            break
        await asyncio.sleep(0.01)
    assert done_at
    assert done_at[0] >= freed
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_on_done_fires_once_on_every_path() -> None:
    """on_done is called exactly once: on success, on error, on timeout, when the call
    never starts, and when the caller itself is cancelled."""
    calls: list[str] = []

    async def quick() -> str:
        return "ok"

    async def broken() -> str:
        raise ModelError("x")

    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    await call_with_timeout(quick, timeout=1, on_done=lambda: calls.append("quick"))
    with pytest.raises(ModelError):
        await call_with_timeout(broken, timeout=1, on_done=lambda: calls.append("broken"))
    with pytest.raises(CallTimeout):
        await call_with_timeout(slow, timeout=0.01, on_done=lambda: calls.append("slow"))
    with pytest.raises(CallTimeout):
        await call_with_timeout(
            slow, deadline=time.monotonic() - 1, on_done=lambda: calls.append("late")
        )
    outer = asyncio.create_task(
        call_with_timeout(slow, timeout=5, on_done=lambda: calls.append("cancelled"))
    )
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.sleep(0.01)
    assert sorted(calls) == sorted(["quick", "broken", "slow", "late", "cancelled"])


async def test_the_request_deadline_is_respected() -> None:
    """A deadline closer than the timeout wins and is reported as the deadline; a deadline
    already passed fails without calling at all."""
    called = False

    async def slow() -> None:
        nonlocal called
        called = True
        await asyncio.sleep(10)

    start = time.monotonic()
    with pytest.raises(CallTimeout) as timed_out:
        await call_with_timeout(slow, timeout=5, deadline=start + 0.05)
    assert timed_out.value.by_deadline
    assert time.monotonic() - start < 0.05 + SLACK
    called = False
    with pytest.raises(CallTimeout, match="had passed"):
        await call_with_timeout(slow, timeout=5, deadline=time.monotonic() - 0.001)
    assert not called


async def test_cancelling_the_caller_cancels_the_call() -> None:
    """When the caller is cancelled (the client went away), the call is cancelled too."""
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outer = asyncio.create_task(call_with_timeout(slow, timeout=5))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_time_limiter_applies_its_configuration() -> None:
    """TimeLimiter carries a configured timeout and names the dependency in its error."""
    limiter = TimeLimiter("features-redis", TimeoutConfig(timeout_duration="30ms"))
    assert limiter.timeout == pytest.approx(0.03)

    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(CallTimeout, match="features-redis"):
        await limiter.call(slow)


async def test_plain_awaitables_are_accepted() -> None:
    """A call may return any awaitable (a future), not only a coroutine."""
    loop = asyncio.get_running_loop()

    def future_of(value: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_soon(fut.set_result, value)
        return fut

    assert await call_with_timeout(future_of, 7, timeout=1) == 7


async def test_a_call_that_fails_before_awaiting_still_calls_on_done() -> None:
    """A function that raises before returning an awaitable still gets on_done, so a
    bulkhead slot is never lost to it."""
    done: list[bool] = []

    def not_async() -> Any:
        raise TypeError("not a coroutine function")

    with pytest.raises(TypeError):
        await call_with_timeout(not_async, timeout=1, on_done=lambda: done.append(True))
    assert done == [True]
