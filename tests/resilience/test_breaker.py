"""The circuit breaker's state machine, rule by rule, on a fake clock.

Every transition test asserts the state just before and exactly at the call that crosses
the threshold, as resilience4j's own tests do.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stalwart.errors import (
    CallNotPermitted,
    CallTimeout,
    FeatureError,
    IllegalStateTransition,
    ModelError,
    ValidationFailed,
)
from stalwart.resilience import (
    BreakerConfig,
    BreakerEvent,
    BreakerState,
    CircuitBreaker,
    SlidingWindowType,
    loop_scheduler,
)
from tests.resilience.clock import FakeClock

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
DISABLED = BreakerState.DISABLED
METRICS_ONLY = BreakerState.METRICS_ONLY
FORCED_OPEN = BreakerState.FORCED_OPEN


def make(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    return CircuitBreaker("model-a", BreakerConfig(**settings), clock=clock)


def ok(breaker: CircuitBreaker, duration: float = 0.001) -> None:
    breaker.acquire().on_success(duration)


def fail(breaker: CircuitBreaker, duration: float = 0.001, exc: BaseException | None = None) -> None:
    breaker.acquire().on_error(exc if exc is not None else ModelError("boom"), duration)


def trip(breaker: CircuitBreaker, calls: int) -> None:
    for _ in range(calls):
        fail(breaker)
    assert breaker.state is OPEN


def events(breaker: CircuitBreaker) -> list[BreakerEvent]:
    heard: list[BreakerEvent] = []
    breaker.add_listener(heard.append)
    return heard


# -- configuration --------------------------------------------------------------------


def test_defaults_are_resilience4j_except_the_documented_serving_ones() -> None:
    """Defaults match resilience4j but for slow-call duration, minimum calls, OPEN wait and
    ignoring client errors, each changed for model serving."""
    cfg = BreakerConfig()
    assert cfg.failure_rate_threshold == 50
    assert cfg.slow_call_rate_threshold == 100
    assert cfg.sliding_window_type is SlidingWindowType.COUNT_BASED
    assert cfg.sliding_window_size == 100
    assert cfg.permitted_number_of_calls_in_half_open_state == 10
    assert cfg.max_wait_duration_in_half_open_state == 0
    assert cfg.transition_to_state_after_wait_duration is OPEN
    assert cfg.automatic_transition_from_open_to_half_open_enabled is False
    assert cfg.enable_exponential_backoff is False
    assert cfg.exponential_backoff_multiplier == 1.5
    assert cfg.randomized_wait_factor == 0.5
    assert cfg.record_exceptions == ()
    # Changed for serving:
    assert cfg.slow_call_duration_threshold == 0.5
    assert cfg.minimum_number_of_calls == 20
    assert cfg.wait_duration_in_open_state == 10.0


def test_config_accepts_duration_strings_and_dotted_exception_names() -> None:
    """A deployment file can write durations as '250ms' and exceptions by their import path."""
    cfg = BreakerConfig.model_validate(
        {
            "slow_call_duration_threshold": "250ms",
            "wait_duration_in_open_state": "1m",
            "record_exceptions": ["stalwart.errors.ModelError", "TimeoutError"],
            "transition_to_state_after_wait_duration": "CLOSED",
        }
    )
    assert cfg.slow_call_duration_threshold == 0.25
    assert cfg.wait_duration_in_open_state == 60.0
    assert cfg.record_exceptions == (ModelError, TimeoutError)
    assert cfg.transition_to_state_after_wait_duration is CLOSED


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 101},
        {"slow_call_rate_threshold": 0},
        {"sliding_window_size": 0},
        {"minimum_number_of_calls": 0},
        {"permitted_number_of_calls_in_half_open_state": 0},
        {"wait_duration_in_open_state": 0},
        {"slow_call_duration_threshold": "soon"},
        {"transition_to_state_after_wait_duration": "half_open"},
        {"initial_state": "open"},
        {"record_exceptions": ["no.such.Error"]},
        {"ignore_exceptions": ["builtins.len"]},
        {"wait_interval_function_in_open_state": lambda n: n, "enable_exponential_backoff": True},
        {"unknown_setting": 1},
    ],
)
def test_invalid_settings_are_refused_at_load(settings: dict[str, Any]) -> None:
    """A wrong setting fails when the configuration is loaded, never at the first call."""
    with pytest.raises(ValidationError):
        BreakerConfig.model_validate(settings)


# -- CLOSED: count-based window -------------------------------------------------------


def test_rates_wait_for_the_minimum_number_of_calls(clock: FakeClock) -> None:
    """Failures below minimum_number_of_calls never open the breaker; the call that reaches
    the minimum does."""
    breaker = make(clock, sliding_window_size=10, minimum_number_of_calls=5)
    for _ in range(4):
        fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.snapshot().failure_rate is None  # not evaluated yet
    fail(breaker)
    assert breaker.state is OPEN


def test_failure_rate_threshold_is_inclusive(clock: FakeClock) -> None:
    """A failure rate equal to the threshold opens the breaker (>=, as resilience4j)."""
    breaker = make(clock, sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=50)
    ok(breaker)
    ok(breaker)
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)  # 2 of 4 = 50%
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert snap.failure_rate == 50.0
    assert snap.buffered_calls == 4


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    """A rate just under the threshold keeps the breaker closed however long it lasts."""
    breaker = make(clock, sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=50)
    for _ in range(10):
        ok(breaker)
        ok(breaker)
        ok(breaker)
        fail(breaker)  # always 1 of 4 = 25%
    assert breaker.state is CLOSED


def test_count_window_forgets_the_oldest_call(clock: FakeClock) -> None:
    """The count window holds the last N calls only: an old failure stops counting."""
    breaker = make(clock, sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=75)
    for outcome in ("F", "F", "S", "S", "S", "F", "F"):
        fail(breaker) if outcome == "F" else ok(breaker)
    # Window is S S F F (50%); cumulatively 4 of 7 would be 57%.
    assert breaker.state is CLOSED
    assert breaker.snapshot().failure_rate == 50.0
    fail(breaker)  # window S F F F = 75%
    assert breaker.state is OPEN


def test_minimum_calls_is_capped_by_a_count_window(clock: FakeClock) -> None:
    """With a count window, minimum_number_of_calls above the window size means the window
    size (resilience4j caps it)."""
    breaker = make(clock, sliding_window_size=3, minimum_number_of_calls=50)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN


def test_slow_calls_open_the_breaker_at_the_slow_rate_threshold(clock: FakeClock) -> None:
    """Successful but slow calls open it once their share reaches slow_call_rate_threshold."""
    breaker = make(
        clock,
        sliding_window_size=4,
        minimum_number_of_calls=4,
        slow_call_duration_threshold=0.5,
        slow_call_rate_threshold=50,
    )
    heard = events(breaker)
    ok(breaker, 0.6)
    ok(breaker, 0.5)  # exactly the threshold is not slow (strictly greater, as resilience4j)
    ok(breaker, 0.1)
    assert breaker.state is CLOSED
    ok(breaker, 0.7)  # 2 of 4 slow = 50%
    assert breaker.state is OPEN
    assert heard[-1].reason == "slow_call_rate"
    assert heard[-1].slow_call_rate == 50.0
    assert heard[-1].failure_rate == 0.0


def test_default_slow_rate_needs_every_call_slow(clock: FakeClock) -> None:
    """With the default 100% slow-call threshold, one fast call in the window keeps it closed."""
    breaker = make(clock, sliding_window_size=5, minimum_number_of_calls=5)
    for _ in range(4):
        ok(breaker, 2.0)
    ok(breaker, 0.01)
    assert breaker.state is CLOSED
    for _ in range(4):
        ok(breaker, 2.0)
    assert breaker.state is CLOSED  # window: fast + 4 slow
    ok(breaker, 2.0)  # the fast call is evicted: 5 of 5 slow
    assert breaker.state is OPEN


def test_slow_failures_count_towards_both_rates(clock: FakeClock) -> None:
    """A slow failure is a failure and a slow call; the event names both thresholds."""
    breaker = make(
        clock, sliding_window_size=2, minimum_number_of_calls=2, slow_call_rate_threshold=50
    )
    heard = events(breaker)
    fail(breaker, 1.0)
    assert breaker.state is CLOSED
    fail(breaker, 1.0)
    assert breaker.state is OPEN
    assert heard[-1].reason == "failure_and_slow_call_rate"
    snap = breaker.snapshot()
    assert (snap.failed_calls, snap.slow_calls, snap.slow_buffered_calls) == (2, 2, 2)


def test_a_timeout_is_recorded_as_slow_whatever_its_duration(clock: FakeClock) -> None:
    """A call abandoned at its timeout counts as a slow failure even if the timeout is
    shorter than the slow-call threshold."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2)
    fail(breaker, 0.05, CallTimeout("late"))
    fail(breaker, 0.05, CallTimeout("late"))
    snap = breaker.snapshot()
    assert snap.slow_buffered_calls == 2
    assert snap.slow_call_rate == 100.0
    assert breaker.state is OPEN


