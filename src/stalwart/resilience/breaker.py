"""A circuit breaker with the semantics of resilience4j's ``CircuitBreaker``.

The state machine, its windows and its thresholds follow resilience4j (the reference most
teams already trust), so its documentation applies unchanged:

* **CLOSED** records the outcome of every call in a sliding window, count-based (the last
  ``sliding_window_size`` calls) or time-based (the calls of the last
  ``sliding_window_size`` seconds, aggregated in one bucket per second). Rates are only
  evaluated once ``minimum_number_of_calls`` are in the window; when the failure rate or
  the slow-call rate is **at or above** its threshold the breaker opens.
* **OPEN** refuses calls (:class:`~stalwart.errors.CallNotPermitted`) for
  ``wait_duration_in_open_state``, optionally growing by an exponential backoff (and
  jitter) each time the breaker re-opens without having closed in between. The first call
  attempted after the wait moves it to HALF_OPEN; with
  ``automatic_transition_from_open_to_half_open_enabled`` it moves by itself when the wait
  ends.
* **HALF_OPEN** hands out exactly ``permitted_number_of_calls_in_half_open_state`` permits
  and evaluates those trial calls as a window of their own: once all of them have
  completed it closes (rates below thresholds) or re-opens. With
  ``max_wait_duration_in_half_open_state`` it gives up waiting for the trials after that
  long and goes to ``transition_to_state_after_wait_duration`` (OPEN by default).
* **DISABLED** (always permit, record nothing), **METRICS_ONLY** (always permit, record
  and report thresholds being exceeded, never trip) and **FORCED_OPEN** (always refuse)
  are entered only by an explicit :meth:`CircuitBreaker.transition_to`; the machine makes
  no automatic transition out of them. The transitions resilience4j forbids (CLOSED to
  HALF_OPEN, METRICS_ONLY to OPEN or HALF_OPEN) raise
  :class:`~stalwart.errors.IllegalStateTransition`. :meth:`CircuitBreaker.reset` goes back
  to CLOSED with fresh metrics.
* An exception that is ignored releases the permit without being recorded; with
  ``record_exceptions`` set, an exception that is neither recorded nor ignored counts as a
  success. Exceptions that are not ``Exception`` subclasses (``asyncio.CancelledError``,
  ``KeyboardInterrupt``) are always ignored: a caller who gave up says nothing about the
  dependency's health.

Where this implementation is deliberately stricter than resilience4j:

* Each permit remembers the state it was granted in. An outcome that arrives after the
  breaker has moved on is recorded only into the window it was meant for (a call started
  while CLOSED that ends while OPEN still counts in the OPEN breaker's metrics, as in
  resilience4j); one that would land in a *later* window is dropped. So the HALF_OPEN
  verdict rests exactly on the trial calls, never on a slow call that started before the
  breaker opened.
* A permit settles once: a second ``on_success``/``on_error``/``release`` is a no-op, so a
  double release can never hand out an extra HALF_OPEN permit.
* A :class:`~stalwart.errors.CallTimeout` is always recorded as slow (a call abandoned at
  its timeout is slow by definition).

Timed transitions (automatic OPEN to HALF_OPEN, max wait in HALF_OPEN) are evaluated
against the injected clock whenever the breaker is observed or used, at the instant they
were due, so a fake clock drives them deterministically. Pass a ``scheduler`` (see
:func:`loop_scheduler`) to also have them happen, and listeners hear of them, on time when
nobody is calling.

Concurrency: the per-call path holds one short lock only to update counters (never while
the protected call runs); CLOSED permits are granted without taking it. Safe from many
threads and from many asyncio tasks alike.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar, TypeVarTuple

from stalwart.errors import CallNotPermitted, CallTimeout, IllegalStateTransition
from stalwart.resilience.breaker_config import BreakerConfig, BreakerState, SlidingWindowType
from stalwart.resilience.windows import FAILED as _FAILED
from stalwart.resilience.windows import SLOW as _SLOW
from stalwart.resilience.windows import CountWindow, TimeWindow, Window

__all__ = [
    "BreakerConfig",
    "BreakerEvent",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "Permit",
    "Scheduler",
    "SlidingWindowType",
    "loop_scheduler",
]

_log = logging.getLogger("stalwart.resilience")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Clock = Callable[[], float]
"""Seconds on a monotonic scale; ``time.monotonic`` unless a test injects a fake."""

Scheduler = Callable[[float, Callable[[], None]], object]
"""``schedule(delay_s, callback)``: run ``callback`` (from any thread) about ``delay_s`` later."""


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_DISABLED = BreakerState.DISABLED
_METRICS_ONLY = BreakerState.METRICS_ONLY
_FORCED_OPEN = BreakerState.FORCED_OPEN

# resilience4j's StateTransition table allows every pair but these three.
_FORBIDDEN = frozenset({(_CLOSED, _HALF_OPEN), (_METRICS_ONLY, _OPEN), (_METRICS_ONLY, _HALF_OPEN)})
_MAX_REPLAY = 64

# What an exception means for the breaker.
_IGNORE = 0
_RECORD_FAILURE = 1
_RECORD_SUCCESS = 2


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """What a listener hears: a state transition, a reset, or (METRICS_ONLY) a threshold
    crossed. ``at`` is the breaker-clock instant it happened, which for a timed transition
    is when it was due even if it was noticed later."""

    breaker: str
    kind: Literal["transition", "reset", "thresholds_exceeded"]
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float
    failure_rate: float | None = None
    slow_call_rate: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The breaker as a health endpoint shows it.

    Rates are percentages of the calls in the current window, None until the window holds
    the minimum number of calls. The ``*_calls`` totals since creation only grow, so they
    export as Prometheus counters.
    """

    name: str
    state: BreakerState
    failure_rate: float | None
    slow_call_rate: float | None
    buffered_calls: int
    failed_buffered_calls: int
    slow_buffered_calls: int
    not_permitted_calls: int
    successful_calls: int
    failed_calls: int
    slow_calls: int
    ignored_calls: int
    retry_after: float | None
    """Seconds until an OPEN breaker lets trial calls through (None in other states)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the state as its string value)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "buffered_calls": self.buffered_calls,
            "failed_buffered_calls": self.failed_buffered_calls,
            "slow_buffered_calls": self.slow_buffered_calls,
            "not_permitted_calls": self.not_permitted_calls,
            "successful_calls": self.successful_calls,
            "failed_calls": self.failed_calls,
            "slow_calls": self.slow_calls,
            "ignored_calls": self.ignored_calls,
            "retry_after": self.retry_after,
        }




class _Gen:
    """One stay in one state: its window, its permits and its timers.

    A new object is made on every transition, so "the state a permit was granted in" is
    just the object it holds.
    """

    __slots__ = (
        "admits_all",
        "attempts",
        "min_calls",
        "permits",
        "reported",
        "retry_at",
        "state",
        "timed_at",
        "window",
    )

    def __init__(self, state: BreakerState, window: Window | None, min_calls: int, attempts: int) -> None:
        self.state = state
        self.window = window
        self.min_calls = min_calls
        self.attempts = attempts
        self.admits_all = state in (_CLOSED, _DISABLED, _METRICS_ONLY)
        self.permits = 0
        self.retry_at = math.inf
        self.timed_at: float | None = None
        self.reported = False


class Permit:
    """Leave to make one call; settle it exactly once with the call's outcome.

    Use it as a context manager (the outcome and duration are taken from the block) or
    call :meth:`on_success`, :meth:`on_error` or :meth:`release` yourself. Durations default
    to the time since the permit was granted, on the breaker's clock.
    """

    __slots__ = ("_breaker", "_gen", "_settled", "started")

    def __init__(self, breaker: CircuitBreaker, gen: _Gen, started: float) -> None:
        self._breaker = breaker
        self._gen = gen
        self._settled = False
        self.started = started

    @property
    def settled(self) -> bool:
        return self._settled

    def on_success(self, duration_s: float | None = None) -> None:
        """The call succeeded (it is slow if it took longer than the slow-call threshold)."""
        if self._settled:
            return
        self._settled = True
        breaker = self._breaker
        now = breaker._clock()
        if duration_s is None:
            duration_s = now - self.started
        breaker._record(self._gen, _SLOW if duration_s > breaker._slow_threshold else 0, now)

    def on_error(self, exc: BaseException, duration_s: float | None = None) -> None:
        """The call raised ``exc``: recorded as a failure, a success, or ignored (released)
        according to the breaker's exception settings."""
        if self._settled:
            return
        breaker = self._breaker
        verdict = breaker._classify(exc)
        if verdict == _IGNORE:
            self.release()
            return
        self._settled = True
        now = breaker._clock()
        if duration_s is None:
            duration_s = now - self.started
        slow = duration_s > breaker._slow_threshold or isinstance(exc, CallTimeout)
        outcome = (_FAILED if verdict == _RECORD_FAILURE else 0) | (_SLOW if slow else 0)
        breaker._record(self._gen, outcome, now)

    def release(self) -> None:
        """Give the permit back unrecorded (the call was not made, or its error is ignored)."""
        if self._settled:
            return
        self._settled = True
        self._breaker._release(self._gen)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.on_success()
        else:
            self.on_error(exc)


