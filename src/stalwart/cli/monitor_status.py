"""``stalwart monitor status``: the monitoring report document as terminal tables.

Per feature, drifted first: method, score, p-value, threshold, verdict; then the
multivariate verdict, quality (the newest estimated and realised values, labels and their
delay), alerts (firing first) and parity. Strings from data are ``Text``, never markup, so
a feature named ``[red]x`` prints as written.
"""

from __future__ import annotations

import datetime as dt

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from stalwart.monitoring.report_document import (
    ReportDocument,
    latest,
    quality_metrics,
    sorted_alerts,
    sorted_columns,
)

__all__ = ["status_view"]

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "blue"}
_STATE_STYLE = {"firing": "bold red", "pending": "yellow", "resolved": "green"}


def status_view(doc: ReportDocument) -> RenderableType:
    """Everything ``stalwart monitor status`` prints for ``doc``, as one rich renderable."""
    return Group(_headline(doc), _features(doc), _quality(doc), _alerts(doc), _parity(doc))


def _headline(doc: ReportDocument) -> Text:
    text = Text()
    text.append(doc.deployment, style="bold")
    text.append(f"  {_time(doc.since)} → {_time(doc.until)}\n", style="dim")
    drifted = sum(1 for c in doc.drift.columns if c.drifted)
    text.append(f"drift: {drifted} of {len(doc.drift.columns)} features drifted, share {_pct(doc.drift.share)} "
                f"(threshold {_pct(doc.drift.threshold)}): ")
    text.append("DRIFTED" if doc.drift.drifted else "stable", style="bold red" if doc.drift.drifted else "green")
    if doc.multivariate is not None:
        m = doc.multivariate
        text.append(f"\nmultivariate: AUROC {_num(m.auroc)} (threshold {_num(m.threshold)}): ")
        text.append("drifted" if m.drifted else "stable", style="bold red" if m.drifted else "green")
    firing = sum(1 for a in doc.alerts if a.state == "firing")
    text.append(f"\nalerts: {firing} firing", style="bold red" if firing else "")
    return text


def _features(doc: ReportDocument) -> RenderableType:
    if not doc.drift.columns:
        return Text(doc.notes.get("drift", "no feature compared in this window"), style="dim italic")
    table = Table(title="features, drifted first (threshold on p when there is one)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("feature", overflow="fold", min_width=12, ratio=1)
    # The missing rate only when a feature has missing values: 80 columns go fast.
    missing = any(c.missing_current > 0 for c in doc.drift.columns)
    for name in ("method", "score", "p", "threshold", "verdict", "n", *(("missing",) if missing else ())):
        table.add_column(name, justify="left" if name in ("method", "verdict") else "right", no_wrap=True)
    for c in sorted_columns(doc.drift.columns):
        verdict = Text("drifted", style="bold red") if c.drifted else Text("stable", style="green")
        cells: list[RenderableType] = [_num(c.score), _p(c.p_value), _num(c.threshold), verdict, f"{c.current_count:,}"]
        table.add_row(Text(c.column, style="bold red" if c.drifted else ""), Text(c.method), *cells, *((_pct(c.missing_current),) if missing else ()))
    return table


def _quality(doc: ReportDocument) -> RenderableType:
    if not doc.quality:
        return Text(doc.notes.get("quality", "quality: no predictions in this window"), style="dim italic")
    metrics = quality_metrics(doc.quality)
    predictions = sum(b.predictions for b in doc.quality)
    labelled = sum(b.labelled for b in doc.quality)
    delays = [b.label_delay_seconds for b in doc.quality if b.label_delay_seconds is not None]
    caption = f"{labelled:,} of {predictions:,} predictions labelled"
    if delays:
        caption += f"; label delay p50 {_seconds(delays[-1].p50)}, p90 {_seconds(delays[-1].p90)}"
    elif labelled == 0:
        caption += " (no labels yet)"
    table = Table("metric", "estimated", "realised", title="quality (newest values)", title_justify="left", box=box.SIMPLE_HEAD)
    for metric in metrics:
        table.add_row(Text(metric), _num(latest(doc.quality, metric, "estimated")), _num(latest(doc.quality, metric, "realised")))
    return Group(table, Text(caption))


def _alerts(doc: ReportDocument) -> RenderableType:
    if not doc.alerts:
        return Text(doc.notes.get("alerts", "alerts: none pending, firing or resolved in this window"), style="dim italic")
    table = Table(title="alerts, firing first", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("alert", overflow="fold", min_width=10, ratio=1)
    table.add_column("column", overflow="fold", min_width=8, ratio=1)
    for name in ("severity", "state", "since", "value", "threshold"):
        table.add_column(name, justify="right" if name in ("value", "threshold") else "left", no_wrap=True)
    for a in sorted_alerts(doc.alerts):
        table.add_row(
            Text(a.name), Text(a.column or ""), Text(a.severity, style=_SEVERITY_STYLE.get(a.severity, "")), Text(a.state, style=_STATE_STYLE.get(a.state, "")),
            _short(a.started_at), _num(a.value), _num(a.threshold),
        )
    return table


def _parity(doc: ReportDocument) -> RenderableType:
    parity = [p for p in doc.skew.parity if p.mismatched]
    if not doc.skew.parity:
        return Text("parity: no check ran in this window", style="dim italic")
    if not parity:
        return Text(f"parity: {len(doc.skew.parity)} features checked, no mismatch", style="green")
    table = Table("feature", "checked", "mismatched", "rate", title="parity mismatches", title_justify="left", box=box.SIMPLE_HEAD)
    for p in sorted(parity, key=lambda p: (-(p.rate or 0.0), p.feature)):
        table.add_row(Text(p.feature, style="red"), f"{p.checked:,}", f"{p.mismatched:,}", _pct(p.rate))
    return table


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if value >= 2 * size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} s"


def _short(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%m-%d %H:%M")


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
