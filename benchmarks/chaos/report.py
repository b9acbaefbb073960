"""The chaos run's report: a plain-text table for the terminal, the JSON document, and one
self-contained HTML page with the plots (matplotlib, the ``report`` extra, through the
monitoring report's own figure and markup helpers)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, markdown_table
from stalwart.monitoring import report_markup as markup
from stalwart.monitoring.report_figures import CYCLE, render_svg

__all__ = ["RESULTS", "curve_table", "fault_table", "soak_html", "write"]

_FAULT_HEADER = ["fault", "yield", "harvest", "score err", "p50 ms", "p99 ms", "5xx", "of which shed", "no answer", "records lost (late)", "recovery s", "ladder steps", "note"]
_CURVE_HEADER = ["step", "yield", "harvest", "score err", "p50 ms", "p99 ms", "5xx", "of which shed", "ladder steps"]


def _pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value * 100:.1f} %"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _records(r: Mapping[str, Any]) -> str:
    return "—" if r["records_lost"] is None else f"{r['records_lost']} ({r.get('records_late') or 0})"


def _steps(degraded: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in degraded.items()) or "none"


def fault_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The faults, one row each, as Markdown."""
    return markdown_table(_FAULT_HEADER, [
        [
            r["name"], _pct(r["yield"]), _pct(r["harvest"]), _num(r["score_error"], 3), _num(r["p50_ms"]),
            _num(r["p99_ms"]), str(r["errors_5xx"]), str(r["shed"]), str(r["no_answer"]),
            _records(r),
            "not within the run" if r["recovery_s"] is None else _num(r["recovery_s"]),
            _steps(r["degraded"]), r["note"],
        ]
        for r in rows
    ])


def curve_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The degradation curve, one row per cumulative step, as Markdown."""
    return markdown_table(_CURVE_HEADER, [
        [
            r["name"], _pct(r["yield"]), _pct(r["harvest"]), _num(r["score_error"], 3), _num(r["p50_ms"]),
            _num(r["p99_ms"]), str(r["errors_5xx"]), str(r["shed"]), _steps(r["degraded"]),
        ]
        for r in rows
    ])


def write(document: Mapping[str, Any], stem: str = "chaos") -> tuple[Path, Path, Path]:
    """``document`` as ``<stem>-<time>.json``, ``.md`` and ``.html`` in benchmarks/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = RESULTS / f"{stem}-{stamp}"
    json_path, md_path, html_path = base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".html")
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path.write_text(markdown(document))
    html_path.write_text(html(document))
    return json_path, md_path, html_path


def markdown(document: Mapping[str, Any]) -> str:
    parts = [f"# Chaos run, {document['started']}\n", "\n".join(f"- {line}" for line in document["conditions"]), ""]
    if document.get("faults"):
        parts += ["## Faults, one at a time\n", fault_table(document["faults"]), ""]
    if document.get("pending"):
        parts += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in document["pending"].items()), ""]
    if document.get("curve"):
        parts += ["## Degradation curve (cumulative faults)\n", curve_table(document["curve"]["steps"]), ""]
        parts += [f"Records lost over the whole curve: {document['curve']['records_lost']} (late: {document['curve']['records_late']})", ""]
    return "\n".join(parts) + "\n"


def html(document: Mapping[str, Any]) -> str:
    body = [f"<h1>Chaos run</h1><p>{markup.escape(document['started'])}</p>"]
    body.append("<ul>" + "".join(f"<li>{markup.escape(c)}</li>" for c in document["conditions"]) + "</ul>")
    if document.get("faults"):
        faults = document["faults"]
        body.append("<h2>Faults, one at a time</h2>")
        body.append(markup.figure(_fault_plot(faults), "faults", "Yield and harvest while each fault lasted (bars), p99 latency (dots, right axis)"))
        body.append(_html_table(_FAULT_HEADER, [[
            r["name"], _pct(r["yield"]), _pct(r["harvest"]), _num(r["score_error"], 3), _num(r["p50_ms"]), _num(r["p99_ms"]),
            str(r["errors_5xx"]), str(r["shed"]), str(r["no_answer"]), _records(r),
            "not within the run" if r["recovery_s"] is None else _num(r["recovery_s"]), _steps(r["degraded"]), r["note"],
        ] for r in faults]))
    if document.get("curve"):
        steps = document["curve"]["steps"]
        body.append("<h2>Degradation curve</h2>")
        body.append(markup.figure(_curve_plot(steps), "curve", "Yield and harvest as faults accumulate"))
        body.append(_html_table(_CURVE_HEADER, [[
            r["name"], _pct(r["yield"]), _pct(r["harvest"]), _num(r["score_error"], 3), _num(r["p50_ms"]), _num(r["p99_ms"]),
            str(r["errors_5xx"]), str(r["shed"]), _steps(r["degraded"]),
        ] for r in steps]))
        body.append(f"<p>Records lost over the whole curve: {markup.escape(document['curve']['records_lost'])} (late: {markup.escape(document['curve']['records_late'])})</p>")
    return markup.page("Stalwart chaos run", "\n".join(body))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markup.table(header, ["<tr>" + "".join(f"<td>{markup.escape(c)}</td>" for c in row) + "</tr>" for row in rows])


