"""Sliding windows of call outcomes, as resilience4j's circuit breaker keeps them.

Each outcome is two bits (:data:`FAILED`, :data:`SLOW`). Both windows keep running totals
and subtract what they evict, so recording a call and reading the totals are O(1) whatever
the window size. Not thread-safe: the breaker calls them under its lock.
"""

from __future__ import annotations

import math

__all__ = ["FAILED", "SLOW", "CountWindow", "TimeWindow", "Window"]

FAILED = 1
SLOW = 2


class CountWindow:
    """The outcomes of the last ``size`` calls, with running totals (subtract on evict)."""

    __slots__ = ("_head", "_ring", "_size", "calls", "failed", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = [-1] * size
        self._head = 0
        self.calls = 0
        self.failed = 0
        self.slow = 0

    def refresh(self, now: float) -> None:
        """Nothing ages out of a count window."""

    def record(self, outcome: int, now: float) -> None:
        ring = self._ring
        head = self._head
        old = ring[head]
        if old >= 0:
            self.calls -= 1
            self.failed -= old & FAILED
            self.slow -= (old & SLOW) >> 1
        ring[head] = outcome
        head += 1
        self._head = 0 if head == self._size else head
        self.calls += 1
        self.failed += outcome & FAILED
        self.slow += (outcome & SLOW) >> 1


class TimeWindow:
    """The outcomes of the last ``size`` seconds, one bucket per second of the clock.

    Bucket ``s % size`` holds second ``s``; moving the head to a new second clears the
    buckets it passes (at most ``size`` of them) and subtracts them from the totals.
    """

    __slots__ = ("_b_calls", "_b_failed", "_b_slow", "_head", "_size", "calls", "failed", "slow")

    def __init__(self, size: int, now: float) -> None:
        self._size = size
        self._b_calls = [0] * size
        self._b_failed = [0] * size
        self._b_slow = [0] * size
        self._head = math.floor(now)
        self.calls = 0
        self.failed = 0
        self.slow = 0

    def refresh(self, now: float) -> None:
        second = math.floor(now)
        head = self._head
        if second <= head:
            return
        size = self._size
        steps = min(second - head, size)
        b_calls, b_failed, b_slow = self._b_calls, self._b_failed, self._b_slow
        for s in range(second - steps + 1, second + 1):
            i = s % size
            self.calls -= b_calls[i]
            self.failed -= b_failed[i]
            self.slow -= b_slow[i]
            b_calls[i] = b_failed[i] = b_slow[i] = 0
        self._head = second

    def record(self, outcome: int, now: float) -> None:
        self.refresh(now)
        # A clock that stepped back (only a fake one can) records into the newest bucket.
        i = self._head % self._size
        failed = outcome & FAILED
        slow = (outcome & SLOW) >> 1
        self._b_calls[i] += 1
        self._b_failed[i] += failed
        self._b_slow[i] += slow
        self.calls += 1
        self.failed += failed
        self.slow += slow


Window = CountWindow | TimeWindow
