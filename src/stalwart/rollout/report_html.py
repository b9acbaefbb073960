"""The rollout report: one self-contained HTML page of a canary rollout's history
(``stalwart rollout report NAME -o rollout.html``).

:func:`render` turns a :class:`~stalwart.rollout.history.RolloutHistory` into a page that
opens anywhere without a network: the monitoring report's style and pieces
(:mod:`stalwart.monitoring.report_markup`), plots as inline SVG
(:mod:`stalwart.rollout.report_plots`), no script. Every string from data (names, reasons,
actors, metric names, summary keys) is escaped.

Sections, in order: summary (state and why, step and weight, the last recommendation, the
sample-ratio test), the canary's weight over time with its decisions, each metric's effect
and interval over the looks, requests per arm, the last look's verdicts and arm summaries,
every decision, the sample-ratio test. The page's size is bounded whatever the history
holds: at most :data:`MAX_LOOKS_DRAWN` looks are drawn (evenly thinned, the page says so),
at most :data:`MAX_DECISION_ROWS` decisions listed (the newest) and
:data:`MAX_SUMMARY_ROWS` summary rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from stalwart.monitoring import report_markup as markup
from stalwart.monitoring.report_figures import Window
from stalwart.monitoring.report_markup import escape as _e
from stalwart.rollout import report_numbers as numbers
from stalwart.rollout import report_plots as plots
from stalwart.rollout.history import Event, Look, LookVerdict, RolloutHistory

__all__ = ["CSS", "MAX_DECISION_ROWS", "MAX_LOOKS_DRAWN", "MAX_SUMMARY_ROWS", "render", "report_sections"]

MAX_LOOKS_DRAWN = 400
"""Looks drawn in the plots; past it they are thinned evenly (the first and last kept)."""
MAX_DECISION_ROWS = 500
"""Decisions listed in the table (the newest); the weight chart marks them all, thinned."""
MAX_SUMMARY_ROWS = 40
"""Rows of the last look's arm summaries (its numbers, by name)."""

# How the page names and colours each state of a rollout.
_STATES: Final = {
    "running": ("Running", "info"),
    "paused": ("Paused", "warn"),
    "held": ("Held: waiting for a person", "warn"),
    "promoted": ("Promoted", "good"),
    "rolled_back": ("Rolled back", "bad"),
}
_NO_LOOK: Final = "No look yet: the controller judges the canary every {every}; this section fills in after its first look."


def render(history: RolloutHistory, *, now: float | None = None) -> str:
    """The rollout's report as one HTML page (a string): self-contained, no network needed
    to open it. ``now`` (epoch seconds) ends a running rollout's time axis and dates the
    page; without it the axis ends at the last event, so the same history renders to the
    same bytes. Needs matplotlib (``pip install 'stalwart[report]'``)."""
    footer = markup.footer(None if now is None else dt.datetime.fromtimestamp(now, dt.UTC))
    body = "\n".join([_header(history), *report_sections(history, now=now).values(), footer])
    return markup.page(f"Rollout report: {history.deployment}", body, css=CSS)


def report_sections(history: RolloutHistory, *, now: float | None = None) -> dict[str, str]:
    """The report's sections as markup, by their ids (``summary``, ``weight``, ``metrics``,
    ``requests``, ``verdicts``, ``decisions``, ``srm``), in page order: the page
    :func:`render` makes, and the console's rollout page, show the same (styled by
    :data:`CSS` after the shared style sheet)."""
    looks = history.looks
    drawn = plots.thin(looks, MAX_LOOKS_DRAWN)
    window = _window(history, now)
    return {
        "summary": _summary(history, looks),
        "weight": _weight(history, window),
        "metrics": _metrics(history, looks, drawn, window),
        "requests": _requests(history, looks, drawn, window),
        "verdicts": _verdicts(history, looks),
        "decisions": _decisions(history),
        "srm": _srm(history, looks),
    }


# -- sections -------------------------------------------------------------------------


def _header(h: RolloutHistory) -> str:
    ended = h.ended
    span = f"{_when(h.started)} → {_when(ended)} ({markup.span(ended - h.started)})" if ended else f"since {_when(h.started)}"
    return (
        f"<header><h1>Rollout report <span class=name>{_e(h.deployment)}</span></h1>"
        f"<p class=window><span class=name>{_e(h.primary)}</span> → <span class=name>{_e(h.canary)}</span>"
        f" · rollout {h.id} · {_e(span)}</p>"
        '<nav><a href="#summary">Summary</a><a href="#weight">Weight</a><a href="#metrics">Metrics</a>'
        '<a href="#requests">Requests</a><a href="#verdicts">Last look</a><a href="#decisions">Decisions</a>'
        '<a href="#srm">Sample ratio</a></nav></header>'
    )


