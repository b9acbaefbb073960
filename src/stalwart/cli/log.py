"""``stalwart log query|tail``: the prediction log from a terminal.

Both read the store the ``STALWART_*`` settings configure (the server's own), with the
filters of :func:`stalwart.read_predictions`; ``--json`` prints each record's JSON, one a
line, as stored.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from stalwart.cli.output import console, err_console, fail
from stalwart.config import load_settings
from stalwart.durations import NS
from stalwart.errors import ConfigError, PredictionLogError, SinkUnavailable
from stalwart.monitoring.logs import configure_logging
from stalwart.monitoring.prediction_reads import build_query, reading_store
from stalwart.monitoring.records import PredictionRecord, encode_record
from stalwart.monitoring.sinks import PredictionStore, Query

__all__ = ["log_app"]

log_app = typer.Typer(help="Read the prediction log: one record per request.", no_args_is_help=True)

POLL_SECONDS = 0.5  # how often --follow asks for newer records
# Records reach the store after their request is answered, so a slow request lands later
# than faster ones that arrived after it: --follow looks this far back for ones it missed.
_LOOKBACK_NS = 30 * NS
_FOLLOW_LIMIT = 1_000  # records per poll (at higher rates, the newest of them)

Deployment = Annotated[str | None, typer.Option(help="only this deployment's requests")]
Model = Annotated[str | None, typer.Option(help="only this model's requests")]
Version = Annotated[int | None, typer.Option(help="only this model version (with --model)")]
Status = Annotated[int | None, typer.Option(help="only this HTTP status, e.g. 422")]
Errors = Annotated[bool, typer.Option("--errors", help="only failed requests (status 400 and above)")]
Degraded = Annotated[bool | None, typer.Option("--degraded/--no-degraded", help="only degraded answers, or only the others")]
Json = Annotated[bool, typer.Option("--json", help="each record's JSON, one a line")]


@log_app.command("query")
def query(
    deployment: Deployment = None,
    model: Model = None,
    version: Version = None,
    status: Status = None,
    errors: Errors = False,
    degraded: Degraded = None,
    since: Annotated[str | None, typer.Option(help="from this time: a duration ago ('1h', '15m') or an ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="before this time: a duration ago or an ISO time")] = None,
    limit: Annotated[int, typer.Option(help="at most this many records, newest first")] = 100,
    json_lines: Json = False,
) -> None:
    """Records matching every filter given, newest first."""
    with _store() as store:
        filters = _filters(deployment, model, version, status, errors, degraded)
        q = _query(filters, since=since, until=until, limit=limit)
        records = store.query(q)
    if json_lines:
        for record in records:
            _print_json(record)
        return
    if not records:
        err_console.print("no records match", style="dim")
        return
    table = Table("time (UTC)", "request id", "entrypoint", "deployment", "model", "status", "ms", "degraded", "error")
    for record in records:
        table.add_row(
            _time(record.time_ns), escape(record.request_id), record.entrypoint, escape(record.deployment or ""),
            escape(_model(record)), _status(record.status), f"{record.latency_ms:.1f}",
            escape(record.degraded or ""), escape(record.error or ""),
        )
    console.print(table)


@log_app.command("tail")
def tail(
    lines: Annotated[int, typer.Option("--lines", "-n", help="how many of the newest records to show")] = 10,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new records until Ctrl-C")] = False,
    deployment: Deployment = None,
    model: Model = None,
    version: Version = None,
    status: Status = None,
    errors: Errors = False,
    degraded: Degraded = None,
    json_lines: Json = False,
) -> None:
    """The newest records, oldest of them first; with --follow, new ones as they arrive."""
    filters = _filters(deployment, model, version, status, errors, degraded)
    with _store() as store:
        latest = store.query(_query(filters, limit=lines)) if lines > 0 else []
        for record in reversed(latest):
            _print_line(record, json_lines)
        if not follow:
            return
        try:
            _follow(store, filters, latest, json_lines)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a follow ends: not an error


def _follow(store: PredictionStore, filters: dict[str, Any], shown: list[PredictionRecord], json_lines: bool) -> None:
    """Poll for records not printed yet, every POLL_SECONDS, until interrupted."""
    newest = max((r.time_ns for r in shown), default=time.time_ns())
    # Everything already in the window counts as seen: only what arrives from now on prints.
    seen = {r.request_id: r.time_ns for r in store.query(_query(filters, since=newest - _LOOKBACK_NS, limit=_FOLLOW_LIMIT))}
    seen.update((r.request_id, r.time_ns) for r in shown)
    failing = False
    while True:
        time.sleep(POLL_SECONDS)
        try:
            records = store.query(_query(filters, since=newest - _LOOKBACK_NS, limit=_FOLLOW_LIMIT))
        except SinkUnavailable as exc:
            if not failing:  # once per outage; keep polling until the store is back
                err_console.print(f"[yellow]warning:[/] {escape(exc.message)}; retrying", highlight=False)
            failing = True
            continue
        failing = False
        for record in reversed(records):
            if record.request_id in seen:
                continue
            _print_line(record, json_lines)
            seen[record.request_id] = record.time_ns
            newest = max(newest, record.time_ns)
        horizon = newest - _LOOKBACK_NS
        seen = {rid: t for rid, t in seen.items() if t >= horizon}


@contextmanager
def _store() -> Iterator[PredictionStore]:
    """The configured log's store, or a clear error (off, unreadable, unreachable)."""
    try:
        settings = load_settings()
        # The store logs why it failed (the database, password hidden): on stderr, so
        # that --json output stays clean for a pipe.
        configure_logging(settings.log_format, settings.log_level, stream=sys.stderr)
        with reading_store(settings) as store:
            yield store
    except (ConfigError, PredictionLogError) as exc:
        fail(exc.message)


def _filters(deployment: str | None, model: str | None, version: int | None, status: int | None, errors: bool, degraded: bool | None) -> dict[str, Any]:
    return {"deployment": deployment, "model": model, "version": version, "status": status, "errors_only": errors, "degraded": degraded}


def _query(filters: dict[str, Any], *, since: str | int | None = None, until: str | None = None, limit: int) -> Query:
    try:
        return build_query(since=since, until=until, limit=limit, **filters)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from None


def _print_json(record: PredictionRecord) -> None:
    typer.echo(encode_record(record).decode())


def _print_line(record: PredictionRecord, json_lines: bool) -> None:
    if json_lines:
        _print_json(record)
        return
    parts = [
        f"[dim]{_time(record.time_ns)}[/]", escape(record.request_id), record.entrypoint,
        escape(record.deployment or "-"), escape(_model(record) or "-"), _status(record.status),
        f"{record.latency_ms:.1f} ms",
    ]
    if record.degraded:
        parts.append(f"[yellow]degraded: {escape(record.degraded)}[/]")
    if record.error:
        parts.append(f"[red]{escape(record.error)}[/]")
    console.print("  ".join(parts), highlight=False, soft_wrap=True)


def _time(ns: int) -> str:
    seconds, rest = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def _model(record: PredictionRecord) -> str:
    if record.model is None:
        return ""
    return record.model if record.version is None else f"{record.model}:{record.version}"


def _status(status: int) -> str:
    return f"[red]{status}[/]" if status >= 500 else f"[yellow]{status}[/]" if status >= 400 else str(status)
