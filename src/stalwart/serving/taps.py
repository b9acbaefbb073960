"""Composing request taps: the data plane takes one; the server may have several (the
prediction log, tracing, a user's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from stalwart.serving.dataplane import Outcome, RequestTap

__all__ = ["compose"]


def compose(*taps: RequestTap | None) -> RequestTap | None:
    """One tap calling each of ``taps`` in order (None when there is none, the tap itself
    when there is one: decided once, so an unused tap costs nothing per request). The
    awaitables they return are awaited together."""
    present = [t for t in taps if t is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def tap(outcome: Outcome) -> Awaitable[None] | None:
        waiters = [w for w in (t(outcome) for t in present) if w is not None]
        if not waiters:
            return None
        if len(waiters) == 1:
            return waiters[0]
        return _all(waiters)

    return tap


async def _all(waiters: list[Awaitable[None]]) -> None:
    await asyncio.gather(*waiters)