class CircuitBreaker:
    """A circuit breaker with resilience4j's semantics (see the module docstring).

    >>> breaker = CircuitBreaker("churn-v3")
    >>> with breaker.acquire():            # raises CallNotPermitted when open
    ...     pass                           # the protected call
    >>> breaker.state
    <BreakerState.CLOSED: 'closed'>
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        cfg = config if config is not None else BreakerConfig()
        self._name = name
        self._config = cfg
        self._clock = clock
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._listeners: tuple[Callable[[BreakerEvent], None], ...] = ()
        self._events: deque[BreakerEvent] = deque()
        self._timers: deque[float] = deque()
        # Settings read on every call, copied out of the pydantic model once.
        self._slow_threshold = cfg.slow_call_duration_threshold
        self._failure_rate_threshold = cfg.failure_rate_threshold
        self._slow_rate_threshold = cfg.slow_call_rate_threshold
        self._ignore_types = tuple(cfg.ignore_exceptions)
        self._ignore_predicate = cfg.ignore_exception
        self._record_types = tuple(cfg.record_exceptions)
        self._record_predicate = cfg.record_exception
        self._record_everything = not self._record_types and self._record_predicate is None
        # Totals since creation.
        self._successful = 0
        self._failed = 0
        self._slow = 0
        self._ignored = 0
        self._not_permitted = 0
        now = clock()
        self._gen = self._make_gen(cfg.initial_state, now, None)

    # -- public surface ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def slow_call_duration_threshold(self) -> float:
        return self._slow_threshold

    @property
    def state(self) -> BreakerState:
        """The current state (applying a timed transition that has come due)."""
        gen = self._gen
        if gen.timed_at is not None:
            now = self._clock()
            if now >= gen.timed_at:
                with self._lock:
                    gen = self._advance(now)
                self._flush()
        return gen.state

    def try_acquire(self) -> Permit | None:
        """A permit for one call, or None when the breaker refuses it (counted)."""
        now = self._clock()
        gen = self._gen
        if gen.admits_all:
            return Permit(self, gen, now)
        return self._acquire_slow(now)

    def acquire(self) -> Permit:
        """A permit for one call; raises :class:`CallNotPermitted` when refused."""
        now = self._clock()
        gen = self._gen
        if gen.admits_all:
            return Permit(self, gen, now)
        permit = self._acquire_slow(now)
        if permit is None:
            raise self._refusal(now)
        return permit

    def _classify(self, exc: BaseException) -> int:
        """Ignore, record as failure or record as success (resilience4j's rules)."""
        if not isinstance(exc, Exception):
            return _IGNORE
        if isinstance(exc, self._ignore_types) or (
            self._ignore_predicate is not None and self._ignore_predicate(exc)
        ):
            return _IGNORE
        if self._record_everything:
            return _RECORD_FAILURE
        if isinstance(exc, self._record_types) or (
            self._record_predicate is not None and self._record_predicate(exc)
        ):
            return _RECORD_FAILURE
        return _RECORD_SUCCESS

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Await ``fn(*args)`` under a permit and record its outcome."""
        permit = self.acquire()
        try:
            result = await fn(*args)
        except BaseException as exc:
            permit.on_error(exc)
            raise
        permit.on_success()
        return result

    def call_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` under a permit and record its outcome (for threads)."""
        permit = self.acquire()
        try:
            result = fn(*args)
        except BaseException as exc:
            permit.on_error(exc)
            raise
        permit.on_success()
        return result

    def transition_to(self, state: BreakerState | str) -> None:
        """Force a transition, as an operator would; raises
        :class:`IllegalStateTransition` for the ones resilience4j forbids.

        Entering the state the breaker is already in starts it afresh (a new window, a new
        OPEN wait), without telling listeners.
        """
        target = BreakerState(state.lower() if isinstance(state, str) else state)
        now = self._clock()
        try:
            with self._lock:
                current = self._advance(now).state
                if (current, target) in _FORBIDDEN:
                    raise IllegalStateTransition(
                        f"circuit breaker '{self._name}' cannot go from {current.value} to "
                        f"{target.value}; go through 'open' (or 'closed') first, or use reset()"
                    )
                self._switch(target, now, "manual")
        finally:
            self._flush()

    def reset(self) -> None:
        """Back to CLOSED with fresh metrics and no backoff history (listeners hear it)."""
        now = self._clock()
        with self._lock:
            previous = self._gen.state
            self._gen = self._make_gen(_CLOSED, now, None)
            self._events.append(BreakerEvent(self._name, "reset", previous, _CLOSED, "reset", now))
        self._flush()

    def add_listener(self, listener: Callable[[BreakerEvent], None]) -> None:
        """Call ``listener(event)`` on every transition, reset and METRICS_ONLY alert.

        Listeners run on the thread that caused the event, outside the breaker's lock and
        in order; one that raises is logged and does not disturb the call.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[BreakerEvent], None]) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    def snapshot(self) -> BreakerSnapshot:
        """State, rates and counts, for a health endpoint and metrics."""
        now = self._clock()
        with self._lock:
            gen = self._advance(now)
            window = gen.window
            calls = failed = slow = 0
            failure_rate = slow_rate = None
            if window is not None:
                window.refresh(now)
                calls, failed, slow = window.calls, window.failed, window.slow
                if calls and calls >= gen.min_calls:
                    failure_rate = failed * 100.0 / calls
                    slow_rate = slow * 100.0 / calls
            snap = BreakerSnapshot(
                name=self._name,
                state=gen.state,
                failure_rate=failure_rate,
                slow_call_rate=slow_rate,
                buffered_calls=calls,
                failed_buffered_calls=failed,
                slow_buffered_calls=slow,
                not_permitted_calls=self._not_permitted,
                successful_calls=self._successful,
                failed_calls=self._failed,
                slow_calls=self._slow,
                ignored_calls=self._ignored,
                retry_after=max(0.0, gen.retry_at - now) if gen.state is _OPEN else None,
            )
        self._flush()
        return snap

    def __repr__(self) -> str:
        return f"CircuitBreaker({self._name!r}, state={self._gen.state.value})"

    # -- the machinery ------------------------------------------------------------------

    def _make_gen(self, state: BreakerState, at: float, previous: _Gen | None) -> _Gen:
        cfg = self._config
        attempts = previous.attempts if previous is not None else 0
        if state is _CLOSED or state is _METRICS_ONLY:
            window: Window
            if cfg.sliding_window_type is SlidingWindowType.COUNT_BASED:
                window = CountWindow(cfg.sliding_window_size)
                min_calls = min(cfg.minimum_number_of_calls, cfg.sliding_window_size)
            else:
                window = TimeWindow(cfg.sliding_window_size, at)
                min_calls = cfg.minimum_number_of_calls
            return _Gen(state, window, min_calls, 0)
        if state is _OPEN:
            carried = previous.window if previous is not None else None
            gen = _Gen(state, carried, previous.min_calls if previous is not None else 1, attempts + 1)
            gen.retry_at = at + cfg.wait_in_open_state(gen.attempts)
            if cfg.automatic_transition_from_open_to_half_open_enabled:
                gen.timed_at = gen.retry_at
            return gen
        if state is _HALF_OPEN:
            n = cfg.permitted_number_of_calls_in_half_open_state
            gen = _Gen(state, CountWindow(n), n, attempts)
            gen.permits = n
            if cfg.max_wait_duration_in_half_open_state > 0:
                gen.timed_at = at + cfg.max_wait_duration_in_half_open_state
            return gen
        if state is _FORCED_OPEN:
            return _Gen(state, None, 1, attempts + 1)
        return _Gen(state, None, 1, 0)  # DISABLED

    def _switch(self, target: BreakerState, at: float, reason: str, rates: tuple[float, float] | None = None) -> _Gen:
        """Enter ``target`` at instant ``at``. Caller holds the lock."""
        previous = self._gen
        gen = self._make_gen(target, at, previous)
        self._gen = gen
        if previous.state is not target:
            self._events.append(
                BreakerEvent(
                    self._name, "transition", previous.state, target, reason, at,
                    rates[0] if rates else None, rates[1] if rates else None,
                )
            )
        if gen.timed_at is not None and self._scheduler is not None:
            self._timers.append(gen.timed_at)
        return gen

    def _advance(self, now: float) -> _Gen:
        """Apply every timed transition due by ``now``, each at the instant it was due.

        An idle breaker cycling OPEN/HALF_OPEN by itself could owe thousands of cycles when
        first looked at again; past ``_MAX_REPLAY`` the rest happen at ``now``.
        """
        gen = self._gen
        replayed = 0
        while gen.timed_at is not None and now >= gen.timed_at:
            due = gen.timed_at if replayed < _MAX_REPLAY else now
            replayed += 1
            if gen.state is _OPEN:
                gen = self._switch(_HALF_OPEN, due, "wait_elapsed")
            else:  # HALF_OPEN waited too long for its trial calls
                gen = self._switch(
                    self._config.transition_to_state_after_wait_duration, due, "max_wait_in_half_open"
                )
        return gen

    def _acquire_slow(self, now: float) -> Permit | None:
        with self._lock:
            gen = self._advance(now)
            # resilience4j: the wait is over once the clock is strictly past it.
            if gen.state is _OPEN and now > gen.retry_at:
                gen = self._switch(_HALF_OPEN, now, "wait_elapsed")
            permit: Permit | None = None
            if gen.admits_all:
                permit = Permit(self, gen, now)
            elif gen.state is _HALF_OPEN and gen.permits > 0:
                gen.permits -= 1
                permit = Permit(self, gen, now)
            else:
                self._not_permitted += 1
        if self._events or self._timers:
            self._flush()
        return permit

    def _refusal(self, now: float) -> CallNotPermitted:
        gen = self._gen
        name = self._name
        if gen.state is _OPEN:
            wait = max(0.0, gen.retry_at - now)
            return CallNotPermitted(
                f"circuit breaker '{name}' is open after too many failed or slow calls; it lets "
                f"trial calls through in {wait:.1f} s. Serve a fallback, or retry then",
                retry_after=wait,
            )
        if gen.state is _HALF_OPEN:
            return CallNotPermitted(
                f"circuit breaker '{name}' is half-open and all its trial calls are in flight; "
                f"serve a fallback, or retry in a moment"
            )
        return CallNotPermitted(
            f"circuit breaker '{name}' was forced open by an operator; serve a fallback, or "
            f"close it with transition_to('closed')"
        )

    def _record(self, gen: _Gen, outcome: int, now: float) -> None:
        window = gen.window
        if window is None:  # a DISABLED breaker records nothing
            return
        with self._lock:
            current = self._gen
            if current.timed_at is not None and now >= current.timed_at:
                current = self._advance(now)
            if gen is current:
                window.record(outcome, now)
                self._count(outcome)
                self._evaluate(current, now)
            elif window is current.window:
                # Started while CLOSED, ended after the breaker opened: resilience4j records
                # it in the OPEN breaker's (carried-over) metrics, and so do we.
                window.record(outcome, now)
                self._count(outcome)
            # else: the window it belonged to is gone; dropping it keeps HALF_OPEN honest.
        if self._events or self._timers:
            self._flush()

    def _count(self, outcome: int) -> None:
        if outcome & _FAILED:
            self._failed += 1
        else:
            self._successful += 1
        if outcome & _SLOW:
            self._slow += 1

    def _evaluate(self, gen: _Gen, now: float) -> None:
        """Check the thresholds after a call was recorded in ``gen``. Caller holds the lock."""
        window = gen.window
        if window is None:
            return
        calls = window.calls
        if calls == 0 or calls < gen.min_calls:
            return
        failure_rate = window.failed * 100.0 / calls
        slow_rate = window.slow * 100.0 / calls
        failure_over = failure_rate >= self._failure_rate_threshold
        slow_over = slow_rate >= self._slow_rate_threshold
        state = gen.state
        if failure_over or slow_over:
            reason = (
                "failure_and_slow_call_rate" if failure_over and slow_over
                else "failure_rate" if failure_over else "slow_call_rate"
            )
            if state is _CLOSED or state is _HALF_OPEN:
                self._switch(_OPEN, now, reason, (failure_rate, slow_rate))
            elif state is _METRICS_ONLY and not gen.reported:
                gen.reported = True
                self._events.append(
                    BreakerEvent(
                        self._name, "thresholds_exceeded", state, state, reason, now,
                        failure_rate, slow_rate,
                    )
                )
        elif state is _HALF_OPEN:
            self._switch(_CLOSED, now, "trial_calls_passed", (failure_rate, slow_rate))

    def _release(self, gen: _Gen) -> None:
        if gen.window is None:  # DISABLED
            return
        with self._lock:
            self._ignored += 1
            if gen is self._gen and gen.state is _HALF_OPEN:
                gen.permits += 1

    def _flush(self) -> None:
        """Deliver queued events in order, and arm queued timers, outside the main lock."""
        scheduler = self._scheduler
        while self._timers:
            try:
                due = self._timers.popleft()
            except IndexError:  # another thread took it
                break
            if scheduler is not None:
                # A hair late, so the breaker clock has surely reached `due` when it fires.
                scheduler(max(0.0, due - self._clock()) + 0.001, self._poll)
        while self._events:
            if not self._dispatch_lock.acquire(blocking=False):
                return  # the thread holding it delivers ours too, in order
            try:
                while self._events:
                    event = self._events.popleft()
                    for listener in self._listeners:
                        try:
                            listener(event)
                        except Exception:  # noqa: BLE001 - a faulty listener must not break the calls
                            _log.exception("circuit breaker listener %r failed on %s", listener, event)
            finally:
                self._dispatch_lock.release()

    def _poll(self) -> None:
        _ = self.state


def loop_scheduler(loop: asyncio.AbstractEventLoop) -> Scheduler:
    """A :data:`Scheduler` that runs callbacks on ``loop`` (safe to call from any thread)."""

    def schedule(delay: float, callback: Callable[[], None]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, delay, callback)

    return schedule