# -- CLOSED: time-based window --------------------------------------------------------


def test_time_window_aggregates_the_last_seconds(clock: FakeClock) -> None:
    """A time window counts the calls of the last N seconds (one bucket per second); older
    buckets drop out as the clock moves."""
    breaker = make(
        clock,
        sliding_window_type="time_based",
        sliding_window_size=3,
        minimum_number_of_calls=3,
    )
    clock.now = 1000.2
    fail(breaker)
    clock.now = 1001.5
    fail(breaker)
    clock.now = 1003.1  # the window is now seconds 1001..1003: the 1000.2 failure is gone
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.snapshot().buffered_calls == 2
    clock.now = 1003.9
    fail(breaker)  # three failures in the window
    assert breaker.state is OPEN


def test_time_window_empties_after_a_quiet_spell(clock: FakeClock) -> None:
    """After more than N quiet seconds the window is empty and rates are not evaluated."""
    breaker = make(
        clock, sliding_window_type="time_based", sliding_window_size=5, minimum_number_of_calls=3
    )
    fail(breaker)
    ok(breaker)
    assert breaker.snapshot().buffered_calls == 2
    clock.advance(4.9)
    assert breaker.snapshot().buffered_calls == 2
    clock.advance(0.2)  # the bucket of the first calls has left the window
    assert breaker.snapshot().buffered_calls == 0
    clock.advance(1000)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN


