"""The ``--since``/``--until`` window the reporting commands take, read one way for all."""

from __future__ import annotations

import datetime as dt
import time

import typer

from stalwart.durations import NS
from stalwart.errors import ConfigError
from stalwart.monitoring.prediction_reads import parse_time

__all__ = ["parse_window"]


def parse_window(since: str, until: str | None) -> tuple[dt.datetime, dt.datetime]:
    """``since`` and ``until`` (a duration ago, ``24h``, or an ISO time; ``until`` None:
    now) as UTC datetimes; a bad or empty window is a usage error naming the option."""
    now = time.time_ns()
    start = _instant(since, "--since", now)
    end = now if until is None else _instant(until, "--until", now)
    if end <= start:
        raise typer.BadParameter(f"the window is empty: --until ({_iso(end)}) is not after --since ({_iso(start)})")
    return _datetime(start), _datetime(end)


def _instant(value: str, what: str, now: int) -> int:
    try:
        ns = parse_time(value, what, now_ns=now)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from None
    if ns is None:  # parse_time gives None only for None
        raise typer.BadParameter(f"{what}: give a duration ago or an ISO time")
    return ns


def _datetime(ns: int) -> dt.datetime:
    seconds, rest = divmod(ns, NS)
    return dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=rest // 1_000)


def _iso(ns: int) -> str:
    return _datetime(ns).isoformat().replace("+00:00", "Z")
