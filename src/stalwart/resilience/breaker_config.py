"""Settings of a circuit breaker: resilience4j's, in snake_case, validated once at load.

Kept apart from :mod:`stalwart.resilience.breaker` so the state machine's hot path stays
plain Python; that module re-exports everything here.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stalwart.durations import Seconds
from stalwart.errors import RequestError

__all__ = ["BreakerConfig", "BreakerState", "SlidingWindowType"]


class BreakerState(StrEnum):
    """The six states of resilience4j's circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"
    FORCED_OPEN = "forced_open"


class SlidingWindowType(StrEnum):
    """How the CLOSED window is bounded: by a number of calls or by a number of seconds."""

    COUNT_BASED = "count_based"
    TIME_BASED = "time_based"


_OPEN = BreakerState.OPEN
_CLOSED = BreakerState.CLOSED
_INITIAL_STATES = frozenset(
    {BreakerState.CLOSED, BreakerState.DISABLED, BreakerState.METRICS_ONLY, BreakerState.FORCED_OPEN}
)
_MIN_WAIT = 0.001  # resilience4j's shortest wait, 1 ms


def _import_exception(path: str) -> type[BaseException]:
    module_name, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name or "builtins"), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"cannot import exception class {path!r}; give its full dotted path, "
            f"e.g. 'stalwart.errors.ModelError' or 'TimeoutError'"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f"{path!r} is not an exception class")
    return obj


class BreakerConfig(BaseModel):
    """Settings of one circuit breaker, with resilience4j's names in snake_case.

    Durations are seconds (or strings such as ``"250ms"``). Defaults are resilience4j's,
    except four chosen for serving models:

    * ``slow_call_duration_threshold`` 0.5 s (resilience4j: 60 s). A tabular model answers
      in about a millisecond and online SLOs are a few hundred; a 60 s threshold would
      never see anything. Half the default guard timeout, so slowness shows before
      timeouts do.
    * ``minimum_number_of_calls`` 20 (resilience4j: 100). Each failing call may cost a full
      timeout; on a deployment serving a few requests per second, waiting for 100 of
      them before the breaker may open means a minute of failures. 20 still keeps a single
      bad request from tripping it (the threshold needs 10 failures).
    * ``wait_duration_in_open_state`` 10 s (resilience4j: 60 s). Models and feature stores
      in-process or one hop away recover in seconds (a restart, a GC pause, a pool refill);
      a minute of fallback answers is a long outage. Turn on the exponential backoff to
      probe a persistently broken dependency less often.
    * ``ignore_exceptions`` ``(RequestError,)`` (resilience4j: none). A client's bad
      request says nothing about the model's health and must not trip its breaker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_rate_threshold: float = Field(50.0, gt=0, le=100)
    slow_call_rate_threshold: float = Field(100.0, gt=0, le=100)
    slow_call_duration_threshold: Seconds = Field(0.5, gt=0)
    sliding_window_type: SlidingWindowType = SlidingWindowType.COUNT_BASED
    sliding_window_size: int = Field(100, ge=1)
    minimum_number_of_calls: int = Field(20, ge=1)
    permitted_number_of_calls_in_half_open_state: int = Field(10, ge=1)
    max_wait_duration_in_half_open_state: Seconds = Field(0.0, ge=0)
    """0 waits for the trial calls as long as they take."""
    transition_to_state_after_wait_duration: BreakerState = BreakerState.OPEN
    wait_duration_in_open_state: Seconds = Field(10.0, ge=0.001)
    automatic_transition_from_open_to_half_open_enabled: bool = False
    enable_exponential_backoff: bool = False
    exponential_backoff_multiplier: float = Field(1.5, ge=1.0)
    exponential_max_wait_duration_in_open_state: Seconds = Field(120.0, gt=0)
    enable_randomized_wait: bool = False
    randomized_wait_factor: float = Field(0.5, ge=0, le=1)
    wait_interval_function_in_open_state: Callable[[int], float] | None = Field(None, exclude=True)
    """``f(attempt) -> seconds``, attempt counting from 1; replaces the backoff settings."""
    record_exceptions: tuple[type[BaseException], ...] = ()
    """Empty: every ``Exception`` is a failure. Otherwise others count as successes."""
    ignore_exceptions: tuple[type[BaseException], ...] = (RequestError,)
    record_exception: Callable[[BaseException], bool] | None = Field(None, exclude=True)
    ignore_exception: Callable[[BaseException], bool] | None = Field(None, exclude=True)
    initial_state: BreakerState = BreakerState.CLOSED

    @field_validator("record_exceptions", "ignore_exceptions", mode="before")
    @classmethod
    def _import_names(cls, value: Any) -> Any:
        if isinstance(value, str | type):
            value = (value,)
        if isinstance(value, list | tuple):
            return tuple(_import_exception(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("transition_to_state_after_wait_duration", "initial_state", mode="before")
    @classmethod
    def _lower_state(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> BreakerConfig:
        if 0 < self.max_wait_duration_in_half_open_state < _MIN_WAIT:
            raise ValueError("max_wait_duration_in_half_open_state must be 0 (off) or at least 1 ms")
        if self.transition_to_state_after_wait_duration not in (_OPEN, _CLOSED):
            raise ValueError("transition_to_state_after_wait_duration must be 'open' or 'closed'")
        if self.initial_state not in _INITIAL_STATES:
            raise ValueError(
                "initial_state must be one of closed, disabled, metrics_only, forced_open"
            )
        if self.wait_interval_function_in_open_state is not None and (
            self.enable_exponential_backoff or self.enable_randomized_wait
        ):
            raise ValueError(
                "wait_interval_function_in_open_state replaces the backoff settings; "
                "do not also enable exponential backoff or randomized wait"
            )
        return self

    def wait_in_open_state(self, attempt: int) -> float:
        """Seconds the breaker stays OPEN on its ``attempt``-th opening since it last closed."""
        if self.wait_interval_function_in_open_state is not None:
            return max(_MIN_WAIT, float(self.wait_interval_function_in_open_state(attempt)))
        wait = self.wait_duration_in_open_state
        if self.enable_exponential_backoff:
            try:
                wait *= self.exponential_backoff_multiplier ** (attempt - 1)
            except OverflowError:
                wait = math.inf
        if self.enable_randomized_wait:
            delta = self.randomized_wait_factor * wait
            # jitter to spread the retries of many replicas, not a secret: random is fine
            wait = wait - delta + random.random() * 2 * delta  # noqa: S311
        if self.enable_exponential_backoff:
            wait = min(wait, self.exponential_max_wait_duration_in_open_state)
        return max(_MIN_WAIT, wait)
