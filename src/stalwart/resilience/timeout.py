"""Run a call with a timeout and/or an absolute deadline, and return on time regardless.

The call runs as its own task while the caller waits on a timer. When time is up the
caller gets :class:`~stalwart.errors.CallTimeout` at once, whatever the call is doing: a
model on a worker thread cannot be interrupted, and a coroutine may swallow its
cancellation, but neither can hold the caller. The abandoned call is cancelled (unless
``cancel_running_future`` is off) and left to finish on its own; its late result or
exception is retrieved and discarded, so asyncio never logs "Task exception was never
retrieved". ``on_done`` fires once the underlying work has really stopped, which is how a
bulkhead keeps counting a slot that a timed-out call still occupies.

Deadlines are ``time.monotonic()`` instants, as in :attr:`stalwart.pipeline.Exchange.deadline`.
The task runs in a copy of the caller's context (as every asyncio task does), so context
variables it sets do not leak back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, TypeVarTuple, cast

from pydantic import BaseModel, ConfigDict, Field

from stalwart.durations import Seconds
from stalwart.errors import CallTimeout
from stalwart.resilience.deadlines import Expired, run_until

__all__ = ["TimeLimiter", "TimeoutConfig", "call_with_timeout"]

_log = logging.getLogger("stalwart.resilience")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class TimeoutConfig(BaseModel):
    """Settings of a time limit (resilience4j TimeLimiter's names and defaults).

    One second is resilience4j's default and a sensible ceiling for online inference,
    whose SLOs are a few hundred milliseconds; a model that is slower by design sets its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_duration: Seconds = Field(1.0, gt=0)
    cancel_running_future: bool = True


async def call_with_timeout(
    fn: Callable[[*Ts], Awaitable[T]],
    *args: *Ts,
    timeout: float | None = None,
    deadline: float | None = None,
    cancel: bool = True,
    name: str = "the call",
    on_done: Callable[[], None] | None = None,
    own_task: bool = True,
) -> T:
    """Await ``fn(*args)`` for at most ``timeout`` seconds and never past ``deadline``.

    Raises :class:`CallTimeout` on time (``by_deadline`` tells which limit struck); the
    late outcome is discarded. ``on_done`` is called exactly once, when the work has ended
    (at once if it never started or finished in time). With neither limit the call is
    simply awaited.

    ``own_task=False`` runs the call in the caller's task, cancelled at the limit, for a
    call known to stop when cancelled (Stalwart's own model stages: a batcher's queue, an
    executor future): it starts at once, not a loop turn later, and costs no task. A call
    that might ignore cancellation (a user's coroutine) keeps the default, a task of its
    own that the caller stops waiting for at the limit, whatever the call does.
    """
    limit = timeout
    by_deadline = False
    if deadline is not None:
        left = deadline - time.monotonic()
        if limit is None or left < limit:
            limit, by_deadline = left, True
    if limit is None:
        try:
            return await fn(*args)
        finally:
            if on_done is not None:
                on_done()
    if limit <= 0:
        if on_done is not None:
            on_done()
        raise CallTimeout(
            f"the request's deadline had passed before {name} could start; send a longer "
            f"X-Request-Timeout or fewer stages",
            by_deadline=True,
            limit=0.0,
        )
    if cancel and not own_task:
        return await _in_caller_task(fn, args, limit, by_deadline, name, on_done)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()
    try:
        task = loop.create_task(_run(fn(*args), waiter, on_done, name))
    except BaseException:  # fn raised at once, or the loop is closing: nothing started
        if on_done is not None:
            on_done()
        raise
    timer = loop.call_later(limit, _time_up, waiter)
    try:
        outcome = await waiter
    except asyncio.CancelledError:
        task.cancel()  # the caller gave up: the work goes too
        raise
    finally:
        timer.cancel()
    if outcome is not _TIMED_OUT:
        return cast(T, outcome)
    if cancel:
        task.cancel()
    raise _timed_out(limit, by_deadline, name)


_TIMED_OUT: Final = object()


async def _in_caller_task(
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    limit: float,
    by_deadline: bool,
    name: str,
    on_done: Callable[[], None] | None,
) -> T:
    """The call in the caller's own task, cancelled at the limit (a coarse deadline,
    :mod:`~stalwart.resilience.deadlines`: at most 5 ms late, and no timer of its own).

    No task is created, so the call starts at once rather than a loop turn later: on the
    request path that turn is what lets an adaptive batcher close a batch early, and a
    task per call cost more than the rest of the guard. Cancelling the caller's await is
    what a late result needs: nothing of the call can run on after it, so nothing late can
    land.
    """
    try:
        return await run_until(fn(*args), time.monotonic() + limit)
    except Expired:
        raise _timed_out(limit, by_deadline, name) from None
    finally:
        if on_done is not None:
            on_done()


def _timed_out(limit: float, by_deadline: bool, name: str) -> CallTimeout:
    if by_deadline:
        return CallTimeout(
            f"the request's deadline ran out after {limit * 1000:.0f} ms while waiting for "
            f"{name}; send a longer X-Request-Timeout",
            by_deadline=True,
            limit=limit,
        )
    return CallTimeout(
        f"{name} did not answer within its timeout of {limit * 1000:.0f} ms and its late "
        f"result will be discarded; check its health, or raise the timeout if it is slow "
        f"by design",
        limit=limit,
    )


def _time_up(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


async def _run(
    awaitable: Awaitable[Any],
    waiter: asyncio.Future[Any],
    on_done: Callable[[], None] | None,
    name: str,
) -> None:
    """Await the call inside its own task and hand its outcome to the waiting caller.

    The task itself always ends cleanly: an outcome nobody waits for any more is dropped
    here, so asyncio has no exception to call "never retrieved". ``on_done`` runs the moment
    the work ends.
    """
    try:
        result = await awaitable
    except asyncio.CancelledError:
        if not waiter.done():
            waiter.cancel()
    except Exception as exc:  # noqa: BLE001 - handed to the caller, or dropped if it left
        if not waiter.done():
            waiter.set_exception(exc)
        else:
            _log.debug("late exception from %s discarded: %r", name, exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: the caller sees it too
        if not waiter.done():
            waiter.set_exception(exc)
        raise
    else:
        if not waiter.done():
            waiter.set_result(result)
    finally:
        if on_done is not None:
            on_done()


class TimeLimiter:
    """A configured time limit (see :class:`TimeoutConfig`) for :func:`call_with_timeout`."""

    __slots__ = ("_cancel", "_name", "_timeout")

    def __init__(self, name: str, config: TimeoutConfig | None = None) -> None:
        cfg = config if config is not None else TimeoutConfig()
        self._name = name
        self._timeout = cfg.timeout_duration
        self._cancel = cfg.cancel_running_future

    @property
    def timeout(self) -> float:
        return self._timeout

    async def call(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        deadline: float | None = None,
        on_done: Callable[[], None] | None = None,
        own_task: bool = True,
    ) -> T:
        """Await ``fn(*args)`` within the timeout and ``deadline``; see :func:`call_with_timeout`."""
        return await call_with_timeout(
            fn,
            *args,
            timeout=self._timeout,
            deadline=deadline,
            cancel=self._cancel,
            name=f"'{self._name}'",
            on_done=on_done,
            own_task=own_task,
        )

    @property
    def cancels(self) -> bool:
        """Whether a call past its limit is cancelled (resilience4j's cancelRunningFuture)."""
        return self._cancel
