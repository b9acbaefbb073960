"""Coarse deadlines: never early, at most a tick late, quiet when disarmed, and exactly
asyncio.timeout's manners with other cancellations and with the call's own TimeoutError."""

from __future__ import annotations

import asyncio
import time

import pytest

from stalwart.resilience.deadlines import RESOLUTION, Expired, run_until


async def test_a_deadline_fires_not_early_and_at_most_a_tick_late() -> None:
    for limit in (0.01, 0.023, 0.05):
        start = time.monotonic()
        with pytest.raises(Expired):
            await run_until(asyncio.sleep(1), start + limit)
        waited = time.monotonic() - start
        assert waited >= limit
        assert waited < limit + RESOLUTION + 0.05  # the tick, and a busy machine's loop turn


async def test_an_answer_in_time_is_returned_and_leaves_nothing_armed() -> None:
    async def answer() -> int:
        await asyncio.sleep(0.001)
        return 42

    task = asyncio.current_task()
    assert task is not None
    for _ in range(100):
        assert await run_until(answer(), time.monotonic() + 0.01) == 42
    await asyncio.sleep(0.03)  # every deadline's tick has passed: none may cancel us now
    assert task.cancelling() == 0
    assert await run_until(answer(), time.monotonic() + 0.01) == 42


async def test_the_calls_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    async def gives_up() -> None:
        raise TimeoutError("upstream")

    with pytest.raises(TimeoutError, match="upstream") as caught:
        await run_until(gives_up(), time.monotonic() + 1)
    assert not isinstance(caught.value, Expired)


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await run_until(asyncio.sleep(10), time.monotonic() + 5)

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadlines_of_many_tasks_fire_independently() -> None:
    async def one(limit: float) -> str:
        try:
            await run_until(asyncio.sleep(0.2), time.monotonic() + limit)
        except Expired:
            return "expired"
        return "done"

    results = await asyncio.gather(*(one(0.02 if i % 2 else 1.0) for i in range(50)))
    assert results == ["expired" if i % 2 else "done" for i in range(50)]


async def test_nested_deadlines_the_inner_one_strikes_first() -> None:
    outer_start = time.monotonic()

    async def inner() -> None:
        await run_until(asyncio.sleep(1), time.monotonic() + 0.02)

    with pytest.raises(Expired):
        await run_until(inner(), outer_start + 0.5)
    assert time.monotonic() - outer_start < 0.3