def _summary(h: RolloutHistory, looks: Sequence[Event]) -> str:
    label, tone = _STATES.get(h.state, (h.state, "info"))
    reason = f": {h.reason}" if h.reason else ""
    steps = len(h.plan.steps)
    step = f"{h.step + 1} of {steps}" if steps else str(h.step + 1)
    last = looks[-1].look if looks else None
    srm = last.srm if last is not None else None
    cards = [
        markup.card("state", label.split(":")[0], h.reason or "", tone == "bad"),
        markup.card("step", step, f"canary weight {markup.pct(h.weight)}", False),
        markup.card(
            "looks", f"{len(looks):,}",
            f"last recommendation: {last.recommendation or '—'}" if last is not None else "no look yet",
            last is not None and last.recommendation in ("rollback", "hold"),
        ),
        markup.card(
            "sample ratio", "—" if srm is None else ("MISMATCH" if srm.mismatch else "ok"),
            "no test yet" if srm is None else f"p {markup.p_value(srm.p_value)} over {_count(srm.total)} requests",
            srm is not None and srm.mismatch,
        ),
    ]
    parts = [
        f'<section id=summary><h2>Summary</h2><p class="verdict {tone}">{_e(label + reason)}</p>',
        f"<div class=cards>{''.join(cards)}</div>",
    ]
    if h.plan.steps:
        plan = ", ".join(
            f"{markup.pct(s.weight)} for ≥ {markup.span(dt.timedelta(seconds=s.min_seconds))} and ≥ {s.min_requests:,} requests"
            for s in h.plan.steps
        )
        parts.append(f"<p class=explain>Plan: {_e(plan)}; then promote.</p>")
    parts.append("</section>")
    return "".join(parts)


def _weight(h: RolloutHistory, window: Window) -> str:
    svg = plots.weight_plot(h, window=window)
    caption = (
        "The canary's share of traffic over time; each marker a decision (its kind labelled; "
        "steps are the controller advancing the plan)."
    )
    parts = [f"<section id=weight><h2>Canary weight</h2>{markup.figure(svg, 'weight', caption)}"]
    marked = sum(1 for e in h.decisions if e.kind in plots.EVENT_STYLES or e.weight is not None)
    if marked > plots.MAX_MARKERS:
        parts.append(f"<p class=empty>{marked:,} decisions: {plots.MAX_MARKERS} of them marked, evenly spaced; the table lists the newest.</p>")
    parts.append("</section>")
    return "".join(parts)


def _metrics(h: RolloutHistory, looks: Sequence[Event], drawn: Sequence[Event], window: Window) -> str:
    parts = ["<section id=metrics><h2>Metrics: canary against primary</h2>"]
    if not looks:
        parts.append(_no_look(h))
    else:
        names = plots.metric_names(h, [e.look for e in looks[-1:] if e.look is not None])
        svg = plots.effects_plot(h, drawn, names, window=window)
        caption = (
            "Each metric's effect (canary - primary; latency as a ratio) at every look, coloured by the look's decision "
            "(green pass, red fail, grey inconclusive), inside its anytime-valid interval (the band); dashed: the "
            "tolerance; dotted: no difference. The axis may cut the widest early intervals."
        )
        parts.append(markup.figure(svg, "metrics", caption))
        parts.append(_thinned(looks, drawn))
        if len(names) > plots.MAX_METRIC_PANELS:
            parts.append(f"<p class=empty>{len(names) - plots.MAX_METRIC_PANELS} more metrics not drawn; the table of the last look lists them all.</p>")
    parts.append("</section>")
    return "".join(parts)


def _requests(h: RolloutHistory, looks: Sequence[Event], drawn: Sequence[Event], window: Window) -> str:
    parts = ["<section id=requests><h2>Requests per arm</h2>"]
    if not looks:
        parts.append(_no_look(h))
    else:
        svg = plots.requests_plot(drawn, window=window)
        parts.append(markup.figure(svg, "requests", "Requests each arm had in the window of every look; a red cross: "
                                   "that look's sample-ratio test found a mismatch."))
        parts.append(_thinned(looks, drawn))
    parts.append("</section>")
    return "".join(parts)


