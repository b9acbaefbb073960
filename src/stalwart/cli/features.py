"""``stalwart features parity``: prove the offline and online paths agree;
``stalwart features parity-live``: recompute logged requests and compare with what was served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stalwart.cli.output import console, err_console, fail

if TYPE_CHECKING:
    from stalwart.features.live_parity import LiveParityReport

features_app = typer.Typer(help="Feature definitions: parity between training and serving, offline and live.", no_args_is_help=True)


@features_app.command("parity")
def parity(
    deployment: Annotated[str, typer.Option(help="the deployment whose features to check")],
    sample: Annotated[int, typer.Option(help="how many (entity, time) pairs to compare", min=1)] = 200,
    project: Annotated[Path | None, typer.Option(help="project file [env STALWART_PROJECT]")] = None,
    rtol: Annotated[float, typer.Option(help="relative tolerance for floats")] = 1e-9,
    atol: Annotated[float, typer.Option(help="absolute tolerance for floats")] = 1e-9,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Compute the deployment's features offline and online for the same entities and
    times; exit 1 when any feature differs."""
    from stalwart.config import load_settings
    from stalwart.features.parity import check_parity
    from stalwart.features.readers import make_reader
    from stalwart.project import load_project
    from stalwart.registry import Registry
    from stalwart.storage import DatabasePool

    settings = load_settings(**({"project": project} if project else {}))
    if settings.project is None:
        fail("name the project file with --project or STALWART_PROJECT")
    loaded = load_project(settings.project)
    spec = loaded.deployment(deployment)
    registry = Registry.open(settings)
    mv = registry.get(spec.model_name, spec.model_version)
    refs = loaded.features_for(spec, mv.ref, mv.training)
    pool = DatabasePool(settings)
    try:
        readers = {}
        for ref in refs:
            source = getattr(getattr(ref, "feature_set", None), "source", None)
            if source is not None and source.name not in readers:
                readers[source.name] = make_reader(source, pool, loaded.root)
        with Progress(TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("parity", total=sample)
            report = check_parity(
                refs, readers, samples=sample, seed=seed, rtol=rtol, atol=atol,
                progress=lambda done: bar.update(task, completed=done),
            )
    finally:
        pool.dispose()
    table = Table(title=f"parity of deployment '{deployment}' ({mv.ref}), {sample} samples, rtol={rtol:g} atol={atol:g}")
    table.add_column("feature")
    table.add_column("compared", justify="right")
    table.add_column("mismatches", justify="right")
    table.add_column("max |diff|", justify="right")
    table.add_column("example (offline vs online)")
    for item in report.features:
        example = item.examples[0] if item.examples else None
        shown = f"{example['entity']}: {example['offline']!r} vs {example['online']!r}" if example else ""
        style = "red" if item.mismatches else ""
        table.add_row(item.name, str(item.compared), str(item.mismatches), f"{item.max_abs_diff:.3g}", shown, style=style)
    console.print(table)
    if not report.ok:
        bad = sum(1 for f in report.features if f.mismatches)
        fail(f"{bad} feature(s) differ between training and serving: the model would see other values in production")
    console.print("[green]parity OK:[/] every feature matches offline and online")


@features_app.command("parity-live")
def parity_live(
    deployment: Annotated[str, typer.Option(help="the deployment whose logged requests to recompute")],
    since: Annotated[str, typer.Option(help="from this time: a duration ago ('24h') or an ISO time")] = "24h",
    until: Annotated[str | None, typer.Option(help="before this time: a duration ago or an ISO time")] = None,
    sample: Annotated[int, typer.Option(help="how many logged requests to recompute", min=1)] = 500,
    project: Annotated[Path | None, typer.Option(help="project file [env STALWART_PROJECT]")] = None,
    rtol: Annotated[float, typer.Option(help="relative tolerance for numbers")] = 1e-6,
    atol: Annotated[float, typer.Option(help="absolute tolerance for numbers")] = 1e-9,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON, for machines")] = False,
) -> None:
    """Recompute a sample of the deployment's logged requests offline, at the same entity
    and instant with the same FeatureSet versions, and compare each feature with what was
    served; exit 1 when any differs."""
    from stalwart.config import load_settings
    from stalwart.errors import StalwartError
    from stalwart.features.live_parity import check_live_parity
    from stalwart.project import load_project

    try:
        settings = load_settings(**({"project": project} if project else {}))
        if settings.project is None:
            fail("name the project file with --project or STALWART_PROJECT")
        loaded = load_project(settings.project)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as bar:
            task = bar.add_task("reading the log", total=None)

            def progress(stage: str, done: int, total: int | None) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            report = check_live_parity(
                loaded, settings, deployment, since=since, until=until, sample=sample, seed=seed,
                rtol=rtol, atol=atol, progress=progress,
            )
    except StalwartError as exc:
        fail(exc.message)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        _print_live(report)
    if not report.ok:
        bad = sum(1 for f in report.features if f.mismatched)
        fail(f"{bad} feature(s) served values that differ from their point-in-time recomputation")
    if not as_json:
        console.print(f"[green]no skew:[/] every compared value of {report.rows} row(s) matches its recomputation")


def _print_live(report: LiveParityReport) -> None:
    table = Table(
        title=(
            f"live parity of '{report.deployment}': {report.sampled} of {report.eligible} logged requests, "
            f"{report.rows} rows, rtol={report.rtol:g} atol={report.atol:g}"
        ),
    )
    for name in ("feature", "set"):
        table.add_column(name)
    for name in ("checked", "mismatched", "rate", "version changed", "skipped"):
        table.add_column(name, justify="right")
    table.add_column("example (served vs recomputed)")
    for item in report.features:
        example = item.examples[0] if item.examples else None
        shown = escape(f"{example['entity']}: {example['served']!r} vs {example['recomputed']!r}") if example else ""
        table.add_row(
            item.feature, item.feature_set, str(item.checked), str(item.mismatched), f"{item.rate:.2%}",
            str(item.version_changed), str(item.skipped), shown, style="red" if item.mismatched else "",
        )
    console.print(table)
    if report.truncated:
        err_console.print(f"the scan stopped after {report.scanned} records: older ones were not sampled", style="yellow")
    if report.unversioned:
        err_console.print(f"{report.unversioned} sampled record(s) were logged without FeatureSet versions and skipped", style="dim")
    if not report.eligible:
        err_console.print("no answered request of this deployment with features was logged in that time", style="yellow")
