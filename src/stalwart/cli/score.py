"""``stalwart score``: a registered model over a file of events, on any offline engine.

Features point-in-time for every event (numpy, DuckDB or Spark), then the model's own
artifact and validator batch by batch, with a progress bar on stderr; one Parquet file of
outputs, where rows that validation rejected are kept with ``status = "rejected"`` and
their violations (``validation``), and a summary (a table, or ``--json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stalwart.cli.output import console, err_console, fail
from stalwart.cli.schemas import guarded
from stalwart.cli.validate import policy_pairs

__all__ = ["score_command"]


@guarded
def score_command(
    model: Annotated[str, typer.Option("--model", "-m", help="NAME[:VERSION] to score with (default: the latest version)")],
    events: Annotated[Path, typer.Option(help="events: a Parquet file or a directory of them (hive partitions read)", exists=True)],
    output: Annotated[Path, typer.Option("--output", "-o", help="the scores, one Parquet file")],
    engine: Annotated[str, typer.Option(help="numpy (in memory), duckdb (embedded, larger than memory) or spark")] = "duckdb",
    project: Annotated[Path | None, typer.Option(help="project file with the feature definitions [env STALWART_PROJECT]")] = None,
    deployment: Annotated[str | None, typer.Option(help="score as this deployment serves: its features and validation overrides")] = None,
    timestamp: Annotated[str, typer.Option(help="the events' time column")] = "ts",
    carry: Annotated[list[str], typer.Option(help="an event column to keep in the scores (an id), repeatable")] = [],  # noqa: B006
    policy: Annotated[list[str], typer.Option(help="FEATURE=POLICY validation override, repeatable")] = [],  # noqa: B006
    default_policy: Annotated[str | None, typer.Option(help="policy for features without their own")] = None,
    spark_master: Annotated[str, typer.Option(help="Spark master URL for --engine spark")] = "local[2]",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Score events with a registered model, as serving would; rows that fail validation
    are reported in the output, never dropped."""
    from stalwart.config import load_settings
    from stalwart.offline.engine import OfflineEngine
    from stalwart.offline.engines import ENGINES, resolve_engine
    from stalwart.offline.scoring import score_events
    from stalwart.project import load_project
    from stalwart.validation.policy import PolicyOverrides

    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    settings = load_settings(**({"project": project} if project else {}))
    if settings.project is None:
        fail("name the project file with --project or STALWART_PROJECT: it defines the model's features")
    name, _, raw = model.rpartition(":") if ":" in model else (model, "", "")
    if raw and not raw.isdigit():
        fail(f"{model!r}: the version after ':' must be a number, as in fraud:3")
    policies = None
    if policy or default_policy:
        policies = PolicyOverrides.parse({"default": default_policy, "features": policy_pairs(policy)}, source="--policy/--default-policy")
    chosen: str | OfflineEngine = engine
    if engine == "spark":
        from stalwart.offline.spark_engine import SparkEngine, spark_session

        chosen = SparkEngine(spark_session(spark_master))
    chosen = resolve_engine(chosen)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(step: str, done: int, total: int | None) -> None:
            bar.update(task, description=step, completed=done, total=total)

        summary = score_events(
            load_project(settings.project), name or model, events, output,
            version=int(raw) if raw else None, deployment=deployment, engine=chosen, timestamp=timestamp,
            carry=carry, policies=policies, settings=settings, progress=progress,
        )
    if as_json:
        console.out(json.dumps(summary.to_dict(), indent=2))
        return
    table = Table(title=f"scored {summary.model} on {summary.engine} into {summary.output}")
    table.add_column("rows", justify="right")
    table.add_column("scored", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("features (s)", justify="right")
    table.add_column("model (s)", justify="right")
    table.add_row(str(summary.rows), str(summary.scored), str(summary.rejected), f"{summary.features_seconds:.1f}", f"{summary.scoring_seconds:.1f}")
    console.print(table)
    if summary.violations:
        found = Table(title="validation (rows per feature, rule and action)")
        for heading in ("feature", "rule", "action", "rows"):
            found.add_column(heading, justify="right" if heading == "rows" else "left")
        for (feature, rule, action), count in sorted(summary.violations.items()):
            found.add_row(feature, rule, action, str(count), style="red" if action == "rejected" else "")
        console.print(found)
    for name_, mean in summary.output_means.items():
        console.print(f"mean {name_}: {mean:.6g}")
