"""Durations in resilience settings: seconds as a float, or a string such as ``"250ms"``.

Every resilience setting that is a span of time is a :data:`Seconds` field, so a deployment
file can say ``timeout: 250ms`` or ``wait_duration_in_open_state: 10s`` and the code only
ever sees a float number of seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Seconds", "parse_seconds"]

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|min|m|h)?\s*$")


def parse_seconds(value: object) -> object:
    """Turn ``"250ms"``, ``"2s"``, ``"1.5m"`` or a :class:`~datetime.timedelta` into seconds.

    Numbers pass through (they are seconds already); anything else is left for pydantic to
    reject with its own message.

    >>> parse_seconds("250ms"), parse_seconds("2s"), parse_seconds("1m"), parse_seconds(0.5)
    (0.25, 2.0, 60.0, 0.5)
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration; write seconds as a number or a string such as "
                f"'250ms', '2s', '1m'"
            )
        number, unit = match.groups()
        return float(number) * _UNITS[unit or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(parse_seconds)]
"""A span of time in seconds; accepts numbers, ``"250ms"``-style strings and timedeltas."""
