"""The monitoring report's plots, each one inline SVG made by matplotlib (the ``report``
extra, imported on first use).

No pyplot: each plot is a bare :class:`~matplotlib.figure.Figure` drawn by the SVG canvas,
so nothing touches matplotlib's global backend. Text stays text (``svg.fonttype: none``:
a tenth of the size of glyph outlines, and the browser's fonts); mathtext is off, so a
feature named ``$x$`` is drawn as written; matplotlib escapes text for XML. Each plot gets
ids that :func:`scope_ids` prefixes, so the ids of different plots on one page never collide.

What a plot shows is bounded whatever the data holds: the most severe columns, the most
frequent classes and categories, the first alert rows (see the ``MAX_*`` constants); the
HTML says what was left out.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stalwart._optional import require
from stalwart.monitoring import report_document
from stalwart.monitoring.report_document import (
    AlertEntry,
    CategoricalDistribution,
    Distribution,
    DriftBucket,
    PredictionBucket,
    QualityBucket,
)

__all__ = [
    "COLORS",
    "MAX_CATEGORIES",
    "MAX_CLASSES",
    "MAX_QUALITY_METRICS",
    "MAX_SCORE_LINES",
    "MAX_TIMELINE_ROWS",
    "PALETTE",
    "Window",
    "alert_rows",
    "alerts_plot",
    "distribution_plot",
    "drift_over_time_plot",
    "predictions_plot",
    "quality_metrics",
    "quality_plot",
    "render_figure",
    "scope_ids",
    "time_axis",
]

MAX_CATEGORIES = 12  # bars per categorical plot; the rest summed as "(other)"
MAX_CLASSES = 8  # classes stacked per prediction bucket; the rest summed as "(other)"
MAX_SCORE_LINES = 8  # columns drawn in "drift scores over time" (the most severe)
MAX_QUALITY_METRICS = 6  # quality panels (the label delay panel comes in addition)
MAX_TIMELINE_ROWS = 30  # alert rows on the timeline (firing and most severe first)


COLORS = {
    "reference": "#9aa5b1",
    "current": "#1d4ed8",
    "drifted": "#b91c1c",
    "threshold": "#6b7280",
    "critical": "#b91c1c",
    "warning": "#d97706",
    "info": "#2563eb",
}
_CYCLE = ("#1d4ed8", "#b91c1c", "#047857", "#7c3aed", "#d97706", "#0e7490", "#be185d", "#4b5563", "#65a30d")
PALETTE = _CYCLE
"""Colours for series, in order (other reports' plots use them too: one house style)."""

_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.size": 8.0,
    "font.family": "sans-serif",
    "axes.edgecolor": "#9ca3af",
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9.0,
    "axes.titleweight": "bold",
    "xtick.color": "#374151",
    "ytick.color": "#374151",
    "legend.frameon": False,
    "legend.fontsize": 7.5,
}
# rcParams are process-wide: one plot at a time, so two threads' settings never mix.
_LOCK = threading.Lock()

Window = tuple[dt.datetime, dt.datetime]
"""The report's window, (since, until): the x axis of every plot over time."""
# Every reference to an id inside matplotlib's SVG: the id itself, url(#...) in clip paths
# and fills, and xlink:href="#..." for reused markers.
_ID_REF = re.compile(r'(\bid="|url\(#|xlink:href="#)')


def scope_ids(svg: str, prefix: str) -> str:
    """``svg`` with every id (and every reference to one) prefixed by ``prefix``: plots
    inlined in one page each need their own (an id is global to the HTML document)."""
    return _ID_REF.sub(lambda m: m.group(1) + prefix, svg)


