"""``stalwart audit log|verify``: who changed what, and whether the records were tampered with.

::

    stalwart audit log --actor alice --since 7d        # newest first
    stalwart audit log --subject churn --json          # every event about any churn version
    stalwart audit verify                              # exit 0 intact, 1 tampered, 2 unchecked

``verify`` recomputes the audit log's hash chain and every prediction-log chain of the
configured store (``STALWART_PREDICTION_LOG``), prints one row per chain, and names the
first record that was changed, removed or reordered.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar

import typer
from rich.table import Table

from stalwart.cli.output import console, err_console, fail
from stalwart.cli.schemas import guarded, open_registry
from stalwart.config import Settings, load_settings
from stalwart.durations import parse_seconds
from stalwart.errors import ConfigError, StalwartError

if TYPE_CHECKING:
    from stalwart.monitoring.sinks import PredictionStore

__all__ = ["audit_app"]

T = TypeVar("T")

audit_app = typer.Typer(help="Read the control plane's audit log and verify every hash chain.", no_args_is_help=True)

# Exit statuses of `verify`: 1 means a record was tampered with; 2 means something could
# not be checked at all (a store that cannot be read), which is not the same as intact.
TAMPERED = 1
UNCHECKED = 2


@audit_app.command("log")
@guarded
def log(
    action: Annotated[str | None, typer.Option(help="only this action, e.g. schema.attach")] = None,
    subject: Annotated[str | None, typer.Option(help="only this subject; a model name matches its versions")] = None,
    actor: Annotated[str | None, typer.Option(help="only events by this actor (a token's name, or user@host)")] = None,
    since: Annotated[str | None, typer.Option(help="only events this recent (1h, 7d) or after a date (2025-01-31[T12:00])")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many events")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (one array of events)")] = False,
) -> None:
    """Print audit events, newest first."""
    from stalwart.registry.audit import query_events

    after = _since(since) if since is not None else None
    registry = open_registry()
    try:
        events = query_events(registry.db, action=action, subject=subject, actor=actor, since=after, limit=limit)
    finally:
        registry.db.dispose()
    if as_json:
        console.out(json.dumps([event.as_dict() for event in events], indent=2), highlight=False)
        return
    if not events:
        console.print("no audit events match")
        return
    table = Table(title="audit log (newest first)")
    for column in ("id", "at (UTC)", "actor", "action", "subject", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(
            str(event.id), _time(event.at), event.actor, event.action, event.subject,
            json.dumps(event.detail, sort_keys=True, separators=(",", ":")),
        )
    console.print(table)


@dataclass(frozen=True, slots=True)
class _Row:
    chain: str
    records: int | None
    status: str  # "intact", "broken", "unchecked", "off"
    note: str = ""


@audit_app.command("verify")
def verify() -> None:
    """Recompute the audit log's chain and every prediction-log chain."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(exc.message)
    rows = [_verify_audit(settings), *_verify_predictions(settings)]
    table = Table(title="hash chains")
    for column in ("chain", "records", "status", ""):
        table.add_column(column, overflow="fold")
    colour = {"intact": "green", "broken": "bold red", "unchecked": "yellow", "off": "dim"}
    for row in rows:
        records = "-" if row.records is None else f"{row.records:,}"
        table.add_row(row.chain, records, f"[{colour[row.status]}]{row.status}[/]", row.note)
    console.print(table)
    broken = [row for row in rows if row.status == "broken"]
    if broken:
        for row in broken:
            err_console.print(f"[bold red]tampered:[/] {row.chain}: {row.note}", highlight=False)
        raise typer.Exit(TAMPERED)
    if any(row.status == "unchecked" for row in rows):
        err_console.print("[yellow]not every chain could be checked[/]; see the table", highlight=False)
        raise typer.Exit(UNCHECKED)


def _verify_audit(settings: Settings) -> _Row:
    from stalwart.registry import Registry
    from stalwart.registry.audit import check_audit

    try:
        registry = Registry.open(settings)
    except StalwartError as exc:
        return _Row("audit log", None, "unchecked", exc.message)
    try:
        found = check_audit(registry.db)
    except StalwartError as exc:
        return _Row("audit log", None, "unchecked", exc.message)
    finally:
        registry.db.dispose()
    if found.broken is not None:
        return _Row("audit log", found.events, "broken", found.broken.describe())
    head = f"head {found.head}" if found.head is not None else "empty"
    return _Row("audit log", found.events, "intact", head)


def _verify_predictions(settings: Settings) -> Iterator[_Row]:
    from stalwart.monitoring.sinks import open_store

    label = f"prediction log ({settings.prediction_log})"
    try:
        store = open_store(settings)
    except StalwartError as exc:
        yield _Row(label, None, "unchecked", f"its store cannot be opened: {exc.message}")
        return
    if store is None:
        note = "not recorded" if settings.prediction_log == "off" else "kept elsewhere; nothing here to read back"
        yield _Row(label, None, "off", note)
        return
    try:
        yield from _verify_store(store, label)
    finally:
        store.close()


def _verify_store(store: PredictionStore, label: str) -> Iterator[_Row]:
    from stalwart.monitoring.records import PredictionRecord, verify_chain

    try:
        names = store.chains()
    except StalwartError as exc:
        yield _Row(label, None, "unchecked", f"its chains cannot be listed: {exc.message}")
        return
    if not names:
        yield _Row(label, 0, "intact", "no records yet")
    for name in names:
        counted = _Counted[PredictionRecord]()
        try:
            brk = verify_chain(counted.over(store.chain(name)))
        except StalwartError as exc:
            yield _Row(f"predictions {name}", counted.seen, "unchecked", f"cannot be read: {exc.message}")
            continue
        if brk is not None:
            yield _Row(f"predictions {name}", counted.seen, "broken", brk.describe())
        else:
            yield _Row(f"predictions {name}", counted.seen, "intact")


class _Counted(Generic[T]):
    """Counts the items that pass through (verification stops at the first break)."""

    def __init__(self) -> None:
        self.seen = 0

    def over(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            self.seen += 1
            yield item


def _since(text: str) -> float:
    """Seconds since the epoch from a duration back from now (``7d``) or a date/time
    (``2025-01-31``, ``2025-01-31T12:00``, UTC unless it says otherwise)."""
    try:
        return time.time() - parse_seconds(text, "--since", positive=True)
    except ConfigError:
        pass  # not a duration; maybe a date
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: give a duration back from now (1h, 7d) or a date (2025-01-31[T12:00])")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
