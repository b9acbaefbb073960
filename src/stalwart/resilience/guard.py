"""A guard: circuit breaker, bulkhead and time limit around one async dependency (a model
variant, an online feature source), configured per deployment.

Order of a guarded call:

1. A request whose deadline has already passed fails at once (:class:`CallTimeout`, not
   recorded by the breaker: nothing was called).
2. The **bulkhead** gives a slot, or turns the call away (:class:`BulkheadFull`). It comes
   before the breaker so a caller queued for a slot never sits on one of the few HALF_OPEN
   trial permits, and an overload is never mistaken for a broken dependency.
3. The **breaker** gives a permit, or refuses (:class:`CallNotPermitted`).
4. The call runs under the **time limit** (the guard's timeout, cut shorter by the
   request's deadline). Its outcome is recorded: a timeout as a slow failure. When only
   the request's own deadline struck, and sooner than the slow-call threshold, the permit
   is released instead: a client's tight budget says nothing about the dependency.
5. The bulkhead slot is freed when the work has really stopped, which for a timed-out call
   on a worker thread can be after the caller got its answer: the bulkhead counts what
   the dependency is actually busy with.

Parts set to None in :class:`GuardConfig` are not built and cost nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

from pydantic import BaseModel, ConfigDict, Field

from stalwart.errors import CallTimeout
from stalwart.pipeline import Exchange, Next, Timings
from stalwart.resilience.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    CircuitBreaker,
    Clock,
    Permit,
    Scheduler,
)
from stalwart.resilience.bulkhead import Bulkhead, BulkheadConfig, BulkheadSnapshot
from stalwart.resilience.timeout import TimeLimiter, TimeoutConfig, call_with_timeout

__all__ = ["Guard", "GuardConfig", "GuardSnapshot", "GuardStage"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class GuardConfig(BaseModel):
    """The guard of one dependency; each part can be switched off with None.

    >>> cfg = GuardConfig.model_validate({"timeout": {"timeout_duration": "250ms"}, "bulkhead": None})
    >>> cfg.timeout.timeout_duration, cfg.bulkhead
    (0.25, None)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    breaker: BreakerConfig | None = Field(default_factory=BreakerConfig)
    bulkhead: BulkheadConfig | None = Field(default_factory=BulkheadConfig)
    timeout: TimeoutConfig | None = Field(default_factory=TimeoutConfig)


@dataclass(frozen=True, slots=True)
class GuardSnapshot:
    """A guard as a health endpoint shows it."""

    name: str
    breaker: BreakerSnapshot | None
    bulkhead: BulkheadSnapshot | None
    timeout: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "breaker": self.breaker.as_dict() if self.breaker is not None else None,
            "bulkhead": self.bulkhead.as_dict() if self.bulkhead is not None else None,
            "timeout": self.timeout,
        }


