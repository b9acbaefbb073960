"""``stalwart monitor report|status``: a deployment's drift, quality and alerts over a window.

``report`` writes the self-contained HTML report (``-o``, default ``report.html``) or, with
``--json``, the document itself (to stdout, or to ``-o``); ``status`` prints it as tables.
Both build the document from the database the ``STALWART_*`` settings name
(:func:`stalwart.monitoring.report.build_report`), or read one saved with ``--json``
(``--from-json FILE``: re-render a report, or look at one from another machine).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stalwart.cli.backfill import backfill_command
from stalwart.cli.output import console, err_console, fail, write_output
from stalwart.cli.window import parse_window
from stalwart.config import Settings, load_settings
from stalwart.errors import StalwartError
from stalwart.monitoring.report_document import ReportDocument

__all__ = ["monitor_app"]

monitor_app = typer.Typer(help="Drift, quality and alerts of a deployment: the HTML report and the status table.", no_args_is_help=True)
monitor_app.command("backfill")(backfill_command)

DeploymentOpt = Annotated[str | None, typer.Option("--deployment", "-d", help="the deployment to report on")]
Since = Annotated[str, typer.Option(help="from this time: a duration ago ('24h', '7d') or an ISO time")]
Until = Annotated[str | None, typer.Option(help="to this time (default: now): a duration ago or an ISO time")]
FromJson = Annotated[
    Path | None,
    typer.Option("--from-json", exists=True, dir_okay=False, help="render this saved document (from --json) instead of building one"),
]


@monitor_app.command("report")
def report(
    deployment: DeploymentOpt = None,
    since: Since = "24h",
    until: Until = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="where to write (HTML default: report.html; JSON default: stdout)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report's JSON document instead of HTML")] = False,
    from_json: FromJson = None,
    parity_sample: Annotated[int, typer.Option(
        "--parity-sample", min=0, max=100_000,
        help="recompute this many logged requests' features offline (live parity; needs the project)",
    )] = 0,
    project: Annotated[Path | None, typer.Option(help="project file, for --parity-sample [env STALWART_PROJECT]")] = None,
) -> None:
    """Write the monitoring report: one HTML file that opens without a network."""
    doc = _document(deployment, since, until, from_json, parity_sample=parity_sample, project=project)
    if as_json:
        data = doc.to_json() + b"\n"
        if output is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            write_output(output, data)
            err_console.print(f"wrote {output} ({len(data) / 1024:.0f} KiB)", highlight=False)
        return
    from stalwart.monitoring.report_html import render_html

    try:
        page = render_html(doc).encode()
    except StalwartError as exc:  # matplotlib missing: the message names the extra
        fail(exc.message)
    path = output or Path("report.html")
    write_output(path, page)
    drifted = sum(1 for c in doc.drift.columns if c.drifted)
    firing = sum(1 for a in doc.alerts if a.state == "firing")
    console.print(
        f"wrote [bold]{path}[/] ({len(page) / 1024:.0f} KiB): {drifted} of {len(doc.drift.columns)} features drifted, "
        f"{firing} alert{'s' if firing != 1 else ''} firing",
        highlight=False,
    )


@monitor_app.command("status")
def status(
    deployment: DeploymentOpt = None,
    since: Since = "24h",
    until: Until = None,
    from_json: FromJson = None,
) -> None:
    """Print per-feature drift, quality and alerts as tables."""
    from stalwart.cli.monitor_status import status_view

    console.print(status_view(_document(deployment, since, until, from_json)))


def _document(
    deployment: str | None,
    since: str,
    until: str | None,
    from_json: Path | None,
    *,
    parity_sample: int = 0,
    project: Path | None = None,
) -> ReportDocument:
    """The saved document, or one built from the database for the window."""
    try:
        if from_json is not None:
            doc = ReportDocument.from_json(from_json.read_bytes())
            if deployment is not None and deployment != doc.deployment:
                fail(f"{from_json} is the report of deployment {doc.deployment!r}, not {deployment!r}")
            return doc
        if deployment is None:
            raise typer.BadParameter("give --deployment NAME (or --from-json FILE to render a saved report)", param_hint="--deployment")
        start, end = parse_window(since, until)
        return ReportDocument.from_dict(_build(deployment, start, end, parity_sample, project))
    except StalwartError as exc:
        fail(exc.message)




def _build(deployment: str, since: dt.datetime, until: dt.datetime, parity_sample: int = 0, project: Path | None = None) -> dict[str, object]:
    from stalwart.monitoring.report import build_report
    from stalwart.storage.database import Database

    settings = load_settings(**({"project": project} if project else {}))
    parity = _live_parity(settings, deployment, since, until, parity_sample) if parity_sample else None
    database = Database(settings.resolved_db_url())
    try:
        return build_report(database, deployment, since, until, settings=settings, parity=parity)
    finally:
        database.dispose()


def _live_parity(settings: Settings, deployment: str, since: dt.datetime, until: dt.datetime, sample: int) -> list[dict[str, Any]]:
    """Rows of a live parity check (``features parity-live``) for the report's skew section."""
    from stalwart.features.live_parity import check_live_parity
    from stalwart.project import load_project

    if settings.project is None:
        raise typer.BadParameter("--parity-sample needs the project file: --project or STALWART_PROJECT", param_hint="--project")
    with err_console.status(f"live parity: recomputing {sample} logged requests"):
        found = check_live_parity(load_project(settings.project), settings, deployment, since=since, until=until, sample=sample)
    return [row.to_dict() for row in found.features]
