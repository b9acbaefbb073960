"""``stalwart shadow report NAME``: how each shadow of a deployment compares with the
answers its clients got, over a window.

The report is built from the ``shadow_pairs`` rows every replica wrote (the database the
``STALWART_*`` settings name; :func:`stalwart.rollout.shadow_report.build_shadow_report`)
and printed as tables; ``-o FILE`` also writes the HTML page with plots, ``--json`` prints
the document instead (or writes it to ``-o``).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from stalwart.cli.output import console, err_console, fail, write_output
from stalwart.cli.window import parse_window
from stalwart.config import load_settings
from stalwart.errors import StalwartError
from stalwart.monitoring.report_markup import num as _num
from stalwart.monitoring.report_markup import p_value as _p
from stalwart.monitoring.report_markup import pct as _pct

__all__ = ["shadow_app", "shadow_view"]

shadow_app = typer.Typer(help="Shadow deployments: each shadow's answers against the ones clients got.", no_args_is_help=True)

_MAX_CLASSES_SHOWN = 12  # the terminal's confusion table; the HTML and JSON have them all


@shadow_app.command("report")
def report(
    name: Annotated[str, typer.Argument(help="the deployment")],
    shadow: Annotated[str | None, typer.Option("--shadow", "-s", help="only this shadow (default: every one)")] = None,
    since: Annotated[str, typer.Option(help="from this time: a duration ago ('1h', '7d') or an ISO time")] = "1h",
    until: Annotated[str | None, typer.Option(help="to this time (default: now): a duration ago or an ISO time")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the HTML page here (with --json: the document)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report's JSON document instead of tables")] = False,
) -> None:
    """Compare each shadow with the answers clients got: agreement, confusion, score
    differences, McNemar and paired t-tests, latency side by side, errors."""
    import msgspec

    start, end = parse_window(since, until)
    doc = _build(name, shadow, start, end)
    if as_json:
        data = msgspec.json.encode(doc) + b"\n"
        if output is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            write_output(output, data)
            err_console.print(f"wrote {output} ({len(data) / 1024:.0f} KiB)", highlight=False)
        return
    console.print(shadow_view(doc))
    if output is not None:
        from stalwart.rollout.shadow_report import render_shadow_html

        try:
            page = render_shadow_html(doc).encode()
        except StalwartError as exc:  # matplotlib missing: the message names the extra
            fail(exc.message)
        write_output(output, page)
        console.print(f"wrote [bold]{output}[/] ({len(page) / 1024:.0f} KiB)", highlight=False)


def shadow_view(doc: Mapping[str, Any]) -> RenderableType:
    """The report document as rich tables, one group per shadow."""
    title = Text.assemble(("Shadow report ", "bold"), (str(doc["deployment"]), "bold cyan"), f"  {doc['since']} → {doc['until']}")
    parts: list[RenderableType] = [title]
    if not doc["shadows"]:
        only = f" named {doc['shadow']!r}" if doc.get("shadow") else ""
        parts.append(Text(f"No shadow{only} answered a request of this deployment in this window.", style="yellow"))
    for shadow in doc["shadows"]:
        parts.extend(_shadow_tables(shadow))
    return Group(*parts)


# --- internals ---------------------------------------------------------------------------


def _shadow_tables(shadow: Mapping[str, Any]) -> list[RenderableType]:
    summary = shadow["report"]["summary"]
    classes, scores, errors, latency = summary["classes"], summary["scores"], summary["errors"], summary["latency"]
    diff = scores["difference"]
    models = shadow["models"]
    table = Table(title=f"shadow {shadow['name']}", title_justify="left", show_header=False, title_style="bold")
    table.add_column("what", style="dim")
    table.add_column("value")
    table.add_row("compared", f"{_refs(models.get('primary', {}))} (clients)  vs  {_refs(models.get('shadow', {}))} (shadow)")
    table.add_row("pairs", f"{summary['pairs']:,} ({summary['answered']:,} answered by both)")
    table.add_row("agreement", f"{_pct(classes['agreement'])} of {classes['labelled']:,} pairs with a class")
    if diff["n"]:
        table.add_row(
            "score difference",
            f"shadow minus client: mean {_num(diff['mean'])} (95% CI {_num(diff['ci_low'])} to {_num(diff['ci_high'])}), "
            f"paired t {_num(diff['t'])}, p {_p(diff['p_value'])}, n {diff['n']:,}",
        )
        q = diff["quantiles"]
        table.add_row("differences", "  ".join(f"{k} {_num(v)}" for k, v in q.items() if k.startswith("p")))
    primary, own = latency["primary"], latency["shadow"]
    table.add_row(
        "latency p50 / p99",
        f"client {_ms(primary['p50'])} / {_ms(primary['p99'])} ms   shadow {_ms(own['p50'])} / {_ms(own['p99'])} ms",
    )
    test = errors["test"]
    table.add_row(
        "errors",
        f"client {errors['primary']:,} ({_pct(errors['primary_rate'])})  shadow {errors['shadow']:,} "
        f"({_pct(errors['shadow_rate'])})  both {errors['both']:,}; McNemar p {_p(test['p_value'])}",
    )
    out: list[RenderableType] = [table]
    labels: list[str] = classes["labels"]
    if classes["labelled"]:
        shown = labels[:_MAX_CLASSES_SHOWN]
        confusion = Table(title="confusion (rows: client, columns: shadow)", title_justify="left")
        confusion.add_column("client \\ shadow")
        for label in shown:
            confusion.add_column(label, justify="right")
        for label, row in zip(shown, classes["confusion"], strict=False):
            confusion.add_row(label, *(f"{n:,}" for n in row[: len(shown)]))
        out.append(confusion)
        if len(labels) > len(shown):
            out.append(Text(f"{len(labels) - len(shown)} more classes in the HTML and JSON reports", style="dim"))
        tests = Table(title="McNemar per class (Bonferroni)", title_justify="left")
        for column in ("class", "only client", "only shadow", "p", "p adjusted"):
            tests.add_column(column, justify="left" if column == "class" else "right")
        for t in classes["tests"][:_MAX_CLASSES_SHOWN]:
            tests.add_row(t["class"], f"{t['b']:,}", f"{t['c']:,}", _p(t["p_value"]), _p(t["p_adjusted"]))
        out.append(tests)
    return out


def _refs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{ref} ({n:,})" for ref, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "unknown"


def _build(name: str, shadow: str | None, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    from stalwart.rollout.shadow_report import build_shadow_report
    from stalwart.storage.database import Database

    try:
        database = Database(load_settings().resolved_db_url())
        try:
            return build_shadow_report(database, name, since=start, until=end, shadow=shadow)
        finally:
            database.dispose()
    except StalwartError as exc:
        fail(exc.message)






def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else _num(seconds * 1000)
