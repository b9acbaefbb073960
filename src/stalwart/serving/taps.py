"""Several request taps as one: the data plane calls one :class:`RequestTap`.

>>> compose() is None
True
>>> tap = lambda outcome: None
>>> compose(None, tap) is tap
True

Built once, in ``create_app``: with no tap the data plane builds no
:class:`~stalwart.serving.dataplane.Outcome` at all, and with one it calls that tap
directly, so composing costs nothing until there are two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from stalwart.serving.dataplane import Outcome, RequestTap

__all__ = ["compose"]


def compose(*taps: RequestTap | None) -> RequestTap | None:
    """One tap calling ``taps`` in order (``None`` entries are skipped): None when none is
    left, the tap itself when one is. Order matters: a tap sees what earlier ones set on
    the outcome's :class:`~stalwart.serving.middleware.RequestInfo` (the tracing tap goes
    first, as it may replace the request's trace ids with those of the span it exports).
    What the taps return to wait for (the prediction log's ``sync`` mode) is awaited
    together."""
    present = tuple(tap for tap in taps if tap is not None)
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return _Taps(present)


class _Taps:
    """Calls each tap in turn. A tap must only enqueue (see :class:`RequestTap`), so one
    that raises is a bug: it propagates rather than being hidden from the others' owner."""

    __slots__ = ("_taps",)

    def __init__(self, taps: tuple[RequestTap, ...]) -> None:
        self._taps = taps

    def __call__(self, outcome: Outcome) -> Awaitable[None] | None:
        waiters = [w for w in (tap(outcome) for tap in self._taps) if w is not None]
        if not waiters:
            return None
        if len(waiters) == 1:
            return waiters[0]
        return _all(waiters)


async def _all(waiters: list[Awaitable[None]]) -> None:
    await asyncio.gather(*waiters)
