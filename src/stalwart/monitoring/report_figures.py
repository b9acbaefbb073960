"""Figures as inline SVG: the matplotlib set-up every HTML report shares (the monitoring
report, the rollout report).

No pyplot: each plot is a bare :class:`~matplotlib.figure.Figure` drawn by the SVG canvas,
so nothing touches matplotlib's global backend. Text stays text (``svg.fonttype: none``:
a tenth of the size of glyph outlines, and the browser's fonts); mathtext is off, so a name
like ``$x$`` is drawn as written; matplotlib escapes text for XML. :func:`scope_ids` gives
each plot on a page ids of its own. matplotlib (the ``report`` extra) is imported on first
use, so importing this module costs nothing.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import threading
from collections.abc import Callable
from typing import Any, Final

from stalwart._optional import require

__all__ = ["COLORS", "CYCLE", "Window", "clip", "matplotlib_module", "naive", "nan", "render_svg", "scope_ids", "time_axis"]

COLORS: Final = {
    "reference": "#9aa5b1",
    "current": "#1d4ed8",
    "drifted": "#b91c1c",
    "threshold": "#6b7280",
    "critical": "#b91c1c",
    "warning": "#d97706",
    "info": "#2563eb",
}
"""The reports' named colours (the CSS of :mod:`stalwart.monitoring.report_markup` uses the same)."""

CYCLE: Final = ("#1d4ed8", "#b91c1c", "#047857", "#7c3aed", "#d97706", "#0e7490", "#be185d", "#4b5563", "#65a30d")
"""Colours for series that have no meaning of their own, in order."""

Window = tuple[dt.datetime, dt.datetime]
"""A plot's span of time, (start, end): the x axis of every plot over time on a page."""

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
# Every reference to an id inside matplotlib's SVG: the id itself, url(#...) in clip paths
# and fills, and xlink:href="#..." for reused markers.
_ID_REF = re.compile(r'(\bid="|url\(#|xlink:href="#)')


def render_svg(size: tuple[float, float], draw: Callable[[Any], None]) -> str:
    """A bare Figure of ``size`` inches, drawn by ``draw`` under the reports' rcParams, as
    inline SVG (no XML declaration); one at a time (rcParams are process-wide).

    The same drawing renders to the same bytes: a fixed hash salt and no metadata."""
    matplotlib = matplotlib_module("matplotlib")
    figure = matplotlib_module("matplotlib.figure")
    backend = matplotlib_module("matplotlib.backends.backend_svg")
    with _LOCK, matplotlib.rc_context({**_RC, "svg.hashsalt": "stalwart"}):
        fig = figure.Figure(figsize=size)
        draw(fig)
        buffer = io.StringIO()
        # No metadata: a date would make two renders of one document differ.
        backend.FigureCanvasSVG(fig).print_svg(buffer, metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    # Inline SVG in HTML: drop the XML declaration and DOCTYPE before the root element.
    return text[text.index("<svg") :].strip()


def scope_ids(svg: str, prefix: str) -> str:
    """``svg`` with every id (and every reference to one) prefixed by ``prefix``: plots
    inlined in one page each need their own (an id is global to the HTML document)."""
    return _ID_REF.sub(lambda m: m.group(1) + prefix, svg)


def matplotlib_module(module: str) -> Any:
    """``matplotlib`` or one of its modules, or :class:`~stalwart.errors.MissingExtraError`
    naming the ``report`` extra."""
    return require(module, extra="report", purpose="plots in the HTML reports (stalwart monitor report, stalwart rollout report)")


def time_axis(ax: Any, window: Window, ticks: int = 8, *, min_ticks: int = 5) -> None:
    """Dates on the x axis, spanning ``window``: every plot over time on a page lines up,
    and a series of one point still has a width. ``ticks`` and ``min_ticks`` bound the
    number of ticks (matplotlib's ``AutoDateLocator``; its default ``min_ticks`` of 5 leaves
    some spans with no interval that fits, and it warns: 2 with ``ticks >= 5``, or 3 with
    ``ticks >= 8``, fit every span from seconds to years)."""
    ax.set_xlim(naive(window[0]), naive(window[1]))
    mdates = matplotlib_module("matplotlib.dates")
    locator = mdates.AutoDateLocator(minticks=min_ticks, maxticks=ticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def naive(value: dt.datetime) -> dt.datetime:
    """UTC without a zone: matplotlib's dates, read as UTC on every axis ("UTC" labels it)."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def nan(value: float | None) -> float:
    """``value`` as a float, NaN for None (matplotlib leaves a gap there)."""
    return math.nan if value is None else float(value)


def clip(text: str, limit: int = 32) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut (labels in plots)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