def test_time_window_minimum_calls_is_not_capped(clock: FakeClock) -> None:
    """With a time window the minimum number of calls may exceed the window size."""
    breaker = make(
        clock, sliding_window_type="time_based", sliding_window_size=2, minimum_number_of_calls=5
    )
    for _ in range(4):
        fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN


# -- OPEN -----------------------------------------------------------------------------


def test_open_refuses_until_the_wait_is_over_then_half_opens_on_the_next_attempt(
    clock: FakeClock,
) -> None:
    """OPEN refuses calls for wait_duration_in_open_state; the first attempt strictly after
    it moves to HALF_OPEN and is let through."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2, wait_duration_in_open_state=5)
    trip(breaker, 2)
    with pytest.raises(CallNotPermitted) as refused:
        breaker.acquire()
    assert refused.value.retry_after == pytest.approx(5.0)
    clock.advance(5.0)
    assert breaker.try_acquire() is None  # exactly at the end of the wait: still open
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is OPEN  # without automatic transition, only an attempt moves it
    permit = breaker.try_acquire()
    assert permit is not None
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().not_permitted_calls == 2


def test_automatic_transition_half_opens_when_the_wait_ends(clock: FakeClock) -> None:
    """With automatic transition the breaker is HALF_OPEN as soon as the wait ends, without
    any call, and listeners hear it at the instant it was due."""
    breaker = make(
        clock,
        sliding_window_size=2,
        minimum_number_of_calls=2,
        wait_duration_in_open_state=5,
        automatic_transition_from_open_to_half_open_enabled=True,
    )
    heard = events(breaker)
    trip(breaker, 2)
    opened_at = clock.now
    clock.advance(4.999)
    assert breaker.state is OPEN
    clock.advance(7)  # noticed late
    assert breaker.state is HALF_OPEN
    assert [(e.from_state, e.to_state) for e in heard] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert heard[-1].at == opened_at + 5


def test_a_scheduler_makes_timed_transitions_happen_without_calls(clock: FakeClock) -> None:
    """Given a scheduler, the breaker arms a timer for its timed transitions so listeners
    hear them on time even when nobody calls."""
    timers: list[tuple[float, Any]] = []
    breaker = CircuitBreaker(
        "model-a",
        BreakerConfig(
            sliding_window_size=1,
            minimum_number_of_calls=1,
            wait_duration_in_open_state=5,
            automatic_transition_from_open_to_half_open_enabled=True,
        ),
        clock=clock,
        scheduler=lambda delay, callback: timers.append((delay, callback)),
    )
    heard = events(breaker)
    fail(breaker)
    assert len(timers) == 1
    delay, callback = timers[0]
    assert delay == pytest.approx(5.0, abs=0.01)
    clock.advance(delay)
    callback()
    assert heard[-1].to_state is HALF_OPEN


async def test_loop_scheduler_runs_timed_transitions_on_the_event_loop() -> None:
    """With loop_scheduler and the real clock, an OPEN breaker half-opens by itself."""
    loop = asyncio.get_running_loop()
    breaker = CircuitBreaker(
        "model-a",
        BreakerConfig(
            sliding_window_size=1,
            minimum_number_of_calls=1,
            wait_duration_in_open_state=0.05,
            automatic_transition_from_open_to_half_open_enabled=True,
        ),
        scheduler=loop_scheduler(loop),
    )
    half_open = asyncio.Event()
    breaker.add_listener(lambda e: half_open.set() if e.to_state is HALF_OPEN else None)
    fail(breaker)
    await asyncio.wait_for(half_open.wait(), timeout=2.0)


def test_calls_that_started_closed_and_end_open_are_still_recorded(clock: FakeClock) -> None:
    """A call permitted while CLOSED that finishes after the breaker opened is recorded in
    the OPEN breaker's metrics (resilience4j does the same)."""
    breaker = make(clock, sliding_window_size=10, minimum_number_of_calls=2)
    slow_one = breaker.acquire()
    trip(breaker, 2)
    slow_one.on_success(0.01)
    snap = breaker.snapshot()
    assert snap.buffered_calls == 3
    assert snap.state is OPEN