def distribution_plot(dist: Distribution, *, drifted: bool) -> str:
    """Training (grey, filled) vs serving (blue; red when drifted) for one feature."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        serving = COLORS["drifted"] if drifted else COLORS["current"]
        # Fixed margins, not tight_layout: it measured every label again and cost a third
        # of each small multiple (a report draws up to 48). Category labels are clipped to
        # 18 characters, which the left margin fits.
        if isinstance(dist, CategoricalDistribution):
            _categorical(ax, dist, serving)
            fig.subplots_adjust(left=0.36, right=0.97, top=0.96, bottom=0.2)
        else:
            _numeric(ax, dist.edges, dist.reference, dist.current, serving)
            fig.subplots_adjust(left=0.17, right=0.97, top=0.96, bottom=0.3)

    return _render((3.3, 2.1), draw)


def drift_over_time_plot(buckets: Sequence[DriftBucket], columns: Sequence[str], *, threshold: float, window: Window) -> str:
    """The share of drifted columns per bucket against the dataset threshold, and the
    scores of ``columns`` (at most :data:`MAX_SCORE_LINES`, most severe first)."""
    times = [_naive(b.bucket) for b in buckets]

    def draw(fig: Any) -> None:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.6))
        top.plot(times, [b.share for b in buckets], color=COLORS["current"], marker="o", markersize=2.5, linewidth=1.2)
        top.axhline(threshold, color=COLORS["threshold"], linestyle="--", linewidth=0.8)
        top.set_ylim(0, 1.02)
        top.set_ylabel("drifted share")
        lines, labels = [], []
        for i, column in enumerate(columns[:MAX_SCORE_LINES]):
            values = [_nan(b.scores.get(column)) for b in buckets]
            (line,) = bottom.plot(times, values, color=_CYCLE[i % len(_CYCLE)], marker="o", markersize=2, linewidth=1)
            lines.append(line)
            labels.append(_clip(column))
        bottom.set_ylabel("score")
        bottom.set_xlabel("UTC")
        if lines:
            # Labels given explicitly: matplotlib drops auto-collected ones starting with "_".
            bottom.legend(lines, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _time_axis(bottom, window)
        fig.tight_layout(pad=0.5)

    return _render((10.5, 3.6), draw)


def predictions_plot(buckets: Sequence[PredictionBucket], *, window: Window) -> str:
    """Predictions per bucket stacked by class (the :data:`MAX_CLASSES` most frequent), and
    the score's p10-p90 band and median when the buckets carry them."""
    times = [_naive(b.bucket) for b in buckets]
    width = _bucket_width(times)
    has_scores = any(b.score_quantiles is not None for b in buckets)

    def draw(fig: Any) -> None:
        axes = fig.subplots(2, 1, sharex=True) if has_scores else [fig.add_subplot()]
        ax = axes[0]
        classes = _top_keys([b.classes for b in buckets], MAX_CLASSES)
        if classes:
            bottom = [0.0] * len(buckets)
            bars, labels = [], []
            for i, cls in enumerate([*classes, "(other)"]):
                if cls == "(other)":
                    heights = [float(sum(v for k, v in b.classes.items() if k not in classes)) for b in buckets]
                    if not any(heights):
                        continue
                else:
                    heights = [float(b.classes.get(cls, 0)) for b in buckets]
                bar = ax.bar(times, heights, width=width, bottom=bottom, color=_CYCLE[i % len(_CYCLE)], align="edge")
                bars.append(bar)
                labels.append(_clip(cls))
                bottom = [x + h for x, h in zip(bottom, heights, strict=True)]
            ax.legend(bars, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="class")
        else:
            ax.bar(times, [b.count for b in buckets], width=width, color=COLORS["current"], align="edge")
        ax.set_ylabel("predictions")
        if has_scores:
            low = [_nan(q.p10 if (q := b.score_quantiles) else None) for b in buckets]
            mid = [_nan(q.p50 if (q := b.score_quantiles) else None) for b in buckets]
            high = [_nan(q.p90 if (q := b.score_quantiles) else None) for b in buckets]
            centres = [t + width / 2 for t in times]
            axes[1].fill_between(centres, low, high, color=COLORS["current"], alpha=0.18, linewidth=0, label="p10-p90")
            axes[1].plot(centres, mid, color=COLORS["current"], linewidth=1.2, label="median")
            axes[1].set_ylabel("score")
            axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[-1].set_xlabel("UTC")
        _time_axis(axes[-1], window)
        fig.tight_layout(pad=0.5)

    return _render((10.5, 3.6 if has_scores else 2.2), draw)


def quality_metrics(buckets: Sequence[QualityBucket]) -> list[str]:
    """The metrics the quality plot draws, in the document's order, at most
    :data:`MAX_QUALITY_METRICS`."""
    return report_document.quality_metrics(buckets)[:MAX_QUALITY_METRICS]


