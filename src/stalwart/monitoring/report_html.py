"""The monitoring report as one self-contained HTML file.

:func:`render_html` turns a :class:`~stalwart.monitoring.report_document.ReportDocument`
into a page that opens anywhere without a network: CSS inline, plots inline SVG
(:mod:`stalwart.monitoring.report_plots`), no script, no font, no image fetched. Every string
that comes from data (feature names, categories, classes, alert names, notes) is escaped.

Sections, in order: summary (the verdict, the window, the drift share, firing alerts),
feature drift (a table and training vs serving small multiples, drifted features first),
drift scores over time, predictions over time, quality (estimated and realised, label
delay), alerts (a timeline and a table), skew (training vs serving, live parity). A
section with nothing to show says why, with the builder's note when it gave one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stalwart.monitoring import report_markup as markup
from stalwart.monitoring import report_plots as plots
from stalwart.monitoring.report_document import (
    ColumnDrift,
    ReportDocument,
    latest,
    severity_rank,
    sorted_alerts,
    sorted_columns,
)

# The shared pieces under the short names this module has always used.
_e, _figure, _table, _card = markup.escape, markup.figure, markup.table, markup.card
_num, _p, _pct, _time, _span = markup.num, markup.p_value, markup.pct, markup.time, markup.span

__all__ = ["MAX_DISTRIBUTION_PLOTS", "render_html", "report_sections"]

MAX_DISTRIBUTION_PLOTS = 48
"""Features drawn as small multiples (the most severe); the table lists every feature."""


# Why a section is empty, when the document's notes do not say.
_EMPTY = {
    "drift": "No feature was compared: the model has no training profile, or no request was logged in this window.",
    "distributions": "No distributions to draw: no feature has both a training profile and served values in this window.",
    "multivariate": "Not computed: the domain classifier needs logged feature rows (and the sklearn extra).",
    "drift_over_time": "No drift scores over time: no time bucket in this window has served values.",
    "predictions_over_time": "No predictions were logged in this window.",
    "quality": "No predictions in this window, so no quality to measure.",
    "no_labels": "No labels yet: realised metrics appear once labels arrive (POST /v1/feedback).",
    "no_metrics": "No labels yet, and no estimate: estimated performance (CBPE) needs a classifier's probabilities and a labelled reference.",
    "alerts": "No alert was pending, firing or resolved in this window.",
    "training_vs_serving": "No training profile to compare the served features with.",
    "parity": "No parity check ran in this window (stalwart features parity).",
}


def render_html(document: ReportDocument | Mapping[str, Any]) -> str:
    """The report as one HTML page (a string): self-contained, no network needed to open it.

    ``document`` is a :class:`ReportDocument` or its dict (checked with
    :meth:`ReportDocument.from_dict`). Needs matplotlib (``pip install 'stalwart[report]'``)."""
    doc = document if isinstance(document, ReportDocument) else ReportDocument.from_dict(document)
    body = "\n".join([_header(doc), *report_sections(doc).values(), markup.footer(doc.generated_at)])
    return markup.page(f"Monitoring report: {doc.deployment}", body)


def report_sections(doc: ReportDocument) -> dict[str, str]:
    """The report's sections as markup, by their ids (``summary``, ``drift``,
    ``drift-over-time``, ``predictions``, ``quality``, ``alerts``, ``skew``), in page order:
    the page :func:`render_html` makes, and the console's deployment page, show the same."""
    columns = sorted_columns(doc.drift.columns)
    return {
        "summary": _summary(doc, columns),
        "drift": _drift(doc, columns),
        "drift-over-time": _drift_over_time(doc, columns),
        "predictions": _predictions(doc),
        "quality": _quality(doc),
        "alerts": _alerts(doc),
        "skew": _skew(doc),
    }


# -- sections -------------------------------------------------------------------------


def _header(doc: ReportDocument) -> str:
    variants = ", ".join(
        f"{_e(v.variant)}: {_e(v.model)}{'' if v.version is None else ' v' + str(v.version)}" for v in doc.variants
    )
    return (
        f"<header><h1>Monitoring report <span class=name>{_e(doc.deployment)}</span></h1>"
        f'<p class=window>{_e(_time(doc.since))} → {_e(_time(doc.until))} ({_e(_span(doc.until - doc.since))})'
        f"{' · ' + variants if variants else ''}</p>"
        '<nav><a href="#summary">Summary</a><a href="#drift">Feature drift</a><a href="#drift-over-time">Drift over time</a>'
        '<a href="#predictions">Predictions</a><a href="#quality">Quality</a><a href="#alerts">Alerts</a>'
        '<a href="#skew">Skew</a></nav></header>'
    )


