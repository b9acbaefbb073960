"""Resilience primitives: circuit breaker, bulkhead, time limit, the guard that composes
them around one dependency, and load shedding for a deployment.

>>> from stalwart.resilience import Guard, GuardConfig
>>> guard = Guard("churn-v3", GuardConfig())
"""

from __future__ import annotations

from stalwart.durations import Seconds, parse_seconds
from stalwart.resilience.breaker import (
    BreakerConfig,
    BreakerEvent,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Clock,
    Permit,
    Scheduler,
    SlidingWindowType,
    loop_scheduler,
)
from stalwart.resilience.bulkhead import Bulkhead, BulkheadConfig, BulkheadSnapshot
from stalwart.resilience.guard import Guard, GuardConfig, GuardSnapshot, GuardStage
from stalwart.resilience.shedding import (
    Admission,
    LoadShedder,
    Priority,
    ShedderConfig,
    ShedderSnapshot,
    parse_priority,
)
from stalwart.resilience.timeout import TimeLimiter, TimeoutConfig, call_with_timeout

__all__ = [
    "Admission",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerSnapshot",
    "BreakerState",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadSnapshot",
    "CircuitBreaker",
    "Clock",
    "Guard",
    "GuardConfig",
    "GuardSnapshot",
    "GuardStage",
    "LoadShedder",
    "Permit",
    "Priority",
    "Scheduler",
    "Seconds",
    "ShedderConfig",
    "ShedderSnapshot",
    "SlidingWindowType",
    "TimeLimiter",
    "TimeoutConfig",
    "call_with_timeout",
    "loop_scheduler",
    "parse_priority",
    "parse_seconds",
]