# -- HALF_OPEN ------------------------------------------------------------------------


def half_open(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    settings = {
        "sliding_window_size": 2,
        "minimum_number_of_calls": 2,
        "wait_duration_in_open_state": 1,
        "permitted_number_of_calls_in_half_open_state": 3,
        **settings,
    }
    breaker = make(clock, **settings)
    trip(breaker, 2)
    clock.advance(settings["wait_duration_in_open_state"] + 0.001)
    return breaker


def test_half_open_hands_out_exactly_the_permitted_calls(clock: FakeClock) -> None:
    """HALF_OPEN lets exactly permitted_number_of_calls_in_half_open_state calls through."""
    breaker = half_open(clock)
    permits = [breaker.try_acquire() for _ in range(5)]
    assert [p is not None for p in permits] == [True, True, True, False, False]
    assert breaker.state is HALF_OPEN


def test_half_open_closes_when_the_last_trial_call_passes(clock: FakeClock) -> None:
    """The verdict waits for all trial calls; below the thresholds it closes, at the very
    call that completes the trial window."""
    breaker = half_open(clock)
    heard = events(breaker)
    permits = [breaker.acquire() for _ in range(3)]
    permits[0].on_error(ModelError("still broken"), 0.01)
    permits[1].on_success(0.01)
    assert breaker.state is HALF_OPEN
    permits[2].on_success(0.01)  # 1 of 3 failed = 33% < 50%
    assert breaker.state is CLOSED
    assert heard[-1].reason == "trial_calls_passed"
    assert breaker.snapshot().buffered_calls == 0  # CLOSED starts a fresh window


def test_half_open_reopens_when_the_trial_calls_fail(clock: FakeClock) -> None:
    """Two failures of three trials is over the threshold: the third completion re-opens."""
    breaker = half_open(clock)
    permits = [breaker.acquire() for _ in range(3)]
    permits[0].on_error(ModelError("x"), 0.01)
    permits[1].on_error(ModelError("x"), 0.01)
    assert breaker.state is HALF_OPEN  # no verdict before all trials are in
    permits[2].on_success(0.01)
    assert breaker.state is OPEN


def test_ignored_trial_call_gives_its_permit_back(clock: FakeClock) -> None:
    """An ignored exception in HALF_OPEN releases the permit, unrecorded, for another call."""
    breaker = half_open(clock, permitted_number_of_calls_in_half_open_state=1)
    permit = breaker.acquire()
    assert breaker.try_acquire() is None
    permit.on_error(ValidationFailed("bad row", []), 0.01)
    again = breaker.acquire()
    assert breaker.state is HALF_OPEN
    again.on_success(0.01)
    assert breaker.state is CLOSED


def test_a_permit_settles_once(clock: FakeClock) -> None:
    """Releasing or recording a permit twice has no effect: no extra HALF_OPEN permit."""
    breaker = half_open(clock, permitted_number_of_calls_in_half_open_state=1)
    permit = breaker.acquire()
    permit.release()
    permit.release()
    permit.on_success()
    first = breaker.acquire()
    assert breaker.try_acquire() is None
    first.release()


def test_calls_from_before_the_trip_do_not_vote_in_half_open(clock: FakeClock) -> None:
    """A call permitted while CLOSED that ends during HALF_OPEN is not one of the trial
    calls: it cannot close (or re-open) the breaker."""
    breaker = make(
        clock,
        sliding_window_size=2,
        minimum_number_of_calls=2,
        wait_duration_in_open_state=1,
        permitted_number_of_calls_in_half_open_state=1,
    )
    straggler = breaker.acquire()
    trip(breaker, 2)
    clock.advance(1.001)
    trial = breaker.acquire()
    straggler.on_success(0.01)
    assert breaker.state is HALF_OPEN
    trial.on_error(ModelError("x"), 0.01)
    assert breaker.state is OPEN


def test_max_wait_in_half_open_reopens_at_the_exact_instant(clock: FakeClock) -> None:
    """Trial calls that never finish cannot hold HALF_OPEN beyond its max wait: the breaker
    re-opens at that instant, and a late trial outcome no longer counts."""
    breaker = half_open(clock, max_wait_duration_in_half_open_state=2)
    heard = events(breaker)
    hung = breaker.acquire()
    entered = clock.now
    clock.advance(1.999)
    assert breaker.state is HALF_OPEN
    clock.advance(0.001)
    assert breaker.state is OPEN
    assert heard[-1].reason == "max_wait_in_half_open"
    assert heard[-1].at == entered + 2
    hung.on_success(0.01)
    assert breaker.state is OPEN


def test_max_wait_in_half_open_can_close_instead(clock: FakeClock) -> None:
    """transition_to_state_after_wait_duration='closed' closes after the max wait."""
    breaker = half_open(
        clock, max_wait_duration_in_half_open_state=2, transition_to_state_after_wait_duration="closed"
    )
    breaker.acquire()
    clock.advance(2)
    assert breaker.state is CLOSED


def test_open_half_open_cycle_with_automatic_transition_chains_on_the_clock(clock: FakeClock) -> None:
    """Timed transitions chain at their due instants even when noticed much later."""
    breaker = make(
        clock,
        sliding_window_size=1,
        minimum_number_of_calls=1,
        permitted_number_of_calls_in_half_open_state=1,
        max_wait_duration_in_half_open_state=2,
        automatic_transition_from_open_to_half_open_enabled=True,
        wait_duration_in_open_state=1,
    )
    heard = events(breaker)
    fail(breaker)  # OPEN at t
    t = clock.now
    clock.advance(1.5)
    breaker.acquire()  # HALF_OPEN since t+1; this trial hangs
    clock.advance(10)  # max wait -> OPEN at t+3, wait -> HALF_OPEN at t+4, ... -> OPEN at t+6
    assert breaker.state is HALF_OPEN  # t+11.5: HALF_OPEN since t+10
    assert [(e.to_state, e.at - t) for e in heard] == [
        (OPEN, 0), (HALF_OPEN, 1), (OPEN, 3), (HALF_OPEN, 4), (OPEN, 6), (HALF_OPEN, 7),
        (OPEN, 9), (HALF_OPEN, 10),
    ]


def test_an_idle_cycling_breaker_catches_up_in_bounded_work(clock: FakeClock) -> None:
    """A breaker cycling OPEN/HALF_OPEN by itself, unobserved for days, catches up at once
    on the next look instead of replaying every missed cycle."""
    breaker = make(
        clock,
        sliding_window_size=1,
        minimum_number_of_calls=1,
        wait_duration_in_open_state=1,
        max_wait_duration_in_half_open_state=1,
        automatic_transition_from_open_to_half_open_enabled=True,
    )
    heard = events(breaker)
    fail(breaker)
    clock.advance(7 * 24 * 3600)
    assert breaker.state in (OPEN, HALF_OPEN)
    assert len(heard) <= 70
    assert heard[-1].at == clock.now


# -- backoff --------------------------------------------------------------------------


def test_exponential_backoff_grows_the_open_wait_until_the_breaker_closes(clock: FakeClock) -> None:
    """Each re-opening without closing in between waits longer (capped); closing resets it."""
    breaker = make(
        clock,
        sliding_window_size=1,
        minimum_number_of_calls=1,
        permitted_number_of_calls_in_half_open_state=1,
        wait_duration_in_open_state=10,
        enable_exponential_backoff=True,
        exponential_backoff_multiplier=2,
        exponential_max_wait_duration_in_open_state=35,
    )
    waits = []
    fail(breaker)
    for _ in range(3):
        retry_after = breaker.snapshot().retry_after
        assert retry_after is not None
        waits.append(retry_after)
        clock.advance(retry_after + 0.001)
        fail(breaker)  # the trial fails: OPEN again, one attempt more
    assert waits == [10, 20, 35]
    clock.advance(35.001)
    ok(breaker)  # trial passes: CLOSED, history forgotten
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.snapshot().retry_after == 10


def test_randomized_wait_stays_within_its_factor() -> None:
    """A randomized wait spreads around the configured one by at most the factor."""
    cfg = BreakerConfig(wait_duration_in_open_state=10, enable_randomized_wait=True, randomized_wait_factor=0.5)
    samples = [cfg.wait_in_open_state(1) for _ in range(500)]
    assert all(5 <= s <= 15 for s in samples)
    assert max(samples) - min(samples) > 5  # it does spread


def test_custom_wait_interval_function(clock: FakeClock) -> None:
    """wait_interval_function_in_open_state decides the wait from the attempt number."""
    breaker = make(
        clock,
        sliding_window_size=1,
        minimum_number_of_calls=1,
        permitted_number_of_calls_in_half_open_state=1,
        wait_interval_function_in_open_state=lambda attempt: attempt * 3.0,
    )
    fail(breaker)
    assert breaker.snapshot().retry_after == 3.0
    clock.advance(3.001)
    fail(breaker)
    assert breaker.snapshot().retry_after == 6.0


# -- which exceptions count -----------------------------------------------------------


def test_client_errors_and_cancellation_are_ignored_by_default(clock: FakeClock) -> None:
    """A client's bad request and a cancelled call neither fail nor succeed."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2)
    fail(breaker, exc=ValidationFailed("bad", []))
    fail(breaker, exc=asyncio.CancelledError())
    fail(breaker, exc=KeyboardInterrupt())
    snap = breaker.snapshot()
    assert snap.buffered_calls == 0
    assert snap.ignored_calls == 3
    assert breaker.state is CLOSED


def test_record_exceptions_turns_other_exceptions_into_successes(clock: FakeClock) -> None:
    """With record_exceptions set, only those are failures; other exceptions count as
    successes (resilience4j's rule)."""
    breaker = make(
        clock, sliding_window_size=2, minimum_number_of_calls=2, record_exceptions=[ModelError]
    )
    fail(breaker, exc=FeatureError("source down"))
    fail(breaker, exc=ModelError("x"))
    snap = breaker.snapshot()
    assert (snap.successful_calls, snap.failed_calls) == (1, 1)
    assert breaker.state is OPEN  # 1 of 2 = 50%


def test_ignoring_wins_over_recording(clock: FakeClock) -> None:
    """An exception both recorded and ignored is ignored."""
    breaker = make(
        clock,
        sliding_window_size=2,
        minimum_number_of_calls=2,
        record_exceptions=[Exception],
        ignore_exceptions=[LookupError],
    )
    fail(breaker, exc=KeyError("k"))
    assert breaker.snapshot().ignored_calls == 1


def test_exception_predicates(clock: FakeClock) -> None:
    """record_exception / ignore_exception predicates decide per exception instance."""
    breaker = make(
        clock,
        sliding_window_size=3,
        minimum_number_of_calls=3,
        record_exception=lambda e: "fatal" in str(e),
        ignore_exception=lambda e: "noise" in str(e),
    )
    fail(breaker, exc=RuntimeError("fatal"))
    fail(breaker, exc=RuntimeError("benign"))
    fail(breaker, exc=RuntimeError("noise"))
    snap = breaker.snapshot()
    assert (snap.failed_calls, snap.successful_calls, snap.ignored_calls) == (1, 1, 1)


# -- DISABLED, METRICS_ONLY, FORCED_OPEN, manual transitions, reset --------------------


def test_disabled_lets_everything_through_and_records_nothing(clock: FakeClock) -> None:
    """DISABLED: every call passes, nothing is recorded, failures never trip it."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2)
    breaker.transition_to("disabled")
    for _ in range(10):
        fail(breaker)
    snap = breaker.snapshot()
    assert snap.state is DISABLED
    assert (snap.buffered_calls, snap.failed_calls) == (0, 0)


def test_metrics_only_records_and_reports_but_never_trips(clock: FakeClock) -> None:
    """METRICS_ONLY: calls pass and are measured; crossing a threshold is reported once to
    listeners but the breaker stays put."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2, initial_state="metrics_only")
    heard = events(breaker)
    for _ in range(6):
        fail(breaker)
    assert breaker.state is METRICS_ONLY
    assert breaker.snapshot().failure_rate == 100.0
    assert [e.kind for e in heard] == ["thresholds_exceeded"]


def test_forced_open_refuses_everything_and_never_moves_by_itself(clock: FakeClock) -> None:
    """FORCED_OPEN refuses every call, counts them, and no wait ever half-opens it."""
    breaker = make(clock, automatic_transition_from_open_to_half_open_enabled=True)
    breaker.transition_to(FORCED_OPEN)
    clock.advance(10_000)
    with pytest.raises(CallNotPermitted, match="forced open"):
        breaker.acquire()
    assert breaker.try_acquire() is None
    assert breaker.state is FORCED_OPEN
    assert breaker.snapshot().not_permitted_calls == 2


_FORBIDDEN = {(CLOSED, HALF_OPEN), (METRICS_ONLY, OPEN), (METRICS_ONLY, HALF_OPEN)}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(BreakerState, BreakerState)))
def test_manual_transitions_follow_resilience4j_table(
    clock: FakeClock, source: BreakerState, target: BreakerState
) -> None:
    """Exactly CLOSED->HALF_OPEN and METRICS_ONLY->OPEN/HALF_OPEN are refused; every other
    manual transition (including to the same state) is allowed."""
    breaker = make(clock)
    if source is HALF_OPEN:
        breaker.transition_to(OPEN)
    if source is not CLOSED:
        breaker.transition_to(source)
    assert breaker.state is source
    if (source, target) in _FORBIDDEN:
        with pytest.raises(IllegalStateTransition):
            breaker.transition_to(target)
        assert breaker.state is source
    else:
        breaker.transition_to(target)
        assert breaker.state is target


