"""The rollout report's plots, each inline SVG drawn by matplotlib through
:mod:`stalwart.monitoring.report_figures` (no pyplot, text as text, no mathtext, the same
bytes each time; the ``report`` extra, imported on first use).

Three plots, on one time axis (the rollout's span): the canary's weight as a step chart with
its decisions marked; each metric's effect (canary - primary) and its anytime-valid interval
over the looks, against the tolerance; the requests each arm had at each look. What they
draw is bounded however long the rollout ran: the caller thins the looks (:func:`thin`), and
the plots draw at most :data:`MAX_WEIGHT_POINTS` weight changes, :data:`MAX_MARKERS`
decision markers (:data:`MAX_LABELS` of them labelled) and :data:`MAX_METRIC_PANELS` metrics.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import numpy as np

from stalwart.monitoring.report_figures import (
    COLORS,
    Window,
    clip,
    matplotlib_module,
    naive,
    nan,
    render_svg,
    time_axis,
)
from stalwart.rollout.history import Event, Look, LookVerdict, PlanRule, RolloutHistory
from stalwart.rollout.report_numbers import metric_unit, plot_value

__all__ = [
    "DECISION_COLORS",
    "EVENT_STYLES",
    "MAX_LABELS",
    "MAX_MARKERS",
    "MAX_METRIC_PANELS",
    "MAX_WEIGHT_POINTS",
    "arm_requests",
    "effects_plot",
    "metric_names",
    "requests_plot",
    "thin",
    "weight_changes",
    "weight_plot",
]

MAX_WEIGHT_POINTS: Final = 2_000  # changes of weight in the step chart (thinned evenly past it)
MAX_MARKERS: Final = 300  # decisions marked on the weight chart (thinned evenly past it)
MAX_LABELS: Final = 24  # of those, the newest labelled with their kind (the others: markers only)
MAX_METRIC_PANELS: Final = 8  # metrics drawn in the effects plot (the plan's first)

DECISION_COLORS: Final = {"pass": "#047857", "fail": COLORS["drifted"], "inconclusive": COLORS["threshold"]}
"""A verdict's colour in the plots and the tables."""

EVENT_STYLES: Final = {
    "start": ("o", "#111827"),
    "step": ("^", COLORS["current"]),
    "weight": ("D", "#7c3aed"),
    "pause": ("s", COLORS["threshold"]),
    "resume": (">", COLORS["info"]),
    "hold": ("s", COLORS["warning"]),
    "promote": ("*", "#047857"),
    "rollback": ("X", COLORS["drifted"]),
}
"""How each kind of decision is marked on the weight chart: (matplotlib marker, colour)."""
_OTHER_STYLE: Final = ("o", COLORS["threshold"])
# Steps are the controller's routine moves: marked, not labelled, so the labels the plot has
# room for go to the decisions a reader looks for.
_UNLABELLED: Final = frozenset(("step",))
# The arm summary's request count, under the names a summary may use for it.
_REQUEST_KEYS: Final = ("requests", "n", "count", "total")

T = TypeVar("T")


