"""Durations: one grammar for every setting that is a span of time.

A feature's window and max age, a deployment's ``last_good``, a cache's TTL and a breaker's
wait all read the same spellings, here and nowhere else. A duration is:

- a number (``int`` or ``float``, never ``bool``): seconds, so ``0.25`` is 250 ms;
- a :class:`datetime.timedelta`;
- a string: a bare number (``"5"``, ``"0.5"``, ``"1e-3"``: seconds), or one or more
  ``<number><unit>`` terms, added up (``"250ms"``, ``"2min"``, ``"1h30m"``, ``"1d 12h"``).
  A number may have a fraction (``"1.5h"``); spaces around terms are ignored.

  =========== ============
  unit        meaning
  =========== ============
  ``us``/µs   microseconds
  ``ms``      milliseconds
  ``s``       seconds
  ``m``/min   minutes
  ``h``       hours
  ``d``       days (24 h)
  ``w``       weeks (7 d)
  =========== ============

Negative values, NaN, infinity, booleans, unknown units and anything else raise
:class:`~stalwart.errors.ConfigError` naming the setting. Zero is a valid duration; a
setting that needs more than nothing says so (``positive=True``: a window, a max age).

Two views of one value: :func:`parse_ns`, exact integer nanoseconds (feature time is int64
nanoseconds on both paths), and :func:`parse_seconds`, float seconds (timeouts, TTLs,
breaker waits). :data:`Seconds` is the pydantic field type of the second, for the
resilience and cache policies.

>>> parse_ns("1h30m", "window") == 90 * 60 * NS
True
>>> parse_seconds("250ms", "timeout"), parse_seconds("2min", "ttl"), parse_seconds("5", "ttl")
(0.25, 120.0, 5.0)
>>> format_duration(parse_ns("36h", "window"))
'36h'
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from fractions import Fraction
from typing import Annotated

from pydantic import BeforeValidator

from stalwart.errors import ConfigError

__all__ = ["NS", "Duration", "Seconds", "epoch_span", "format_duration", "parse_ns", "parse_seconds"]

NS = 1_000_000_000
"""Nanoseconds in a second."""

Duration = str | int | float | dt.timedelta
"""What a duration setting accepts (see the module docstring for the string grammar)."""

_UNIT_NS: dict[str, int] = {
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NS,
    "m": 60 * NS,
    "min": 60 * NS,
    "h": 3_600 * NS,
    "d": 86_400 * NS,
    "w": 7 * 86_400 * NS,
}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_BARE = re.compile(rf"\s*((?:{_NUMBER})(?:[eE][-+]?\d+)?)\s*")
# Longer units first: the alternation takes the first that matches, and "ms"/"min" begin
# with "m".
_TERM = re.compile(rf"\s*({_NUMBER})\s*(us|µs|ms|min|s|m|h|d|w)\s*")
_HINT = "write seconds as a number, or a string such as '250ms', '5s', '2m', '1h30m', '1d' or '2w'"


def _fail(setting: str, value: object, problem: str) -> ConfigError:
    where = f"{setting}: " if setting else ""
    return ConfigError(f"{where}{value!r} {problem}")


def _seconds(value: object, setting: str) -> Fraction:
    """The exact number of seconds ``value`` spells (Fraction: no float rounding between
    the string and the nanoseconds)."""
    if isinstance(value, bool):
        raise _fail(setting, value, f"is not a duration; {_HINT}")
    if isinstance(value, dt.timedelta):
        whole = Fraction(value.days * 86_400 + value.seconds) + Fraction(value.microseconds, 1_000_000)
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise _fail(setting, value, f"is not a finite duration; {_HINT}")
        whole = Fraction(value)
    elif isinstance(value, str):
        whole = _parse_text(value, setting)
    else:
        raise _fail(setting, value, f"is not a duration; {_HINT}")
    if whole < 0:
        raise _fail(setting, value, "is negative; a duration is zero or more")
    return whole


def _parse_text(text: str, setting: str) -> Fraction:
    bare = _BARE.fullmatch(text)
    if bare is not None:
        return Fraction(bare.group(1))
    if text.strip().startswith("-"):
        raise _fail(setting, text, "is negative; a duration is zero or more")
    total = Fraction(0)
    pos, terms = 0, 0
    while pos < len(text):
        term = _TERM.match(text, pos)
        if term is None:
            raise _fail(setting, text, f"is not a duration; {_HINT}")
        total += Fraction(term.group(1)) * _UNIT_NS[term.group(2)] / NS
        pos, terms = term.end(), terms + 1
    if terms == 0:
        raise _fail(setting, text, f"is not a duration; {_HINT}")
    return total


def parse_ns(value: Duration, setting: str, *, positive: bool = True) -> int:
    """``value`` as integer nanoseconds (rounded to the nearest); ``setting`` names it in
    errors. With ``positive`` (the default: feature windows and ages), zero is refused."""
    ns = round(_seconds(value, setting) * NS)
    if positive and ns <= 0:
        raise _fail(setting, value, "must be longer than zero")
    return ns


def parse_seconds(value: object, setting: str = "", *, positive: bool = False) -> float:
    """``value`` as float seconds; ``setting`` names it in errors. With ``positive``, zero
    is refused."""
    seconds = _seconds(value, setting)
    if positive and seconds <= 0:
        raise _fail(setting, value, "must be longer than zero")
    return float(seconds)


def format_duration(ns: int) -> str:
    """The shortest exact spelling of a duration: what FeatureSet versions hash, so the
    same window written ``"1d"``, ``"24h"`` or ``86400`` is the same definition."""
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = _UNIT_NS[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / NS}s"


def _seconds_field(value: object) -> object:
    # pydantic reports a ValueError with the field's location, which names the setting;
    # a ConfigError would escape its error collection and lose that location.
    if value is None:
        return value  # an optional field's None is pydantic's to accept or refuse
    try:
        return parse_seconds(value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None


Seconds = Annotated[float, BeforeValidator(_seconds_field)]
"""A pydantic field of float seconds that accepts every spelling of :func:`parse_seconds`.
Bounds (``gt=0``, ``ge=0``) are the field's own."""


def epoch_span(since: dt.datetime | float, until: dt.datetime | float | None) -> tuple[int, int]:
    """``since`` and ``until`` (aware datetimes or seconds since the epoch; ``until`` None:
    now) as whole seconds, rounded up; ConfigError when they are not times or out of order."""
    lo = _epoch_seconds(since, "since")
    hi = _epoch_seconds(until, "until") if until is not None else time.time()
    if hi < lo:
        raise ConfigError(f"until ({hi}) is before since ({lo}); give since <= until")
    return math.ceil(lo), math.ceil(hi)


def _epoch_seconds(value: dt.datetime | float, name: str) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{name} is a naive datetime; give it a timezone (datetime.now(UTC))")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(f"{name} must be a datetime or seconds since the epoch, not {value!r}")