def test_entering_the_same_state_again_restarts_it_quietly(clock: FakeClock) -> None:
    """OPEN -> OPEN starts a new wait (one attempt more) without telling listeners."""
    breaker = make(
        clock, enable_exponential_backoff=True, exponential_backoff_multiplier=2, wait_duration_in_open_state=1
    )
    breaker.transition_to(OPEN)
    heard = events(breaker)
    clock.advance(0.5)
    breaker.transition_to(OPEN)
    assert breaker.snapshot().retry_after == 2.0
    assert heard == []


def test_reset_returns_to_closed_with_fresh_metrics(clock: FakeClock) -> None:
    """reset() closes the breaker, empties its window and forgets the backoff."""
    breaker = make(
        clock,
        sliding_window_size=2,
        minimum_number_of_calls=2,
        enable_exponential_backoff=True,
        exponential_backoff_multiplier=2,
        wait_duration_in_open_state=1,
    )
    heard = events(breaker)
    trip(breaker, 2)
    breaker.transition_to(OPEN)  # attempt 2
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.snapshot().buffered_calls == 0
    assert heard[-1].kind == "reset"
    trip(breaker, 2)
    assert breaker.snapshot().retry_after == 1.0


# -- conveniences and listeners -------------------------------------------------------


def test_permit_as_context_manager_measures_the_block(clock: FakeClock) -> None:
    """`with breaker.acquire():` records the block's outcome and duration on the breaker's clock."""
    breaker = make(clock, sliding_window_size=5, minimum_number_of_calls=5, slow_call_duration_threshold=1)
    with breaker.acquire():
        clock.advance(2)
    with pytest.raises(ModelError), breaker.acquire():
        raise ModelError("x")
    snap = breaker.snapshot()
    assert (snap.successful_calls, snap.failed_calls, snap.slow_calls) == (1, 1, 1)