def _summary(doc: ReportDocument, columns: Sequence[ColumnDrift]) -> str:
    drifted = [c for c in columns if c.drifted]
    firing = [a for a in sorted_alerts(doc.alerts) if a.state == "firing"]
    verdict_bad = doc.drift.drifted or (doc.multivariate is not None and doc.multivariate.drifted) or bool(firing)
    verdict = "Attention: drift or firing alerts" if verdict_bad else "No dataset drift, no firing alert"
    predictions = sum(b.count for b in doc.predictions_over_time)
    labelled = sum(b.labelled for b in doc.quality)
    cards = [
        _card("drifted features", f"{len(drifted)} / {len(columns)}", f"share {_pct(doc.drift.share)}, threshold {_pct(doc.drift.threshold)}", doc.drift.drifted),
        _card(
            "multivariate AUROC",
            "n/a" if doc.multivariate is None else _num(doc.multivariate.auroc),
            "not computed" if doc.multivariate is None else f"threshold {_num(doc.multivariate.threshold)}",
            doc.multivariate is not None and doc.multivariate.drifted,
        ),
        _card("firing alerts", str(len(firing)), f"{len(doc.alerts)} in the window", bool(firing)),
        _card("predictions", f"{predictions:,}", f"{labelled:,} labelled" if labelled else "no labels yet", False),
    ]
    parts = [f'<section id=summary><h2>Summary</h2><p class="verdict {"bad" if verdict_bad else "good"}">{_e(verdict)}</p>']
    parts.append(f"<div class=cards>{''.join(cards)}</div>")
    if firing:
        items = "".join(
            f"<li>{_badge(a.severity)} <b>{_e(a.name)}</b>{_column_suffix(a.column)} since {_e(_time(a.started_at))}"
            f"{_value_vs(a.value, a.threshold)}</li>"
            for a in firing
        )
        parts.append(f"<h3>Firing alerts</h3><ul class=firing>{items}</ul>")
    if drifted:
        names = ", ".join(f"<b>{_e(c.column)}</b> ({_e(c.method)})" for c in drifted[:10])
        more = f" and {len(drifted) - 10} more" if len(drifted) > 10 else ""
        parts.append(f"<p>Drifted features, most severe first: {names}{more}.</p>")
    parts.append("</section>")
    return "".join(parts)


def _drift(doc: ReportDocument, columns: Sequence[ColumnDrift]) -> str:
    parts = ["<section id=drift><h2>Feature drift: training vs serving</h2>"]
    parts.append(
        "<p class=explain>Each feature's window compared with its training profile. A test-based method's threshold "
        "applies to its p-value (drift when p &lt; threshold); the others' to the score (drift when score ≥ threshold).</p>"
    )
    if not columns:
        parts.append(_empty(doc, "drift"))
    else:
        rows = []
        for c in columns:
            mode = c.mode if c.error_bound is None or c.mode == "exact" else f"{c.mode} ±{_num(c.error_bound)}"
            rows.append(
                f"<tr{' class=drifted' if c.drifted else ''}><td class=name>{_e(c.column)}</td><td>{_e(c.kind)}</td>"
                f"<td>{_e(c.method)}</td><td class=num>{_num(c.score)}</td><td class=num>{_p(c.p_value)}</td>"
                f"<td class=num>{_num(c.threshold)}</td><td>{_verdict(c.drifted)}</td>"
                f"<td class=num>{c.reference_count:,}</td><td class=num>{c.current_count:,}</td>"
                f"<td class=num>{_pct(c.missing_reference)} / {_pct(c.missing_current)}</td>"
                f"<td class=num>{_pct(c.out_of_schema)}</td><td>{_e(mode)}</td></tr>"
            )
        parts.append(
            _table(
                ["feature", "kind", "method", "score", "p-value", "threshold", "verdict", "training n", "serving n",
                 "missing (training / serving)", "out of schema", "mode"],
                rows,
            )
        )
        if doc.multivariate is not None:
            m = doc.multivariate
            parts.append(
                f"<p>Multivariate (domain classifier): AUROC {_num(m.auroc)} against threshold {_num(m.threshold)}: "
                f"{_verdict(m.drifted)}. An AUROC near 0.5 means the window's rows cannot be told from the reference's.</p>"
            )
        else:
            parts.append(f"<p class=empty>Multivariate drift: {_e(doc.notes.get('multivariate', _EMPTY['multivariate']))}</p>")
    parts.append("<h3>Distributions</h3>")
    if not doc.distributions:
        parts.append(_empty(doc, "distributions"))
    else:
        parts.append(
            '<p class=legend><span class="swatch reference"></span>training <span class="swatch current"></span>serving '
            '<span class="swatch drifted"></span>serving, drifted</p>'
        )
        parts.append(_small_multiples(doc, columns))
    parts.append("</section>")
    return "".join(parts)


