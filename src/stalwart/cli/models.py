"""``stalwart models register|list|show``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stalwart.cli.output import console, fail
from stalwart.config import load_settings
from stalwart.registry import Registry
from stalwart.sizes import format_bytes

models_app = typer.Typer(help="Register and inspect model versions.", no_args_is_help=True)


def _registry() -> Registry:

    return Registry.open(load_settings())


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            fail(f"--{what} takes KEY=VALUE, got {value!r}")
        pairs[key] = val
    return pairs


@models_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="model name")],
    path: Annotated[Path, typer.Argument(help="artifact file", exists=True, dir_okay=False)],
    flavor: Annotated[str, typer.Option(help="sklearn (.skops), onnx, lightgbm, xgboost")],
    metric: Annotated[list[str], typer.Option(help="KEY=VALUE, repeatable")] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option(help="KEY=VALUE, repeatable")] = [],  # noqa: B006
    description: Annotated[str, typer.Option(help="free text")] = "",
    trust_pickle: Annotated[bool, typer.Option(help="load a pickle/joblib file: only for files you trust")] = False,
    trusted_type: Annotated[list[str], typer.Option(help="a type skops may load, repeatable")] = [],  # noqa: B006
) -> None:
    """Register an artifact file as the next version of NAME."""
    metrics = {}
    for key, value in _pairs(metric, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            fail(f"--metric {key}: {value!r} is not a number")
    mv = _registry().register_file(
        name,
        str(path),
        flavor=flavor,
        metrics=metrics,
        tags=_pairs(tag, "tag"),
        description=description,
        trust_pickle=trust_pickle,
        trusted_types=trusted_type,
    )
    console.print(f"registered [bold]{mv.ref}[/] ({mv.flavor}, sha256 {mv.sha256[:12]}…)")


@models_app.command("list")
def list_models() -> None:
    """Every registered model and its versions, with each version's memory as a server
    last measured it at load (an estimate: the process's growth across the load)."""
    registry = _registry()
    memory = registry.memory.all()
    table = Table("model", "latest", "versions", "memory (last measured)", "registered")
    for summary in registry.models():
        measured = [f"{v}: {format_bytes(memory[(summary.name, v)].bytes)}" for v in summary.versions if (summary.name, v) in memory]
        table.add_row(
            summary.name,
            str(summary.latest_version),
            ", ".join(map(str, summary.versions)),
            ", ".join(measured) or "-",
            _when(summary.created_at),
        )
    console.print(table)


@models_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int | None, typer.Option(help="version (default: latest)")] = None,
) -> None:
    """One version's record: artifact, signature, metrics, tags."""
    registry = _registry()
    mv = registry.get(name, version)
    console.print(f"[bold]{mv.ref}[/]  flavor={mv.flavor}  registered {_when(mv.created_at)}")
    console.print(f"artifact  {mv.artifact_file}  ({mv.artifact_size} bytes)")
    measured = registry.memory.get(mv.name, mv.version)
    if measured is not None:
        console.print(f"memory    {format_bytes(measured.bytes)} (measured at load by {measured.replica}, {_when(measured.measured_at)})")
    console.print(f"sha256    {mv.sha256}")
    if mv.trust:
        console.print(f"[yellow]trust     {mv.trust} (explicitly trusted at registration)[/]")
    if mv.description:
        console.print(f"about     {mv.description}")
    table = Table("", "tensor", "datatype", "shape")
    for spec in mv.signature.inputs:
        table.add_row("input", spec.name, spec.datatype, str(spec.shape))
    for spec in mv.signature.outputs:
        table.add_row("output", spec.name, spec.datatype, str(spec.shape))
    console.print(table)
    for title, values in (("metrics", mv.metrics), ("tags", mv.tags)):
        if values:
            console.print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
