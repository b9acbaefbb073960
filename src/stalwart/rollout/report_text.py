"""``stalwart rollout status``: a rollout's state, its last look and its recent decisions as
terminal tables (rich).

Strings from data are ``Text``, never markup, so a deployment named ``[red]x`` prints as
written. Numbers read as in the HTML report (:mod:`stalwart.rollout.report_numbers`).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from stalwart.rollout import report_numbers as numbers
from stalwart.rollout.history import RolloutHistory

__all__ = ["RECENT_DECISIONS", "status_table"]

RECENT_DECISIONS: Final = 8
"""Decisions listed (the newest); the HTML report lists them all."""

_STATE_STYLE: Final = {"running": "bold blue", "paused": "yellow", "held": "bold yellow", "promoted": "bold green", "rolled_back": "bold red"}
_DECISION_STYLE: Final = {"pass": "green", "fail": "bold red", "inconclusive": "dim"}
_KIND_STYLE: Final = {"promote": "green", "rollback": "bold red", "hold": "yellow", "pause": "yellow", "resume": "blue"}
_RECOMMENDATION_STYLE: Final = {"promote": "green", "rollback": "bold red", "hold": "yellow", "continue": ""}


def status_table(history: RolloutHistory) -> RenderableType:
    """Everything ``stalwart rollout status`` prints for ``history``, as one rich renderable:
    a headline (deployment, primary → canary, state and why, step and weight, times, the
    last recommendation and sample-ratio test), the last look's verdicts, recent decisions."""
    return Group(_headline(history), _verdicts(history), _decisions(history))


def _headline(h: RolloutHistory) -> Text:
    text = Text()
    text.append(h.deployment, style="bold")
    text.append("  ")
    text.append(h.primary)
    text.append(" → ")
    text.append(h.canary, style="bold")
    text.append(f"  (rollout {h.id})\n", style="dim")
    text.append(h.state.replace("_", " "), style=_STATE_STYLE.get(h.state, "bold"))
    if h.reason:
        text.append(f": {h.reason}")
    steps = len(h.plan.steps)
    text.append(f"\nstep {h.step + 1}{f' of {steps}' if steps else ''}, canary weight {_pct(h.weight)}")
    ended = h.ended
    text.append(f"\nstarted {_when(h.started)}" + (f", ended {_when(ended)}" if ended else ""), style="dim")
    looks = h.looks
    last = looks[-1].look if looks else None
    if last is None:
        text.append("\nno look yet", style="dim italic")
        return text
    text.append(f"\n{len(looks):,} looks; the last recommends ")
    text.append(last.recommendation or "—", style=_RECOMMENDATION_STYLE.get(last.recommendation, "bold"))
    if last.reason:
        text.append(f" ({last.reason})")
    if last.srm is not None:
        text.append("\nsample ratio: ")
        text.append("MISMATCH" if last.srm.mismatch else "ok", style="bold red" if last.srm.mismatch else "green")
        p = "—" if last.srm.p_value is None else f"{last.srm.p_value:.2g}"
        text.append(f" (p {p})", style="dim")
    return text


def _verdicts(h: RolloutHistory) -> RenderableType:
    last = h.last_look
    if last is None or not last.verdicts:
        return Text("")
    rules = {r.name: r for r in h.plan.rules}
    table = Table(title="the last look, metric by metric", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("metric", overflow="fold", min_width=10)
    table.add_column("decision")
    for name in ("canary", "primary", "effect", "interval", "tolerance"):
        table.add_column(name, justify="right")
    table.add_column("n canary / primary", justify="right")
    for v in last.verdicts:
        unit = numbers.metric_unit(rules.get(v.metric), v)
        table.add_row(
            Text(v.metric),
            Text(v.decision, style=_DECISION_STYLE.get(v.decision, "")),
            numbers.level(v.canary, unit),
            numbers.level(v.primary, unit),
            numbers.effect(v.effect, unit),
            numbers.interval(v.lower, v.upper, unit),
            numbers.tolerance(v, unit),
            f"{v.n_canary:,} / {v.n_primary:,}",
        )
    return table


def _decisions(h: RolloutHistory) -> RenderableType:
    decisions = h.decisions
    if not decisions:
        return Text("no decision recorded yet", style="dim italic")
    listed = decisions[-RECENT_DECISIONS:]
    older = len(decisions) - len(listed)
    title = "decisions" + (f" (the newest {len(listed)}; {older:,} older)" if older else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("actor")
    table.add_column("decision")
    table.add_column("weight", justify="right")
    table.add_column("reason", overflow="fold", ratio=1)
    for event in listed:
        table.add_row(
            _when(event.time, zone=False), Text(event.actor or "—"), Text(event.kind, style=_KIND_STYLE.get(event.kind, "")),
            _pct(event.weight), Text(event.reason or ""),
        )
    return table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _when(value: dt.datetime, *, zone: bool = True) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))

