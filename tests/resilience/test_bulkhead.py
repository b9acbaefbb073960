"""The bulkhead: a bound on calls in flight, with an optional bounded, first-come wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from stalwart.errors import BulkheadFull, CallTimeout
from stalwart.resilience import Bulkhead, BulkheadConfig


def test_defaults_are_resilience4j() -> None:
    """25 concurrent calls and no waiting, as resilience4j's SemaphoreBulkhead."""
    cfg = BulkheadConfig()
    assert (cfg.max_concurrent_calls, cfg.max_wait_duration) == (25, 0.0)


def test_slots_are_taken_and_given_back() -> None:
    """try_acquire takes a free slot without waiting and refuses once all are taken."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=2))
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    bulkhead.release()
    assert bulkhead.in_flight == 1
    assert bulkhead.try_acquire()


async def test_full_without_wait_refuses_at_once() -> None:
    """With no wait configured, a call over the limit fails immediately and is counted."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1))
    await bulkhead.acquire()
    start = time.monotonic()
    with pytest.raises(BulkheadFull, match="1 calls in flight"):
        await bulkhead.acquire()
    assert time.monotonic() - start < 0.05
    assert bulkhead.snapshot().rejected_calls == 1


async def test_waiters_are_served_first_come_first_served() -> None:
    """Queued callers get freed slots in arrival order; a newcomer cannot overtake them."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1, max_wait_duration=5))
    await bulkhead.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await bulkhead.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert bulkhead.snapshot().waiting == 3
    bulkhead.release()
    assert not bulkhead.try_acquire()  # the slot went to the first waiter, not to us
    for _ in range(2):
        await asyncio.sleep(0.01)
        bulkhead.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert bulkhead.in_flight == 1


async def test_a_wait_that_runs_out_refuses_and_leaves_the_queue() -> None:
    """A caller that waited max_wait_duration in vain gets BulkheadFull and leaves no trace
    in the queue."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1, max_wait_duration=0.05))
    await bulkhead.acquire()
    start = time.monotonic()
    with pytest.raises(BulkheadFull, match="after waiting"):
        await bulkhead.acquire()
    assert 0.04 <= time.monotonic() - start < 0.5
    bulkhead.release()
    assert bulkhead.snapshot().waiting == 0
    assert bulkhead.try_acquire()


async def test_the_request_deadline_cuts_the_wait_short() -> None:
    """A wait is never longer than the request's deadline; running out of it is a timeout."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1, max_wait_duration=5))
    await bulkhead.acquire()
    start = time.monotonic()
    with pytest.raises(CallTimeout) as timed_out:
        await bulkhead.acquire(deadline=start + 0.05)
    assert timed_out.value.by_deadline
    assert time.monotonic() - start < 0.5
    with pytest.raises(CallTimeout):
        await bulkhead.acquire(deadline=time.monotonic() - 1)


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    """Cancelling a queued caller, even as a slot is handed to it, loses no slot."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1, max_wait_duration=5))
    await bulkhead.acquire()
    plain = asyncio.create_task(bulkhead.acquire())
    handed = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0.01)
    plain.cancel()
    await asyncio.sleep(0)
    bulkhead.release()  # hands the slot to `handed`...
    handed.cancel()  # ...which is cancelled before it runs: it must pass the slot on
    for task in (plain, handed):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert bulkhead.in_flight == 0
    assert bulkhead.snapshot().waiting == 0
    assert bulkhead.try_acquire()


async def test_async_context_manager() -> None:
    """`async with bulkhead:` holds a slot for the block, also when it raises."""
    bulkhead = Bulkhead("model-a", BulkheadConfig(max_concurrent_calls=1))
    async with bulkhead:
        assert bulkhead.in_flight == 1
    with pytest.raises(RuntimeError):
        async with bulkhead:
            raise RuntimeError("x")
    assert bulkhead.in_flight == 0
    assert bulkhead.snapshot().as_dict()["max_concurrent_calls"] == 1