async def test_async_call_records_outcome(clock: FakeClock) -> None:
    """breaker.call(fn, *args) awaits the call and records its outcome."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2)

    async def double(x: int) -> int:
        return 2 * x

    async def broken(x: int) -> int:
        raise ModelError(f"cannot {x}")

    assert await breaker.call(double, 21) == 42
    with pytest.raises(ModelError):
        await breaker.call(broken, 1)
    assert breaker.state is OPEN
    with pytest.raises(CallNotPermitted):
        await breaker.call(double, 1)


def test_sync_call_records_outcome(clock: FakeClock) -> None:
    """breaker.call_sync(fn, *args) is the same for code running on a thread."""
    breaker = make(clock, sliding_window_size=1, minimum_number_of_calls=1)
    assert breaker.call_sync(len, "abc") == 3
    with pytest.raises(ZeroDivisionError):
        breaker.call_sync(divmod, 1, 0)
    assert breaker.state is OPEN


def test_a_failing_listener_is_logged_and_does_not_disturb_calls(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the call and the other listeners go on."""
    breaker = make(clock, sliding_window_size=1, minimum_number_of_calls=1)

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    heard = events(breaker)
    with caplog.at_level(logging.ERROR, logger="stalwart.resilience"):
        fail(breaker)
    assert breaker.state is OPEN
    assert len(heard) == 1
    assert "listener" in caplog.text
    breaker.remove_listener(broken)


