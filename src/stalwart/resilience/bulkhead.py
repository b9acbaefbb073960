"""A bulkhead: at most ``max_concurrent_calls`` calls in flight, callers beyond that wait a
bounded time (or not at all) and are then turned away with :class:`BulkheadFull`.

Like resilience4j's SemaphoreBulkhead (same setting names and defaults), for asyncio: one
bulkhead belongs to one event loop. Taking a free slot is synchronous and costs a compare
and an increment; only a caller that has to wait allocates anything. Waiters are served
first come, first served, and a freed slot is handed straight to the next waiter, so a
newcomer can never overtake the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stalwart.durations import Seconds
from stalwart.errors import BulkheadFull, CallTimeout

__all__ = ["Bulkhead", "BulkheadConfig", "BulkheadSnapshot"]


class BulkheadConfig(BaseModel):
    """Settings of one bulkhead (resilience4j's names and defaults).

    ``max_wait_duration`` 0 turns callers away at once when every slot is taken: queueing is
    the load shedder's job, which knows the deployment's latency budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent_calls: int = Field(25, ge=1)
    max_wait_duration: Seconds = Field(0.0, ge=0)


@dataclass(frozen=True, slots=True)
class BulkheadSnapshot:
    """Occupancy of a bulkhead; ``rejected_calls`` only grows (a Prometheus counter)."""

    name: str
    max_concurrent_calls: int
    in_flight: int
    waiting: int
    rejected_calls: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_concurrent_calls": self.max_concurrent_calls,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "rejected_calls": self.rejected_calls,
        }


class Bulkhead:
    """Limit the calls in flight; see the module docstring.

    >>> bulkhead = Bulkhead("churn-v3", BulkheadConfig(max_concurrent_calls=4))
    >>> async def guarded() -> None:
    ...     async with bulkhead:
    ...         ...  # the protected call
    """

    __slots__ = ("_in_flight", "_max", "_max_wait", "_name", "_rejected", "_waiters")

    def __init__(self, name: str, config: BulkheadConfig | None = None) -> None:
        cfg = config if config is not None else BulkheadConfig()
        self._name = name
        self._max = cfg.max_concurrent_calls
        self._max_wait = cfg.max_wait_duration
        self._in_flight = 0
        self._rejected = 0
        # Each waiter's future resolves True when a slot is handed to it, False on timeout.
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def name(self) -> str:
        return self._name

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued for it; never waits."""
        if self._in_flight < self._max and not self._waiters:
            self._in_flight += 1
            return True
        return False

    async def acquire(self, deadline: float | None = None) -> None:
        """Take a slot, waiting up to ``max_wait_duration`` (and never past ``deadline``,
        a ``time.monotonic()`` instant).

        Raises :class:`BulkheadFull` when the wait runs out, or :class:`CallTimeout` when
        the request's deadline is what cut it short.
        """
        if self._in_flight < self._max and not self._waiters:
            self._in_flight += 1
            return
        wait = self._max_wait
        by_deadline = False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or left < wait:
                wait, by_deadline = left, True
        if wait <= 0:
            raise self._full(by_deadline)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(wait, _expire, waiter)
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # a slot was handed over as we were cancelled: pass it on
            else:
                self._forget(waiter)
            raise
        finally:
            timer.cancel()
        if not granted:
            self._forget(waiter)
            raise self._full(by_deadline)

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # hand over: the in-flight count stays the same
                return
        self._in_flight -= 1

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def snapshot(self) -> BulkheadSnapshot:
        return BulkheadSnapshot(
            name=self._name,
            max_concurrent_calls=self._max,
            in_flight=self._in_flight,
            waiting=sum(1 for w in self._waiters if not w.done()),
            rejected_calls=self._rejected,
        )

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already popped by release()
            self._waiters.remove(waiter)

    def _full(self, by_deadline: bool) -> BulkheadFull | CallTimeout:
        self._rejected += 1
        if by_deadline:
            return CallTimeout(
                f"the request's deadline passed while waiting for a free slot of '{self._name}' "
                f"({self._max} calls in flight); send a longer X-Request-Timeout or retry later",
                by_deadline=True,
            )
        waited = f" after waiting {self._max_wait:g} s" if self._max_wait > 0 else ""
        return BulkheadFull(
            f"'{self._name}' already has {self._max} calls in flight{waited}; retry later, or "
            f"raise its bulkhead's max_concurrent_calls if the model has spare capacity"
        )


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
