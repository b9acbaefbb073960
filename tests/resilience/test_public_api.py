"""The resilience package's public names: changing them must be deliberate."""

from __future__ import annotations

import stalwart.resilience as resilience


def test_public_names_are_the_intended_ones() -> None:
    """`stalwart.resilience.__all__` lists exactly the supported surface, all importable."""
    assert sorted(resilience.__all__) == [
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
    for name in resilience.__all__:
        assert getattr(resilience, name) is not None