class Guard:
    """Breaker, bulkhead and time limit around calls to one dependency.

    A guard belongs to one event loop (as its bulkhead does). Its listeners and snapshot
    are those of its parts: ``guard.breaker.add_listener(...)``, ``guard.snapshot()``.

    >>> guard = Guard("churn-v3", GuardConfig())
    >>> async def predict(rows: int) -> int:
    ...     return rows
    >>> async def handler() -> int:
    ...     return await guard.call(predict, 3, deadline=None)
    """

    __slots__ = ("_breaker", "_bulkhead", "_clock", "_limiter", "_name")

    def __init__(
        self,
        name: str,
        config: GuardConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        cfg = config if config is not None else GuardConfig()
        self._name = name
        self._clock = clock
        self._breaker = (
            CircuitBreaker(name, cfg.breaker, clock=clock, scheduler=scheduler)
            if cfg.breaker is not None
            else None
        )
        self._bulkhead = Bulkhead(name, cfg.bulkhead) if cfg.bulkhead is not None else None
        self._limiter = TimeLimiter(name, cfg.timeout) if cfg.timeout is not None else None

    @property
    def name(self) -> str:
        return self._name

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    @property
    def bulkhead(self) -> Bulkhead | None:
        return self._bulkhead

    @property
    def time_limiter(self) -> TimeLimiter | None:
        return self._limiter

    async def call(
        self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, deadline: float | None = None, own_task: bool = True
    ) -> T:
        """Await ``fn(*args)`` under the guard; ``deadline`` is a ``time.monotonic()`` instant.
        ``own_task=False``: ``fn`` stops when cancelled, so time limits cancel it in the
        caller's task instead of running it in one of its own (see ``call_with_timeout``).

        Raises :class:`CallNotPermitted`, :class:`BulkheadFull` or :class:`CallTimeout` when
        the guard refuses or gives up, and whatever ``fn`` raises otherwise.
        """
        if deadline is not None and deadline <= time.monotonic():
            raise CallTimeout(
                f"the request's deadline had passed before '{self._name}' was called; send a "
                f"longer X-Request-Timeout",
                by_deadline=True,
                limit=0.0,
            )
        bulkhead = self._bulkhead
        release: Callable[[], None] | None = None
        if bulkhead is not None:
            if not bulkhead.try_acquire():
                await bulkhead.acquire(deadline)
            release = bulkhead.release
        breaker = self._breaker
        permit: Permit | None = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except BaseException:
                if release is not None:
                    release()
                raise
        limiter = self._limiter
        try:
            if limiter is not None:
                # From here the limiter frees the slot, when the work has really stopped.
                result = await limiter.call(fn, *args, deadline=deadline, on_done=release, own_task=own_task)
            elif deadline is None:
                result = await fn(*args)
            elif not own_task:
                result = await call_with_timeout(fn, *args, deadline=deadline, name=f"'{self._name}'", own_task=False)
            else:
                result = await _within(fn(*args), deadline, self._name)
        except CallTimeout as exc:
            if permit is not None:
                self._settle_timeout(permit, exc)
            raise
        except BaseException as exc:
            if permit is not None:
                permit.on_error(exc)
            raise
        finally:
            if limiter is None and release is not None:
                release()
        if permit is not None:
            permit.on_success()
        return result

    def snapshot(self) -> GuardSnapshot:
        return GuardSnapshot(
            name=self._name,
            breaker=self._breaker.snapshot() if self._breaker is not None else None,
            bulkhead=self._bulkhead.snapshot() if self._bulkhead is not None else None,
            timeout=self._limiter.timeout if self._limiter is not None else None,
        )

    def _settle_timeout(self, permit: Permit, exc: CallTimeout) -> None:
        breaker = self._breaker
        if (
            exc.by_deadline
            and breaker is not None
            and self._clock() - permit.started <= breaker.slow_call_duration_threshold
        ):
            permit.release()
        else:
            permit.on_error(exc)


_FIELDS = tuple(f.name for f in dataclasses.fields(Exchange))


class GuardStage:
    """A pipeline stage that awaits the next stages under a guard, within the exchange's
    deadline.

    When the guard has a time limit, the next stages work on a private copy of the
    exchange, merged back only when they finish in time, so a call abandoned at its
    timeout can never write its late result over what the degradation ladder answered
    instead. (Without a time limit nothing can outlive the call, and no copy is made.)
    """

    __slots__ = ("_guard", "_isolate", "_next")

    def __init__(self, guard: Guard, next_stage: Next) -> None:
        self._guard = guard
        self._next = next_stage
        # The stages after a guard are Stalwart's own and stop when cancelled, so a time
        # limit cancels them in the request's task: nothing late can land, no copy needed.
        # A limiter told not to cancel lets the call run on: then it works on a copy.
        limiter = guard.time_limiter
        self._isolate = limiter is not None and not limiter.cancels

    async def __call__(self, exchange: Exchange) -> None:
        if not self._isolate:
            await self._guard.call(self._next, exchange, deadline=exchange.deadline, own_task=False)
            return
        child = _fork(exchange)
        await self._guard.call(self._next, child, deadline=exchange.deadline)
        _join(exchange, child)


async def _within(call: Awaitable[T], deadline: float, name: str) -> T:
    """Await ``call`` until the request's deadline, for a guard without a time limit of its
    own. Cancelling is enough here: the awaitable is the caller's own coroutine (a batcher
    queue entry, an executor future), which stops waiting at once when cancelled."""
    remaining = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(call, remaining)
    except TimeoutError:
        raise CallTimeout(
            f"'{name}' ran past the request's deadline ({max(remaining, 0.0) * 1000:.0f} ms left when it "
            f"started); send a longer X-Request-Timeout",
            by_deadline=True,
            limit=max(remaining, 0.0),
        ) from None


def _fork(exchange: Exchange) -> Exchange:
    child = object.__new__(Exchange)
    for name in _FIELDS:
        value = getattr(exchange, name)
        if type(value) is dict:
            value = dict(value)
        elif type(value) is Timings:
            value = value.copy()
        setattr(child, name, value)
    return child


def _join(exchange: Exchange, child: Exchange) -> None:
    for name in _FIELDS:
        value = getattr(child, name)
        mine = getattr(exchange, name)
        if type(value) is dict and type(mine) is dict:
            # Keep the parent's dict objects: earlier stages may hold references to them.
            mine.clear()
            mine.update(value)
        elif type(value) is Timings and type(mine) is Timings:
            mine.update(value)
        else:
            setattr(exchange, name, value)