def quality_plot(buckets: Sequence[QualityBucket], *, window: Window) -> str:
    """One panel per metric (realised solid, estimated dashed) and one of label delay."""
    times = [_naive(b.bucket) for b in buckets]
    metrics = quality_metrics(buckets)
    panels = len(metrics) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)

    def draw(fig: Any) -> None:
        grid = fig.subplots(rows, cols, sharex=True, squeeze=False)
        axes = [ax for row in grid for ax in row]
        for ax, metric in zip(axes, metrics, strict=False):
            realised = [_nan(b.realised.get(metric)) for b in buckets]
            estimated = [_nan(b.estimated.get(metric)) for b in buckets]
            if any(not math.isnan(v) for v in estimated):
                ax.plot(times, estimated, color=COLORS["reference"], linestyle="--", linewidth=1.3, label="estimated")
            if any(not math.isnan(v) for v in realised):
                ax.plot(times, realised, color=COLORS["current"], marker="o", markersize=2.5, linewidth=1.3, label="realised")
            ax.set_title(_clip(metric))
            if ax.lines:
                ax.legend(loc="best")
        delay_ax = axes[len(metrics)]
        _delay(delay_ax, buckets, times)
        for ax in axes[panels:]:
            ax.set_visible(False)
        for ax in axes[:panels]:
            _time_axis(ax, window, ticks=4)
        fig.tight_layout(pad=0.5)

    return _render((10.5, 2.4 * rows + 0.4), draw)


def alert_rows(alerts: Sequence[AlertEntry]) -> list[tuple[str, list[AlertEntry]]]:
    """Alerts grouped by (name, column) into timeline rows, firing and most severe first,
    at most :data:`MAX_TIMELINE_ROWS`."""
    rows: dict[str, list[AlertEntry]] = {}
    for alert in alerts:
        label = alert.name if alert.column is None else f"{alert.name} [{alert.column}]"
        rows.setdefault(label, []).append(alert)

    def rank(item: tuple[str, list[AlertEntry]]) -> tuple[int, int, str]:
        entries = item[1]
        return (
            min(report_document.state_rank(a.state) for a in entries),
            min(report_document.severity_rank(a.severity) for a in entries),
            item[0],
        )

    return sorted(rows.items(), key=rank)[:MAX_TIMELINE_ROWS]