def _verdicts(h: RolloutHistory, looks: Sequence[Event]) -> str:
    parts = ["<section id=verdicts><h2>The last look</h2>"]
    event = looks[-1] if looks else None
    look = event.look if event is not None else None
    if event is None or look is None:
        parts.append(_no_look(h))
        parts.append("</section>")
        return "".join(parts)
    tone = {"rollback": "bad", "hold": "warn", "promote": "good"}.get(look.recommendation, "info")
    parts.append(
        f'<p class="verdict {tone}">Recommendation: {_e(look.recommendation or "—")}'
        f"{': ' + _e(look.reason) if look.reason else ''}</p>"
    )
    window = f" over {_when(look.window.start)} → {_when(look.window.end)}" if look.window is not None else ""
    parts.append(f"<p class=explain>Look at {_e(_when(event.time))}{_e(window)}, step {_e(_step(event))}, canary weight {markup.pct(event.weight)}.</p>")
    rules = {r.name: r for r in h.plan.rules}
    rows = [_verdict_row(v, numbers.metric_unit(rules.get(v.metric), v)) for v in look.verdicts]
    if rows:
        parts.append(markup.table(
            ["metric", "decision", "canary", "primary", "effect", "relative effect", "interval", "tolerance",
             "p-value", "n canary / primary"],
            rows,
        ))
        parts.append(
            "<p class=explain>Rates in %, their effects in percentage points (pp); log-scale metrics (latency) as "
            "geometric means, their effects as the ratio canary / primary - 1. The interval is anytime-valid: "
            "it may be read at every look.</p>"
        )
    else:
        parts.append("<p class=empty>The look judged no metric.</p>")
    parts.append(_arm_summaries(look))
    parts.append("</section>")
    return "".join(parts)


def _verdict_row(v: LookVerdict, unit: numbers.Unit) -> str:
    return (
        f"<tr class=decision-{_tag(v.decision)}><td class=name>{_e(v.metric)}</td><td>{_decision(v.decision)}</td>"
        f"<td class=num>{_e(numbers.level(v.canary, unit))}</td><td class=num>{_e(numbers.level(v.primary, unit))}</td>"
        f"<td class=num>{_e(numbers.effect(v.effect, unit))}</td><td class=num>{markup.pct(v.relative_effect)}</td>"
        f"<td class=num>{_e(numbers.interval(v.lower, v.upper, unit))}</td><td class=num>{_e(numbers.tolerance(v, unit))}</td>"
        f"<td class=num>{markup.p_value(v.p_value)}</td><td class=num>{v.n_canary:,} / {v.n_primary:,}</td></tr>"
        f"<tr class=why><td></td><td colspan=9>{_e(v.reason)}</td></tr>"
    )


def _arm_summaries(look: Look) -> str:
    primary, canary = look.summary.get("primary") or {}, look.summary.get("canary") or {}
    keys = list(dict.fromkeys([*primary, *canary]))
    shown = [k for k in keys if _scalar(primary.get(k)) or _scalar(canary.get(k))]
    if not shown:
        return ""
    rows = [
        f"<tr><td class=name>{_e(k)}</td><td class=num>{_e(_value(primary.get(k)))}</td><td class=num>{_e(_value(canary.get(k)))}</td></tr>"
        for k in shown[:MAX_SUMMARY_ROWS]
    ]
    more = f"<p class=empty>{len(shown) - MAX_SUMMARY_ROWS} more numbers not listed.</p>" if len(shown) > MAX_SUMMARY_ROWS else ""
    return "<h3>Arms at the last look</h3>" + markup.table(["", "primary", "canary"], rows) + more


def _decisions(h: RolloutHistory) -> str:
    parts = ["<section id=decisions><h2>Decisions</h2>"]
    decisions = h.decisions
    if not decisions:
        parts.append("<p class=empty>No decision recorded yet.</p>")
    else:
        listed = decisions[-MAX_DECISION_ROWS:]
        if len(decisions) > len(listed):
            parts.append(f"<p class=empty>{len(decisions) - len(listed):,} older decisions not listed; the newest {len(listed):,} follow.</p>")
        rows = [
            f"<tr class=kind-{_tag(e.kind)}><td class=time>{_e(_when(e.time))}</td><td class=name>{_e(e.actor or '—')}</td>"
            f"<td>{_kind(e.kind)}</td><td class=num>{_e(_step(e))}</td><td class=num>{markup.pct(e.weight)}</td>"
            f"<td class=reason>{_e(e.reason or '')}</td><td class=detail>{_e(_details(e.detail))}</td></tr>"
            for e in listed
        ]
        parts.append(markup.table(["time", "actor", "decision", "step", "weight after", "reason", "details"], rows))
    parts.append("</section>")
    return "".join(parts)


