"""``stalwart monitor backfill DEPLOYMENT``: profiles, drift and accuracy over a past period,
recomputed from the prediction log's Parquet segments and the labels (DuckDB or Spark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stalwart.cli.output import console, err_console, fail, write_output
from stalwart.cli.schemas import guarded
from stalwart.cli.window import parse_window

__all__ = ["backfill_command"]


@guarded
def backfill_command(
    deployment: Annotated[str, typer.Argument(help="the deployment whose log to read")],
    since: Annotated[str, typer.Option(help="from this time: a duration ago ('24h', '7d') or an ISO time")] = "24h",
    until: Annotated[str | None, typer.Option(help="to this time (default: now): a duration ago or an ISO time")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (embedded) or spark")] = "duckdb",
    log_dir: Annotated[Path | None, typer.Option(help="the Parquet segments [env STALWART_PREDICTION_LOG_DIR; default <home>/predictions]")] = None,
    spark_master: Annotated[str, typer.Option(help="Spark master URL for --engine spark")] = "local[2]",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the JSON document here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON document instead of tables")] = False,
) -> None:
    """Recompute a deployment's profiles, drift against the training profile and realised
    accuracy over a past period from the prediction log (after an outage, for a new metric)."""
    from stalwart.config import load_settings
    from stalwart.offline.backfill import backfill
    from stalwart.offline.engine import OfflineEngine

    if engine not in ("duckdb", "spark"):
        fail(f"--engine must be duckdb or spark, not {engine!r}")
    start, end = parse_window(since, until)
    chosen: str | OfflineEngine = engine
    if engine == "spark":
        from stalwart.offline.spark_engine import SparkEngine, spark_session

        chosen = SparkEngine(spark_session(spark_master))
    with err_console.status(f"reading the prediction log on {engine}"):
        report = backfill(load_settings(), deployment, start, end, engine=chosen, log_dir=log_dir)
    document = report.to_dict()
    if output is not None:
        write_output(output, json.dumps(document, indent=2).encode() + b"\n")
    if as_json:
        console.out(json.dumps(document, indent=2))
        return
    table = Table(title=f"{deployment} from {document['since']} to {document['until']}: {report.records} records ({report.engine})")
    for heading in ("variant", "version", "rows", "drifted columns", "drift share", "labelled", "accuracy"):
        table.add_column(heading, justify="left" if heading == "variant" else "right")
    for window in report.versions:
        drift = window.drift
        drifted = ", ".join(c.column for c in drift.columns if c.drifted) if drift is not None else "no training profile"
        table.add_row(
            window.variant, f"{window.model}:{window.version}", str(window.rows), drifted or "none",
            f"{drift.share:.0%}" if drift is not None else "", str(window.labelled),
            f"{window.accuracy:.3f}" if window.accuracy is not None else "",
        )
    console.print(table)