def _value(v: float | None) -> float:
    return float("nan") if v is None else float(v) * 100


def _fault_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [_value(r["yield"]) for r in rows], width=0.4, color=CYCLE[0], label="yield %")
        ax.bar([x + 0.2 for x in xs], [_value(r["harvest"]) for r in rows], width=0.4, color=CYCLE[2], label="harvest %")
        ax.set_ylim(0, 105)
        ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=35, ha="right")
        right = ax.twinx()
        right.plot(list(xs), [r["p99_ms"] or float("nan") for r in rows], "o", color=CYCLE[1], label="p99 ms")
        right.set_yscale("log")
        right.set_ylabel("p99 latency, ms")
        ax.legend(loc="lower left")
        right.legend(loc="lower right")
        fig.subplots_adjust(bottom=0.35)

    return render_svg((9.0, 4.0), draw)


def _curve_plot(steps: Sequence[Mapping[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        xs = list(range(len(steps)))
        ax.plot(xs, [_value(s["yield"]) for s in steps], "o-", color=CYCLE[0], label="yield %")
        ax.plot(xs, [_value(s["harvest"]) for s in steps], "s-", color=CYCLE[2], label="harvest %")
        ax.set_ylim(0, 105)
        ax.set_xticks(xs, [s["name"] for s in steps], rotation=20, ha="right")
        ax.set_ylabel("%")
        ax.legend(loc="lower left")
        fig.subplots_adjust(bottom=0.3)

    return render_svg((8.0, 3.6), draw)


def soak_html(document: Mapping[str, Any]) -> str:
    """The soak's page: its verdicts, and memory, descriptors, latency and loop lag over time."""
    windows = document["windows"]
    verdicts = _html_table(["criterion", "value", "bound", "verdict"], [
        [v["criterion"], str(v["value"]), v["bound"], "pass" if v["passed"] else "FAIL"] for v in document["verdicts"]
    ])

    def draw(fig: Any) -> None:
        ts = [w["t"] / 60 for w in windows]
        series = [("rss_mib", "resident memory, MiB"), ("fds", "open file descriptors"), ("p99_ms", "p99 latency, ms"), ("lag_ms", "event-loop lag, ms")]
        for n, (key, label) in enumerate(series, 1):
            ax = fig.add_subplot(2, 2, n)
            ax.plot(ts, [w[key] for w in windows], color=CYCLE[n - 1])
            ax.set_title(label)
            ax.set_xlabel("minutes")
            ax.set_ylim(bottom=0)
        fig.subplots_adjust(hspace=0.5, wspace=0.3)

    summary = (
        f"{document['options']['seconds']:g} s at {document['rate']:,.0f} requests/s "
        f"({document['options']['share']:.0%} of {document['capacity']:,.0f} answers/s); "
        f"{document['records_checked']:,} answered requests checked in the prediction log"
    )
    body = [
        f"<h1>Soak</h1><p>{markup.escape(document['started'])}: {markup.escape(summary)}</p>",
        verdicts,
        markup.figure(render_svg((9.0, 6.0), draw), "soak", "Over the run, one point per sampling window"),
        f"<p>Rollout: {markup.escape(json.dumps(document['rollout'], default=str))}</p>",
    ]
    return markup.page("Stalwart soak", "\n".join(body))
