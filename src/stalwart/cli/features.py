"""``stalwart features parity``: prove the offline and online paths agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stalwart.cli.output import console, fail

features_app = typer.Typer(help="Feature definitions: parity between training and serving.", no_args_is_help=True)


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