def thin(items: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` of ``items``, evenly spaced, the first and the last always among them."""
    if len(items) <= limit:
        return list(items)
    if limit < 2:
        return list(items[-limit:]) if limit > 0 else []
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[int(i)] for i in picks]


def weight_changes(history: RolloutHistory) -> list[tuple[float, float]]:
    """(time, weight) at the start and at every event that changed the canary's weight."""
    first = next((e.weight for e in history.events if e.weight is not None), None)
    if first is None:
        first = history.plan.steps[0].weight if history.plan.steps else history.weight
    start = min([history.started_at, *(e.at for e in history.events[:1])])
    points = [(start, float(first))]
    for event in history.events:
        if event.weight is not None and event.weight != points[-1][1]:
            points.append((event.at, float(event.weight)))
    return points


def metric_names(history: RolloutHistory, looks: Sequence[Look]) -> list[str]:
    """Every metric judged, the plan's rules in order first, then others as first seen."""
    names = [rule.name for rule in history.plan.rules]
    seen = set(names)
    for look in looks:
        for verdict in look.verdicts:
            if verdict.metric not in seen:
                seen.add(verdict.metric)
                names.append(verdict.metric)
    return names


def arm_requests(look: Look, arm: str) -> int | None:
    """The requests ``arm`` (``"canary"``/``"primary"``) had in the look's window: its
    summary's count, else the largest count any verdict had for it."""
    summary = look.summary.get(arm) or {}
    for key in _REQUEST_KEYS:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    counts = [v.n_canary if arm == "canary" else v.n_primary for v in look.verdicts]
    return max(counts) if counts else None


def weight_plot(history: RolloutHistory, *, window: Window) -> str:
    """The canary's weight over time as a step chart, each decision a marker coloured by its
    kind (:data:`EVENT_STYLES`), the newest :data:`MAX_LABELS` labelled."""
    points = thin(weight_changes(history), MAX_WEIGHT_POINTS)
    end = window[1].timestamp()
    marked = thin([e for e in history.decisions if e.kind in EVENT_STYLES or e.weight is not None], MAX_MARKERS)
    labelled = {id(e) for e in [e for e in marked if e.kind not in _UNLABELLED][-MAX_LABELS:]}

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        times = [_time(t) for t, _ in points] + [_time(max(end, points[-1][0]))]
        weights = [w for _, w in points] + [points[-1][1]]
        ax.step(times, weights, where="post", color=COLORS["current"], linewidth=1.6)
        ax.fill_between(times, weights, step="post", color=COLORS["current"], alpha=0.08, linewidth=0)
        handles: dict[str, Any] = {}
        for i, event in enumerate(marked):
            current = event.weight if event.weight is not None else _weight_at(points, event.at)
            marker, color = EVENT_STYLES.get(event.kind, _OTHER_STYLE)
            (handle,) = ax.plot([_time(event.at)], [current], linestyle="none", marker=marker, color=color,
                                markersize=7 if event.kind in ("promote", "rollback") else 5, markeredgecolor="white",
                                markeredgewidth=0.5, zorder=3)
            handles.setdefault(event.kind, handle)
            if id(event) in labelled:
                # Three heights in turn, so labels of decisions close in time do not overlap.
                ax.annotate(clip(event.kind, 12), (_time(event.at), current), xytext=(0, 7 + 9 * (i % 3)),
                            textcoords="offset points", ha="center", fontsize=7, color=color)
        ax.set_ylim(-0.04, 1.12)
        ax.yaxis.set_major_formatter(matplotlib_module("matplotlib.ticker").PercentFormatter(1.0))
        ax.set_ylabel("canary weight")
        ax.set_xlabel("UTC")
        if handles:
            kinds = sorted(handles, key=lambda k: list(EVENT_STYLES).index(k) if k in EVENT_STYLES else len(EVENT_STYLES))
            ax.legend([handles[k] for k in kinds], [clip(k, 16) for k in kinds], loc="upper left", bbox_to_anchor=(1.01, 1.0))
        time_axis(ax, window, min_ticks=3)
        fig.tight_layout(pad=0.5)

    return render_svg((10.5, 2.6), draw)


def effects_plot(
    history: RolloutHistory, looks: Sequence[Event], metrics: Sequence[str], *, window: Window
) -> str:
    """One panel per metric (at most :data:`MAX_METRIC_PANELS`): the effect (canary -
    primary; for log-scale rules the ratio minus one) at each look, coloured by the look's
    decision, inside its anytime-valid interval (the band), against the tolerance (dashed)
    and zero (dotted)."""
    rules = {rule.name: rule for rule in history.plan.rules}
    drawn = list(metrics[:MAX_METRIC_PANELS])
    cols = min(2, max(len(drawn), 1))
    rows = max(1, math.ceil(len(drawn) / cols))

    def draw(fig: Any) -> None:
        grid = fig.subplots(rows, cols, sharex=True, squeeze=False)
        axes = [ax for row in grid for ax in row]
        for ax, metric in zip(axes, drawn, strict=False):
            _effect_panel(ax, metric, rules.get(metric), looks)
        for ax in axes[len(drawn) :]:
            ax.set_visible(False)
        for ax in axes[: len(drawn)]:
            time_axis(ax, window, ticks=5, min_ticks=2)
        handles = [
            matplotlib_module("matplotlib.lines").Line2D([], [], linestyle="none", marker="o", markersize=4, color=color)
            for color in DECISION_COLORS.values()
        ]
        fig.legend(handles, list(DECISION_COLORS), loc="upper right", ncols=3)
        fig.tight_layout(pad=0.5, rect=(0, 0, 1, 1 - 0.25 / (2.3 * rows + 0.5)))

    return render_svg((10.5, 2.3 * rows + 0.5), draw)


def requests_plot(looks: Sequence[Event], *, window: Window) -> str:
    """Requests per arm at each look (the look's window), a red cross where the look's
    sample-ratio test found a mismatch."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        times = [_time(e.at) for e in looks]
        for arm, color in (("primary", COLORS["reference"]), ("canary", COLORS["current"])):
            counts = [nan(arm_requests(e.look, arm)) if e.look is not None else math.nan for e in looks]
            ax.plot(times, counts, color=color, linewidth=1.4, marker="o", markersize=2, label=arm)
        flagged = [e for e in looks if e.look is not None and e.look.srm is not None and e.look.srm.mismatch]
        if flagged:
            ax.plot([_time(e.at) for e in flagged], [nan(arm_requests(e.look, "canary")) for e in flagged if e.look],
                    linestyle="none", marker="x", color=COLORS["drifted"], markersize=6, label="sample-ratio mismatch")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("requests")
        ax.set_xlabel("UTC")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        time_axis(ax, window, min_ticks=3)
        fig.tight_layout(pad=0.5)

    return render_svg((10.5, 2.3), draw)


# -- drawing helpers ------------------------------------------------------------------


def _effect_panel(ax: Any, metric: str, rule: PlanRule | None, looks: Sequence[Event]) -> None:
    verdicts = [(event, v) for event in looks if (v := _verdict(event.look, metric)) is not None]
    last = verdicts[-1][1] if verdicts else None
    unit = metric_unit(rule, last)
    ax.set_title(clip(metric, 40) + _TITLES[unit])
    if not verdicts:
        ax.text(0.5, 0.5, "no look yet", ha="center", va="center", transform=ax.transAxes, color=COLORS["threshold"])
        ax.set_yticks([])
        return
    times = [_time(event.at) for event, _ in verdicts]
    effect = [plot_value(v.effect, unit) for _, v in verdicts]
    lower = [plot_value(v.lower, unit) for _, v in verdicts]
    upper = [plot_value(v.upper, unit) for _, v in verdicts]
    decisions = [v.decision for _, v in verdicts]
    ax.fill_between(times, lower, upper, color=COLORS["reference"], alpha=0.3, linewidth=0)
    ax.plot(times, effect, color=COLORS["reference"], linewidth=0.8)
    by_color: dict[str, list[tuple[dt.datetime, float]]] = {}
    for t, y, decision in zip(times, effect, decisions, strict=True):
        by_color.setdefault(DECISION_COLORS.get(decision, "#111827"), []).append((t, y))
    for color, picked in by_color.items():
        ax.plot([t for t, _ in picked], [y for _, y in picked], linestyle="none", marker="o", markersize=2.8, color=color)
    ax.axhline(0.0, color=COLORS["threshold"], linestyle=":", linewidth=0.8)
    tolerance = last.tolerance if last is not None and last.tolerance is not None else (rule.tolerance if rule else None)
    direction = last.direction if last is not None and last.direction else (rule.direction if rule else "")
    lines = []
    if tolerance is not None and math.isfinite(tolerance):
        # The tolerance bounds a rise, a drop, or both (judge.decide); unknown: a rise.
        if direction in ("lower_is_better", "two_sided", ""):
            lines.append(plot_value(tolerance, unit))
        if direction in ("higher_is_better", "two_sided"):
            lines.append(plot_value(-tolerance, unit))
    for y in lines:
        ax.axhline(y, color=COLORS["drifted"], linestyle="--", linewidth=0.9)
    ax.set_ylim(*_limits(effect, lower, upper, lines))


def _limits(effect: Sequence[float], lower: Sequence[float], upper: Sequence[float], lines: Sequence[float]) -> tuple[float, float]:
    """y limits that show every effect, the tolerance and zero, and the intervals of the
    later half of the looks: the first looks' intervals are wide enough to flatten the rest."""
    half = len(effect) // 2
    values = np.array([*effect, *lower[half:], *upper[half:], *lines, 0.0], dtype=float)
    values = values[np.isfinite(values)]
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.12 or max(abs(high), 1e-6) * 0.5
    return low - pad, high + pad


def _verdict(look: Look | None, metric: str) -> LookVerdict | None:
    if look is None:
        return None
    return next((v for v in look.verdicts if v.metric == metric), None)


def _weight_at(points: Sequence[tuple[float, float]], at: float) -> float:
    """The weight in force at ``at``: the last change at or before it (the first before any)."""
    i = bisect.bisect_right(points, at, key=lambda p: p[0])
    return points[max(i - 1, 0)][1]


_TITLES: Final = {"rate": " (canary - primary, pp)", "ratio": " (canary / primary - 1, %)", "plain": " (canary - primary)"}


def _time(epoch: float) -> dt.datetime:
    return naive(dt.datetime.fromtimestamp(epoch, dt.UTC))

