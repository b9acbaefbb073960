"""Request headers that steer the pipeline: the deadline and the priority.

- ``X-Request-Timeout``: milliseconds the client will wait. Every stage respects it (guards
  cut their time limits to it), and a request already past it is not started.
- ``X-Stalwart-Priority``: ``low``, ``normal`` (the default) or ``high``; load shedding
  turns cheaper traffic away first.
"""

from __future__ import annotations

import time

from starlette.datastructures import Headers

from stalwart.errors import RequestError
from stalwart.resilience import Priority, parse_priority

__all__ = ["deadline_of", "priority_of"]

_MAX_TIMEOUT_MS = 600_000


def deadline_of(headers: Headers) -> float | None:
    """The request's deadline on the ``time.monotonic()`` clock, or None."""
    raw = headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 < ms <= _MAX_TIMEOUT_MS:
        raise RequestError(
            f"header X-Request-Timeout: {raw[:40]!r} is not a number of milliseconds between 1 and {_MAX_TIMEOUT_MS}",
            field="X-Request-Timeout",
        )
    return time.monotonic() + ms / 1000


def priority_of(headers: Headers) -> Priority:
    raw = headers.get("x-stalwart-priority")
    if raw is None:
        return Priority.NORMAL
    return parse_priority(raw)