def _srm(h: RolloutHistory, looks: Sequence[Event]) -> str:
    parts = ["<section id=srm><h2>Sample ratio</h2>"]
    tested = [(e, e.look.srm) for e in looks if e.look is not None and e.look.srm is not None]
    if not tested:
        parts.append("<p class=empty>No sample-ratio test yet: it runs at every look.</p>")
        parts.append("</section>")
        return "".join(parts)
    event, srm = tested[-1]
    verdict = (
        "Mismatch: the canary's share of requests is credibly not its weight (a routing bug, or an arm that "
        "drops or duplicates requests); its verdicts may be biased."
        if srm.mismatch
        else "No mismatch: the arms' requests match the weight."
    )
    parts.append(f'<p class="verdict {"bad" if srm.mismatch else "good"}">{_e(verdict)}</p>')
    look = event.look
    canary = plots.arm_requests(look, "canary") if look is not None else None
    primary = plots.arm_requests(look, "primary") if look is not None else None
    observed = canary / (canary + primary) if canary is not None and primary and canary + primary > 0 else None
    rows = [
        f"<tr><td class=time>{_e(_when(event.time))}</td><td class=num>{markup.num(srm.chi2)}</td><td class=num>{markup.p_value(srm.p_value)}</td>"
        f"<td class=num>{markup.p_value(srm.threshold)}</td><td class=num>{_e(_count(srm.total))}</td>"
        f"<td class=num>{markup.pct(event.weight)}</td><td class=num>{markup.pct(observed)}</td></tr>"
    ]
    parts.append(markup.table(["look", "chi²", "p-value", "threshold", "requests tested", "canary weight", "canary share of the window"], rows))
    flagged = sum(1 for _, s in tested if s.mismatch)
    parts.append(f"<p>{flagged:,} of {len(tested):,} looks found a mismatch.</p>")
    parts.append("</section>")
    return "".join(parts)


# -- small pieces ---------------------------------------------------------------------


def _window(h: RolloutHistory, now: float | None) -> Window:
    start = min([h.started_at, *(e.at for e in h.events[:1])])
    ends = [start, *(e.at for e in h.events[-1:])]
    if h.ended_at is not None:
        ends.append(h.ended_at)
    elif now is not None:
        ends.append(now)
    end = max(ends)
    # A little room after the last event, and a width for a rollout that just started.
    end = max(end + (end - start) * 0.02, start + 60.0)
    return dt.datetime.fromtimestamp(start, dt.UTC), dt.datetime.fromtimestamp(end, dt.UTC)


def _thinned(looks: Sequence[Event], drawn: Sequence[Event]) -> str:
    if len(drawn) == len(looks):
        return ""
    return f"<p class=empty>{len(looks):,} looks: {len(drawn):,} of them drawn, evenly spaced (the first and the last among them).</p>"


def _no_look(h: RolloutHistory) -> str:
    every = "few seconds" if h.plan.look_seconds is None else markup.span(dt.timedelta(seconds=h.plan.look_seconds))
    return f"<p class=empty>{_e(_NO_LOOK.format(every=every))}</p>"


def _decision(decision: str) -> str:
    return f'<span class="tag {_tag(decision)}">{_e(decision)}</span>'


def _kind(kind: str) -> str:
    return f'<span class="tag {_tag(kind)}">{_e(kind)}</span>'


def _tag(word: str) -> str:
    """A CSS class for a known word, "other" for anything else (data never names a class)."""
    return word if word in _TAGS else "other"


_TAGS: Final = frozenset(
    ("pass", "fail", "inconclusive", "start", "step", "weight", "pause", "resume", "hold", "promote", "rollback", "look")
)


def _step(event: Event) -> str:
    return "—" if event.step is None else str(event.step + 1)


def _when(value: dt.datetime) -> str:
    return markup.time(value, seconds=True)


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _scalar(value: object) -> bool:
    # Numbers, words and nulls; nested objects are left out of a table cell.
    return value is None or isinstance(value, (int, float, str, bool))


def _value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return markup.num(value)
    return str(value)[:80]


def _details(detail: Mapping[str, Any]) -> str:
    """A decision's other numbers, ``key=value``, at most eight of them, each short."""
    items = [(k, v) for k, v in detail.items() if k != "reason" and _scalar(v)]
    text = ", ".join(f"{str(k)[:32]}={_value(v)}" for k, v in items[:8])
    return text + (f", … {len(items) - 8} more" if len(items) > 8 else "")


CSS = """
.verdict.warn{color:#92400e;background:#fffbeb}
.verdict.info{color:#1e3a8a;background:#eff6ff}
header .window .name{font-size:13px}
.tag{font-size:12px;padding:0 6px;border-radius:8px;white-space:nowrap;background:#f3f4f6;color:var(--fg)}
.tag.pass,.tag.promote{color:var(--good);background:var(--goodbg)}
.tag.fail,.tag.rollback{color:var(--bad);background:var(--badbg)}
.tag.hold,.tag.pause{color:#92400e;background:#fffbeb}
.tag.resume,.tag.step,.tag.start,.tag.weight{color:#1e3a8a;background:#eff6ff}
tr.decision-fail td.name{color:var(--bad);font-weight:600}
td.reason{min-width:24ch}
td.time{white-space:nowrap;font-variant-numeric:tabular-nums}
td.detail{color:var(--muted);font-size:12px;min-width:14ch}
tr.why td{color:var(--muted);font-size:12px;border-bottom:1px solid var(--line);padding-top:0}
tbody tr:has(+ tr.why) td{border-bottom:none}
"""
"""The rollout report's own style rules, after the shared style sheet."""
