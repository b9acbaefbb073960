"""Composing request taps: none is no tap at all, one is itself, several run in order."""

from __future__ import annotations

from stalwart.serving.dataplane import Outcome
from stalwart.serving.middleware import RequestInfo
from stalwart.serving.taps import compose


def test_no_tap_composes_to_none_and_one_to_itself() -> None:
    """The data plane then builds no Outcome (none) or calls the tap directly (one)."""
    seen: list[Outcome] = []
    assert compose() is None
    assert compose(None, None) is None
    assert compose(None, seen.append, None) == seen.append


def test_several_taps_each_see_every_outcome_in_order() -> None:
    """Each tap sees the outcome, in the order given, and sees what earlier ones set."""
    order: list[str] = []

    def first(outcome: Outcome) -> None:
        order.append("first")
        outcome.info.trace_id = "from-first"

    def second(outcome: Outcome) -> None:
        order.append(f"second saw {outcome.info.trace_id}")

    tap = compose(first, None, second)
    assert tap is not None
    tap(Outcome("/v2", RequestInfo("r1")))
    assert order == ["first", "second saw from-first"]
