"""The console's live sparklines: a few seconds' numbers as a small inline SVG.

The analytical plots (drift, distributions, quality, alerts, rollouts, shadows) are the
reports' own, drawn by matplotlib (:mod:`stalwart.monitoring.report_plots`,
:mod:`stalwart.rollout.report_plots`). A sparkline is redrawn for every deployment every few
seconds, which matplotlib is too slow for (tens of milliseconds a figure) and which needs no
axis: one polyline over a baseline, built here from numbers only (no text from data), so
it needs no escaping beyond its fixed label.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["bars", "sparkline"]


def sparkline(values: Sequence[float | None], label: str, *, width: int = 120, height: int = 28) -> str:
    """An SVG sparkline of ``values`` (oldest first; None leaves a gap), scaled from zero to
    their largest value; ``label`` is its accessible name and tooltip. With no value at all
    it is a bare baseline."""
    pad = 2.0
    top = max((v for v in values if v is not None), default=0.0)
    scale = (height - 2 * pad) / top if top > 0 else 0.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    lines: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if lines[-1]:
                lines.append([])
            continue
        x = pad + i * step
        y = height - pad - value * scale
        lines[-1].append(f"{x:.1f},{y:.1f}")
    paths = "".join(f'<polyline class=line points="{" ".join(points)}"/>' for points in lines if len(points) > 1)
    dots = "".join(
        f'<circle class=line cx="{points[0].split(",")[0]}" cy="{points[0].split(",")[1]}" r="1.2"/>'
        for points in lines if len(points) == 1
    )
    name = html.escape(label, quote=True)
    return (
        f'<svg class=spark viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{name}"><title>{name}</title>'
        f'<line class=base x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"/>{paths}{dots}</svg>'
    )


def bars(items: Sequence[tuple[str, float]], label: str, *, width: int = 420) -> str:
    """Horizontal bars, one per ``(name, value)``, scaled to the largest value, each with
    its name (escaped) and value: a record's milliseconds per stage."""
    row, name_width, pad = 18, 110, 4
    top = max((v for _, v in items), default=0.0)
    scale = (width - name_width - 70) / top if top > 0 else 0.0
    parts = []
    for i, (name, value) in enumerate(items):
        y = pad + i * row
        length = max(value * scale, 1.0)
        parts.append(
            f'<text class=label x="0" y="{y + 12}">{html.escape(str(name)[:18])}</text>'
            f'<rect class=bar x="{name_width}" y="{y + 2}" width="{length:.1f}" height="{row - 6}"/>'
            f'<text class=value x="{name_width + length + 4:.1f}" y="{y + 12}">{value:.3g} ms</text>'
        )
    height = 2 * pad + row * len(items)
    title = html.escape(label, quote=True)
    return (
        f'<svg class=bars viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>{"".join(parts)}</svg>'
    )
