"""``stalwart schema export|attach|list|activate|infer``: a model version's input schema.

The edit loop::

    stalwart schema export churn:3 -o churn.yaml      # the active schema, as YAML
    $EDITOR churn.yaml                                # widen a range, add a category, set a policy
    stalwart schema attach churn:3 churn.yaml         # checked, stored as a new revision, active
    stalwart schema list churn:3                      # every revision; which one serves
    stalwart schema activate churn:3 1                # back to the inferred one
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, ParamSpec

import typer
from rich.table import Table

from stalwart.cli.output import console, fail
from stalwart.config import load_settings
from stalwart.errors import StalwartError
from stalwart.registry import Registry

if TYPE_CHECKING:
    from stalwart.validation.schema import Policy, Schema

__all__ = ["guarded", "open_registry", "parse_ref", "schema_app"]

P = ParamSpec("P")

schema_app = typer.Typer(help="Export, edit, attach and choose a model version's input schema.", no_args_is_help=True)

Format = Literal["yaml", "json"]


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Turn a Stalwart error into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except StalwartError as exc:
            fail(exc.message)

    return run


def open_registry() -> Registry:
    return Registry.open(load_settings())


def parse_ref(registry: Registry, ref: str) -> tuple[str, int]:
    """``NAME[:VERSION]`` as a name and a version number (the latest when omitted)."""
    name, sep, raw = ref.rpartition(":")
    if not sep:
        return ref, registry.get(ref).version
    if not raw.isdigit():
        fail(f"{ref!r}: the version after ':' must be a number, as in churn:3")
    return name, registry.get(name, int(raw)).version


def render(schema: Schema, fmt: Format, header: str | None = None) -> str:
    return schema.to_json() + "\n" if fmt == "json" else schema.to_yaml(header)


@schema_app.command("export")
@guarded
def export(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] (default: the latest version)")],
    revision: Annotated[int | None, typer.Option(help="revision (default: the active one)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None,
) -> None:
    """Print (or write) a schema revision, ready to edit."""
    chosen = _format(fmt, output)
    registry = open_registry()
    try:
        name, version = parse_ref(registry, ref)
        rev = registry.schemas.get(name, version, revision)
    finally:
        registry.db.dispose()
    state = "active" if rev.active else "not active"
    header = (
        f"Input schema of model {rev.ref}, revision {rev.revision} ({rev.source}, {state}).\n"
        f"Edit ranges (min/max, margin), categories, nullable and policy (reject, impute, clip,\n"
        f"flag), then: stalwart schema attach {rev.ref} FILE"
    )
    text = render(rev.schema, chosen, header)
    if output is None:
        console.out(text, end="", highlight=False)
        return
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote revision {rev.revision} of {rev.ref}'s schema to {output}")


@schema_app.command("attach")
@guarded
def attach(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] (default: the latest version)")],
    file: Annotated[Path, typer.Argument(help="schema file (.yaml, .yml or .json)", exists=True, dir_okay=False)],
    note: Annotated[str, typer.Option(help="why it changed, kept with the revision")] = "",
) -> None:
    """Check an edited schema file and make it the version's active schema."""
    from stalwart.validation.schema import Schema

    schema = Schema.from_file(file)
    registry = open_registry()
    try:
        name, version = parse_ref(registry, ref)
        rev = registry.schemas.attach(name, version, schema, note=note or f"attached from {file.name}")
    finally:
        registry.db.dispose()
    console.print(f"attached revision {rev.revision} to {rev.ref}; it is now the active schema")


@schema_app.command("list")
@guarded
def list_revisions(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] (default: the latest version)")],
) -> None:
    """Every schema revision of a version, and which one serves."""
    registry = open_registry()
    try:
        name, version = parse_ref(registry, ref)
        revisions = registry.schemas.revisions(name, version)
    finally:
        registry.db.dispose()
    if not revisions:
        console.print(f"model {name}:{version} has no input schema; attach one with 'stalwart schema attach'")
        return
    table = Table("revision", "source", "serves", "features", "default policy", "created", "note")
    for rev in revisions:
        table.add_row(
            str(rev.revision),
            rev.source,
            "[bold green]active[/]" if rev.active else "",
            str(len(rev.schema.features)),
            rev.schema.default_policy,
            _when(rev.created_at),
            rev.note,
        )
    console.print(table)


@schema_app.command("activate")
@guarded
def activate(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] (default: the latest version)")],
    revision: Annotated[int, typer.Argument(help="the revision that should serve")],
) -> None:
    """Make an earlier (or later) revision the one that serves."""
    registry = open_registry()
    try:
        name, version = parse_ref(registry, ref)
        rev = registry.schemas.activate(name, version, revision)
    finally:
        registry.db.dispose()
    console.print(f"revision {rev.revision} ({rev.source}) of {rev.ref}'s schema is now active")


@schema_app.command("infer")
@guarded
def infer(
    data: Annotated[Path, typer.Argument(help="training data: .csv or .parquet", exists=True, dir_okay=False)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
    categorical_max: Annotated[int, typer.Option(help="most distinct values a categorical string feature has")] = 50,
    margin: Annotated[float, typer.Option(help="share of each range's width allowed beyond it")] = 0.1,
    default_policy: Annotated[str, typer.Option(help="reject, impute, clip or flag")] = "reject",
    chunk_rows: Annotated[int, typer.Option(help="rows read at a time")] = 100_000,
) -> None:
    """Learn a schema from a data file (to attach to a model registered without one)."""
    from stalwart.cli.datafiles import progress_bar, read_chunks
    from stalwart.monitoring.profiles import Profile
    from stalwart.validation.schema import POLICIES, infer_schema

    chosen = _format(fmt, output)
    if default_policy not in POLICIES:
        fail(f"--default-policy must be one of {', '.join(POLICIES)}, got {default_policy!r}")
    policy: Policy = default_policy
    profile = Profile()
    with progress_bar() as progress:
        for frame, done, total in read_chunks(data, chunk_rows):
            profile.update(frame)
            progress.report(done, total)
    schema = infer_schema(
        profile, categorical_max_distinct=categorical_max, margin=margin, default_policy=policy
    )
    header = f"Input schema inferred from {data.name} ({profile.rows} rows). Attach it with:\nstalwart schema attach NAME:VERSION FILE"
    text = render(schema, chosen, header)
    if output is None:
        console.out(text, end="", highlight=False)
        return
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote a schema of {len(schema.features)} features ({profile.rows} rows) to {output}")


def _format(fmt: str, output: Path | None) -> Format:
    if fmt not in ("yaml", "json"):
        fail(f"--format must be yaml or json, got {fmt!r}")
    if output is not None and output.suffix.lower() == ".json" and fmt == "yaml":
        return "json"
    return "json" if fmt == "json" else "yaml"


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
