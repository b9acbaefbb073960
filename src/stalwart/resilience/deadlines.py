"""Coarse deadlines for the request path: the running task is cancelled when its deadline
passes, at the price of one loop timer per few milliseconds rather than one per request.

``asyncio.timeout`` costs a timer handle and a heap entry each time (about 5 µs on uvloop),
and a request went through two of them (its body's deadline, its model's time limit).
Here a deadline is rounded up to the next tick of :data:`RESOLUTION` and filed under that
tick; one loop timer per tick fires every deadline due in it, and arming or disarming one
is a dict operation. A deadline fires at most :data:`RESOLUTION` late, never early.
Semantics are ``asyncio.timeout``'s: the task is cancelled, and :func:`run_until` turns
that cancellation into ``TimeoutError`` unless the task was also cancelled by someone else.

>>> import asyncio
>>> async def slow() -> None:
...     await asyncio.sleep(1)
>>> async def main() -> str:
...     try:
...         await run_until(slow(), time.monotonic() + 0.01)
...     except TimeoutError:
...         return "timed out"
...     return "done"
>>> asyncio.run(main())
'timed out'
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["RESOLUTION", "Expired", "run_until"]

RESOLUTION = 0.005  # seconds: how late a deadline may fire

T = TypeVar("T")


class Expired(TimeoutError):
    """The deadline of :func:`run_until` passed (a ``TimeoutError`` the awaited call itself
    raised is not one)."""


async def run_until(awaitable: Awaitable[T], deadline: float) -> T:
    """Await ``awaitable`` in the current task; :class:`Expired` (a ``TimeoutError``)
    once ``deadline`` (a ``time.monotonic()`` instant) has passed. The awaitable must stop when cancelled."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("run_until must be awaited inside a task")
    armed = _ticks(asyncio.get_running_loop()).arm(task, deadline)
    cancelling = task.cancelling()
    try:
        result = await awaitable
    except asyncio.CancelledError:
        if _settle(armed, task, cancelling):
            raise Expired from None
        raise
    except BaseException:  # cleanup only: whatever the call raised goes on up unchanged
        _settle(armed, task, cancelling)
        raise
    _settle(armed, task, cancelling)  # fired as the result arrived: the cancel is taken back
    return result


def _settle(armed: _Armed, task: asyncio.Task[object], cancelling: int) -> bool:
    """Disarm ``armed``, or, when it fired, take back its cancellation of ``task``; True
    when the deadline alone cancelled the task (no other cancellation is pending)."""
    if not armed.fired:
        armed.disarm()
        return False
    return task.uncancel() <= cancelling


class _Armed:
    __slots__ = ("deadline", "fired", "slot", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float, slot: dict[int, _Armed]) -> None:
        self.task = task
        self.deadline = deadline
        self.slot = slot  # the tick's deadlines, which this one leaves when disarmed
        self.fired = False

    def disarm(self) -> None:
        self.slot.pop(id(self), None)


class _Ticks:
    """The deadlines of one event loop, by tick."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, dict[int, _Armed]] = {}

    def arm(self, task: asyncio.Task[object], deadline: float) -> _Armed:
        tick = math.ceil(deadline / RESOLUTION)
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = {}
            self._schedule(tick)
        armed = _Armed(task, deadline, slot)
        slot[id(armed)] = armed
        return armed

    def _schedule(self, tick: int) -> None:
        self._loop.call_later(max(0.0, tick * RESOLUTION - time.monotonic()), self._fire, tick)

    def _fire(self, tick: int) -> None:
        # A loop's clock may run a little behind time.monotonic(): never fire early.
        if time.monotonic() < tick * RESOLUTION:
            self._schedule(tick)
            return
        slot = self._slots.pop(tick, None)
        if not slot:
            return
        now = time.monotonic()
        for armed in list(slot.values()):
            if armed.deadline <= now and not armed.task.done():
                armed.fired = True
                armed.task.cancel()


class _PerThread(threading.local):
    loop: asyncio.AbstractEventLoop | None = None
    ticks: _Ticks | None = None


_local = _PerThread()


def _ticks(loop: asyncio.AbstractEventLoop) -> _Ticks:
    # A thread runs one loop at a time (a server's, a test's): its ticks are kept with it,
    # and a new loop in the thread gets new ones. Armed deadlines keep their own tick's
    # dict, so ticks replaced while some are armed still disarm and fire correctly.
    local = _local
    ticks = local.ticks
    if ticks is None or local.loop is not loop:
        ticks = local.ticks = _Ticks(loop)
        local.loop = loop
    return ticks
