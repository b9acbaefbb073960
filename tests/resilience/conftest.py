"""Fixtures of the resilience tests."""

from __future__ import annotations

import pytest

from tests.resilience.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