def alerts_plot(alerts: Sequence[AlertEntry], *, window: Window) -> str:
    """Each alert as a bar from when it started to when it ended (or the window's end,
    still firing: hatched), one row per alert and column, coloured by severity."""
    rows = alert_rows(alerts)
    start, end = _naive(window[0]), _naive(window[1])

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for y, (_label, entries) in enumerate(rows):
            for alert in entries:
                left = max(_naive(alert.started_at), start)
                right = min(_naive(alert.ended_at), end) if alert.ended_at is not None else end
                span = max(right - left, (end - start) / 400)  # an instant stays visible
                ax.barh(
                    y, span, left=left, height=0.6, color=COLORS.get(alert.severity, COLORS["threshold"]),
                    hatch="///" if alert.ended_at is None and alert.state == "firing" else None,
                    edgecolor="white", linewidth=0.4, alpha=1.0 if alert.state != "pending" else 0.5,
                )
        ax.set_yticks(range(len(rows)), [_clip(label, 40) for label, _ in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("UTC")
        _time_axis(ax, window)
        fig.tight_layout(pad=0.5)

    return _render((10.5, 0.6 + 0.28 * max(len(rows), 1)), draw)


# -- drawing helpers ------------------------------------------------------------------


def _numeric(ax: Any, edges: Sequence[float], reference: Sequence[float], current: Sequence[float], color: str) -> None:
    # Bins side by side at equal width, labelled with their edges: bins from the reference's
    # deciles make the training side flat, and a heavy tail cannot squash the rest into
    # one corner. The height is each bin's share of values, which is what the scores compare.
    positions = list(range(len(reference) + 1))
    ax.stairs(reference, positions, fill=True, color=COLORS["reference"], alpha=0.55)
    ax.stairs(current, positions, color=color, linewidth=1.4)
    step = max(1, math.ceil(len(edges) / 6))
    ticks = positions[::step]
    ax.set_xticks(ticks, [_edge(edges[i]) for i in ticks], rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("share")
    ax.set_xlabel("bin (edges)")


def _edge(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.2e}"


def _categorical(ax: Any, dist: CategoricalDistribution, color: str) -> None:
    keys = _top_keys([dist.reference, dist.current], MAX_CATEGORIES)
    ref = [dist.reference.get(k, 0.0) for k in keys]
    cur = [dist.current.get(k, 0.0) for k in keys]
    labels = [_clip(k, 18) for k in keys]
    rest_ref = sum(v for k, v in dist.reference.items() if k not in keys)
    rest_cur = sum(v for k, v in dist.current.items() if k not in keys)
    if rest_ref > 0 or rest_cur > 0:
        ref.append(rest_ref)
        cur.append(rest_cur)
        labels.append("(other)")
    ys = list(range(len(labels)))
    ax.barh([y - 0.2 for y in ys], ref, height=0.4, color=COLORS["reference"])
    ax.barh([y + 0.2 for y in ys], cur, height=0.4, color=color)
    ax.set_yticks(ys, labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("share")


def _delay(ax: Any, buckets: Sequence[QualityBucket], times: list[dt.datetime]) -> None:
    ax.set_title("label delay")
    delays = [b.label_delay_seconds for b in buckets]
    seen = [d.p99 for d in delays if d is not None]
    if not seen:
        ax.text(0.5, 0.5, "no labels yet", ha="center", va="center", transform=ax.transAxes, color=COLORS["threshold"])
        ax.set_yticks([])
        return
    scale, unit = _time_unit(max(seen))
    for name, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        values = [_nan(getattr(d, name) / scale if d is not None else None) for d in delays]
        ax.plot(times, values, color=COLORS["current"], linestyle=style, linewidth=1.2, label=name)
    ax.set_ylabel(unit)
    ax.legend(loc="best")


def _time_unit(seconds: float) -> tuple[float, str]:
    for scale, unit in ((86_400.0, "days"), (3_600.0, "hours"), (60.0, "minutes")):
        if seconds >= 2 * scale:
            return scale, unit
    return 1.0, "seconds"


def _time_axis(ax: Any, window: Window, ticks: int = 8) -> None:
    """Dates on the x axis, spanning the report's window: every plot over time lines up,
    and a window with one bucket still has a width."""
    ax.set_xlim(_naive(window[0]), _naive(window[1]))
    mdates = _require("matplotlib.dates")
    locator = mdates.AutoDateLocator(maxticks=ticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _top_keys(counts: Sequence[dict[str, Any]], limit: int) -> list[str]:
    """The keys with the largest values over all ``counts``, ties by name."""
    total: dict[str, float] = {}
    for mapping in counts:
        for key, value in mapping.items():
            total[key] = total.get(key, 0.0) + float(value or 0.0)
    return sorted(total, key=lambda k: (-total[k], k))[:limit]


def _bucket_width(times: Sequence[dt.datetime]) -> dt.timedelta:
    gaps = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
    return gaps[len(gaps) // 2] * 0.9 if gaps else dt.timedelta(hours=1) * 0.9


def _naive(value: dt.datetime) -> dt.datetime:
    """UTC without a zone: matplotlib's dates, read as UTC on every axis ("UTC" labels it)."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _clip(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- figures and SVG ------------------------------------------------------------------


def render_figure(size: tuple[float, float], draw: Callable[[Any], None]) -> str:
    """A bare matplotlib Figure of ``size`` inches, drawn by ``draw(figure)`` in the
    report's style (rcParams, text as text, fixed ids salt), as inline SVG: how other
    reports (the shadow report) draw plots that look like these."""
    return _render(size, draw)


def time_axis(ax: Any, window: Window, ticks: int = 8) -> None:
    """Dates on ``ax``'s x axis spanning ``window``, as every plot over time here has."""
    _time_axis(ax, window, ticks)


def _render(size: tuple[float, float], draw: Callable[[Any], None]) -> str:
    """A bare Figure of ``size`` inches, drawn by ``draw`` under the report's rcParams, as
    inline SVG; one at a time (see ``_LOCK``)."""
    matplotlib = _require("matplotlib")
    figure = _require("matplotlib.figure")
    backend = _require("matplotlib.backends.backend_svg")
    # A fixed salt: the same document renders to the same bytes.
    with _LOCK, matplotlib.rc_context({**_RC, "svg.hashsalt": "stalwart"}):
        fig = figure.Figure(figsize=size)
        draw(fig)
        buffer = io.StringIO()
        # No metadata: a date would make two renders of one document differ.
        backend.FigureCanvasSVG(fig).print_svg(buffer, metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    # Inline SVG in HTML: drop the XML declaration and DOCTYPE before the root element.
    return text[text.index("<svg") :].strip()


def _require(module: str) -> Any:
    return require(module, extra="report", purpose="plots in the monitoring report (stalwart monitor report)")
