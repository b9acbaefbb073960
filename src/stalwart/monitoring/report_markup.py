"""HTML pieces every report page shares (the monitoring report, the rollout report): the
page around a body, the style sheet, tables, cards, figures, and how numbers and times are
written.

A page is self-contained: CSS inline, no script, no font, no image fetched. Every string
from data goes through :func:`escape`; the pieces here escape what they are given, except
``svg`` (matplotlib's markup, escaped by matplotlib) and a table's rows (markup the caller
built from escaped parts).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence

from stalwart._version import __version__
from stalwart.monitoring.report_figures import scope_ids

__all__ = ["CSS", "card", "escape", "figure", "footer", "num", "p_value", "page", "pct", "span", "table", "time"]


def page(title: str, body: str, *, css: str = "") -> str:
    """One HTML document: ``title`` (escaped here), the shared :data:`CSS` and ``css``
    after it, and ``body`` (markup) in ``<main>``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}{css}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def footer(generated_at: dt.datetime | None) -> str:
    """The line at the foot of a page: the version, when it was generated (when known)."""
    generated = "" if generated_at is None else f" · generated {escape(time(generated_at))}"
    return f"<footer>Stalwart {escape(__version__)}{generated} · self-contained: this file fetches nothing</footer>"


def escape(text: object) -> str:
    """Escaped for HTML text and quoted attributes: every string from data goes through here."""
    return html.escape(str(text), quote=True)


def figure(svg: str, kind: str, caption: str) -> str:
    """A plot (inline SVG, its ids prefixed with ``kind``) and its caption (escaped).
    ``kind`` is a fixed word (``data-plot``, the ids' prefix), never data."""
    return f"<figure class=plot data-plot={kind}>{scope_ids(svg, kind + '-')}<figcaption>{escape(caption)}</figcaption></figure>"


def table(headers: Sequence[str], rows: Sequence[str]) -> str:
    """A table with ``headers`` (escaped) over ``rows`` (each a ``<tr>`` of markup)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def card(title: str, value: str, detail: str, bad: bool) -> str:
    """A summary card: a label, a big value and a line of detail (all escaped)."""
    return (
        f'<div class="card{" bad" if bad else ""}"><div class=label>{escape(title)}</div>'
        f"<div class=value>{escape(value)}</div><div class=detail>{escape(detail)}</div></div>"
    )


def num(value: float | None) -> str:
    """Three significant digits; large numbers in full with separators; "—" for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:,.0f}"


def p_value(value: float | None) -> str:
    """A p-value: two significant digits, scientific below 1e-4; "—" for none."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal; "—" for none."""
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def time(value: dt.datetime, *, seconds: bool = False) -> str:
    """A time in UTC, to the minute (or the second)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def span(delta: dt.timedelta) -> str:
    """A duration in its largest whole unit: ``3.5 h``, ``12 min``, ``40 s``."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bad:#b91c1c;--badbg:#fef2f2;--good:#047857;--goodbg:#ecfdf5;
--warn:#d97706;--info:#2563eb;--ref:#9aa5b1;--cur:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#f9fafb;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px}
header h1{margin:0;font-size:22px;font-weight:600}
header .name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef2ff;padding:1px 6px;border-radius:4px}
.window{color:var(--muted);margin:4px 0 10px}
nav{display:flex;flex-wrap:wrap;gap:14px;border-bottom:1px solid var(--line);padding-bottom:8px}
nav a{color:var(--cur);text-decoration:none}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 10px;font-size:18px;font-weight:600}
h3{margin:16px 0 8px;font-size:15px;font-weight:600}
.verdict{font-weight:600;padding:8px 12px;border-radius:6px;margin:0 0 12px}
.verdict.bad{color:var(--bad);background:var(--badbg)}
.verdict.good{color:var(--good);background:var(--goodbg)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 12px}
.card.bad{border-color:var(--bad)}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:24px;font-weight:600}
.card.bad .value{color:var(--bad)}
.card .detail{color:var(--muted);font-size:12px}
.explain,.empty,.note,figcaption{color:var(--muted)}
.empty{font-style:italic}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere;min-width:14ch}
tr.drifted td.name{color:var(--bad);font-weight:600}
.verdict-tag{font-size:12px;padding:0 6px;border-radius:8px;white-space:nowrap}
.verdict-tag.bad{color:var(--bad);background:var(--badbg)}
.verdict-tag.good{color:var(--good);background:var(--goodbg)}
.badge{font-size:12px;padding:0 6px;border-radius:8px;color:#fff;background:var(--muted)}
.badge.critical{background:var(--bad)}.badge.warning{background:var(--warn)}.badge.info{background:var(--info)}
ul.firing{margin:0;padding-left:20px}
figure{margin:8px 0}
figure.plot svg{display:block;width:100%;height:auto}
figcaption{font-size:12px;margin-top:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
figure.small{border:1px solid var(--line);border-radius:6px;padding:6px;margin:0}
figure.small.drifted{border-color:var(--bad)}
figure.small figcaption{color:var(--fg);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
figure.small .meta{font-family:system-ui,sans-serif;color:var(--muted)}
.legend .swatch{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px;border-radius:2px}
.swatch.reference{background:var(--ref)}.swatch.current{background:var(--cur)}.swatch.drifted{background:var(--bad)}
footer{color:var(--muted);font-size:12px;text-align:center;margin:24px 0}
"""
"""The shared style sheet; a page adds its own rules after it (:func:`page`)."""