def _small_multiples(doc: ReportDocument, columns: Sequence[ColumnDrift]) -> str:
    by_name = {c.column: c for c in columns}
    # The columns' order (drifted, most severe first), then distributions without a verdict.
    order = [c.column for c in columns if c.column in doc.distributions]
    order += sorted(name for name in doc.distributions if name not in by_name)
    cells = []
    for i, name in enumerate(order[:MAX_DISTRIBUTION_PLOTS]):
        column = by_name.get(name)
        drifted = column is not None and column.drifted
        caption = f"<span class=feature>{_e(name)}</span>"
        if column is not None:
            caption += f" <span class=meta>{_e(column.method)} {_num(column.score)}"
            caption += f", p {_p(column.p_value)}" if column.p_value is not None else ""
            caption += f" {_verdict(column.drifted)}</span>"
        svg = plots.scope_ids(plots.distribution_plot(doc.distributions[name], drifted=drifted), f"d{i}-")
        cells.append(f'<figure class="plot small{" drifted" if drifted else ""}" data-plot=distribution>{svg}<figcaption>{caption}</figcaption></figure>')
    more = ""
    if len(order) > MAX_DISTRIBUTION_PLOTS:
        more = f"<p class=empty>{len(order) - MAX_DISTRIBUTION_PLOTS} more features not drawn (the least severe); the table above lists them all.</p>"
    return f"<div class=grid>{''.join(cells)}</div>{more}"


def _drift_over_time(doc: ReportDocument, columns: Sequence[ColumnDrift]) -> str:
    parts = ["<section id=drift-over-time><h2>Drift scores over time</h2>"]
    if not doc.drift_over_time:
        parts.append(_empty(doc, "drift_over_time"))
    else:
        seen = {k for b in doc.drift_over_time for k in b.scores}
        # Most severe in the window first; columns only scored over time follow by name.
        order = [c.column for c in columns if c.column in seen] + sorted(seen - {c.column for c in columns})
        svg = plots.drift_over_time_plot(doc.drift_over_time, order, threshold=doc.drift.threshold, window=(doc.since, doc.until))
        parts.append(_figure(svg, "drift-over-time", "Top: the share of drifted features per bucket (dashed: the dataset threshold). "
                             f"Bottom: the scores of the {min(len(order), plots.MAX_SCORE_LINES)} most severe features."))
        if len(order) > plots.MAX_SCORE_LINES:
            parts.append(f"<p class=empty>{len(order) - plots.MAX_SCORE_LINES} less severe features not drawn.</p>")
    parts.append("</section>")
    return "".join(parts)


def _predictions(doc: ReportDocument) -> str:
    parts = ["<section id=predictions><h2>Predictions over time</h2>"]
    if not any(b.count for b in doc.predictions_over_time):
        parts.append(_empty(doc, "predictions_over_time"))
    else:
        svg = plots.predictions_plot(doc.predictions_over_time, window=(doc.since, doc.until))
        caption = f"Predictions per bucket by predicted class (the {plots.MAX_CLASSES} most frequent; the rest as “(other)”)"
        if any(b.score_quantiles is not None for b in doc.predictions_over_time):
            caption += "; below, the model's score: median and p10-p90"
        parts.append(_figure(svg, "predictions", caption + "."))
        if "predictions_over_time" in doc.notes:
            parts.append(_note(doc, "predictions_over_time"))
    parts.append("</section>")
    return "".join(parts)


def _quality(doc: ReportDocument) -> str:
    parts = ["<section id=quality><h2>Quality: estimated and realised</h2>"]
    buckets = doc.quality
    if not buckets:
        parts.append(_empty(doc, "quality"))
        parts.append("</section>")
        return "".join(parts)
    labelled = sum(b.labelled for b in buckets)
    metrics = plots.quality_metrics(buckets)
    if labelled == 0:
        parts.append(f"<p class=empty>{_e(doc.notes.get('quality', _EMPTY['no_labels']))}</p>")
    elif "quality" in doc.notes:
        parts.append(_note(doc, "quality"))
    if not metrics and labelled == 0:
        parts.append(f"<p class=empty>{_e(_EMPTY['no_metrics'])}</p>")
    svg = plots.quality_plot(buckets, window=(doc.since, doc.until))
    parts.append(_figure(svg, "quality", "Realised (solid, from labels) and estimated (dashed, before labels) per bucket; "
                         "the last panel: seconds, minutes or hours from a prediction to its label."))
    if metrics:
        rows = [
            f"<tr><td class=name>{_e(m)}</td><td class=num>{_num(latest(buckets, m, 'estimated'))}</td>"
            f"<td class=num>{_num(latest(buckets, m, 'realised'))}</td></tr>"
            for m in metrics
        ]
        parts.append("<h3>Latest values</h3>" + _table(["metric", "estimated", "realised"], rows))
    predictions = sum(b.predictions for b in buckets)
    parts.append(f"<p>{labelled:,} of {predictions:,} predictions labelled ({_pct(labelled / predictions if predictions else 0.0)}).</p>")
    parts.append("</section>")
    return "".join(parts)