def test_snapshot_is_json_ready(clock: FakeClock) -> None:
    """The snapshot's dict form holds plain values for a health endpoint."""
    breaker = make(clock, sliding_window_size=2, minimum_number_of_calls=2)
    trip(breaker, 2)
    data = breaker.snapshot().as_dict()
    assert data["state"] == "open"
    assert data["failure_rate"] == 100.0
    assert data["retry_after"] == pytest.approx(10.0)
    assert "model-a" in repr(breaker)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 10),
    minimum=st.integers(1, 12),
    failure_threshold=st.sampled_from([10.0, 33.4, 50.0, 75.0, 100.0]),
    slow_threshold=st.sampled_from([25.0, 50.0, 100.0]),
    calls=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40),
)
def test_closed_breaker_opens_at_exactly_the_first_crossing_call(
    size: int,
    minimum: int,
    failure_threshold: float,
    slow_threshold: float,
    calls: list[tuple[bool, bool]],
) -> None:
    """Over random outcomes the breaker opens at the first call where, counting the last
    `size` calls (at least min(minimum, size) of them), the failure or slow rate reaches
    its threshold, and never before."""
    clock = FakeClock()
    breaker = make(
        clock,
        sliding_window_size=size,
        minimum_number_of_calls=minimum,
        failure_rate_threshold=failure_threshold,
        slow_call_rate_threshold=slow_threshold,
        slow_call_duration_threshold=1.0,
    )
    for i, (failed, slow) in enumerate(calls):
        last = calls[max(0, i + 1 - size) : i + 1]
        crossing = len(last) >= min(minimum, size) and (
            sum(f for f, _ in last) * 100.0 / len(last) >= failure_threshold
            or sum(s for _, s in last) * 100.0 / len(last) >= slow_threshold
        )
        duration = 2.0 if slow else 0.1
        if failed:
            fail(breaker, duration)
        else:
            ok(breaker, duration)
        assert breaker.state is (OPEN if crossing else CLOSED), f"call {i}"
        if crossing:
            return
