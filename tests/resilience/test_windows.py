"""The sliding windows agree with a brute-force recount over random call sequences."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.resilience.windows import FAILED, SLOW, CountWindow, TimeWindow

outcomes = st.integers(0, FAILED | SLOW)


def totals(kept: list[int]) -> tuple[int, int, int]:
    return len(kept), sum(o & FAILED for o in kept), sum((o & SLOW) >> 1 for o in kept)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 12), calls=st.lists(outcomes, max_size=60))
def test_count_window_holds_exactly_the_last_calls(size: int, calls: list[int]) -> None:
    """After any sequence, the totals are those of the last `size` calls."""
    window = CountWindow(size)
    for i, outcome in enumerate(calls):
        window.record(outcome, 0.0)
        assert (window.calls, window.failed, window.slow) == totals(calls[max(0, i + 1 - size) : i + 1])


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 6),
    steps=st.lists(st.tuples(st.floats(0, 3.5), outcomes), max_size=60),
    final_gap=st.floats(0, 10),
)
def test_time_window_holds_exactly_the_last_seconds(
    size: int, steps: list[tuple[float, int]], final_gap: float
) -> None:
    """After any sequence, the totals are those of the calls made in the current second and
    the size-1 before it, also after a quiet spell."""
    now = 500.0
    window = TimeWindow(size, now)
    history: list[tuple[float, int]] = []

    def expected(at: float) -> tuple[int, int, int]:
        oldest = math.floor(at) - size + 1
        return totals([o for t, o in history if math.floor(t) >= oldest])

    for gap, outcome in steps:
        now += gap
        window.record(outcome, now)
        history.append((now, outcome))
        assert (window.calls, window.failed, window.slow) == expected(now)
    now += final_gap
    window.refresh(now)
    assert (window.calls, window.failed, window.slow) == expected(now)