def _alerts(doc: ReportDocument) -> str:
    parts = ["<section id=alerts><h2>Alerts</h2>"]
    if not doc.alerts:
        parts.append(_empty(doc, "alerts"))
    else:
        svg = plots.alerts_plot(doc.alerts, window=(doc.since, doc.until))
        rows_drawn = len(plots.alert_rows(doc.alerts))
        parts.append(_figure(svg, "alerts", "Each alert from when it started to when it resolved (hatched: still firing; faint: pending), "
                             "coloured by severity: red critical, amber warning, blue info."))
        total_rows = len({(a.name, a.column) for a in doc.alerts})
        if total_rows > rows_drawn:
            parts.append(f"<p class=empty>{total_rows - rows_drawn} more alert rows not drawn; the table lists every alert.</p>")
        rows = [
            f"<tr class=state-{_e(a.state)}><td class=name>{_e(a.name)}</td><td>{_e(a.column or '')}</td><td>{_badge(a.severity)}</td>"
            f"<td>{_e(a.state)}</td><td>{_e(_time(a.started_at))}</td><td>{_e(_time(a.ended_at)) if a.ended_at else '—'}</td>"
            f"<td class=num>{_num(a.value)}</td><td class=num>{_num(a.threshold)}</td></tr>"
            for a in sorted_alerts(doc.alerts)
        ]
        parts.append(_table(["alert", "column", "severity", "state", "started", "ended", "value", "threshold"], rows))
    parts.append("</section>")
    return "".join(parts)


def _skew(doc: ReportDocument) -> str:
    parts = ["<section id=skew><h2>Training-serving skew</h2><h3>Serving distribution vs training profile</h3>"]
    tvs = sorted(doc.skew.training_vs_serving, key=lambda s: (not s.drifted, -(s.score or 0.0), s.column))
    if not tvs:
        parts.append(_empty(doc, "skew", _EMPTY["training_vs_serving"]))
    else:
        rows = [
            f"<tr{' class=drifted' if s.drifted else ''}><td class=name>{_e(s.column)}</td><td>{_e(s.method)}</td>"
            f"<td class=num>{_num(s.score)}</td><td>{_verdict(s.drifted, 'skewed')}</td></tr>"
            for s in tvs
        ]
        parts.append(_table(["feature", "method", "score", "verdict"], rows))
    parts.append("<h3>Live parity: served values recomputed offline</h3>")
    parity = sorted(doc.skew.parity, key=lambda p: (-(p.rate or 0.0), p.feature))
    if not parity:
        parts.append(f"<p class=empty>{_e(_EMPTY['parity'])}</p>")
    else:
        rows = [
            f"<tr{' class=drifted' if p.mismatched else ''}><td class=name>{_e(p.feature)}</td><td class=num>{p.checked:,}</td>"
            f"<td class=num>{p.mismatched:,}</td><td class=num>{_pct(p.rate)}</td></tr>"
            for p in parity
        ]
        parts.append(_table(["feature", "checked", "mismatched", "skew rate"], rows))
    parts.append("</section>")
    return "".join(parts)


# -- small pieces ---------------------------------------------------------------------


def _empty(doc: ReportDocument, section: str, default: str | None = None) -> str:
    reason = doc.notes.get(section) or default or _EMPTY[section]
    return f"<p class=empty>{_e(reason)}</p>"


def _note(doc: ReportDocument, section: str) -> str:
    return f"<p class=note>{_e(doc.notes[section])}</p>"


def _badge(severity: str) -> str:
    known = severity if severity_rank(severity) < 3 else "other"
    return f'<span class="badge {known}">{_e(severity)}</span>'


def _verdict(drifted: bool, word: str = "drifted") -> str:
    return f"<span class=\"verdict-tag bad\">{word}</span>" if drifted else '<span class="verdict-tag good">stable</span>'


def _column_suffix(column: str | None) -> str:
    return "" if column is None else f" on <b>{_e(column)}</b>"


def _value_vs(value: float | None, threshold: float | None) -> str:
    if value is None:
        return ""
    return f": {_num(value)}" + ("" if threshold is None else f" (threshold {_num(threshold)})")
