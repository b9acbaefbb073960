"""The rollout report: one self-contained page of a rollout's history that draws the weight,
the metrics and the requests over time, lists the last look's numbers and every decision,
escapes whatever the data holds, stays bounded however long the rollout ran, and renders for
a rollout that has not looked yet; and the terminal view ``stalwart rollout status`` prints."""

from __future__ import annotations

import copy
import html
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from stalwart.errors import ConfigError, MissingExtraError
from stalwart.rollout import report_html
from stalwart.rollout import report_numbers as numbers
from stalwart.rollout.history import RolloutHistory
from stalwart.rollout.report_html import MAX_LOOKS_DRAWN, render
from stalwart.rollout.report_plots import thin
from stalwart.rollout.report_text import status_table
from tests.browser import headless_chromium
from tests.rollout.history_factory import NASTY, just_started, many_looks, promoted, rolled_back

PLOTS = ("weight", "metrics", "requests")
SECTIONS = ["summary", "weight", "metrics", "requests", "verdicts", "decisions", "srm"]


def _history(rows: dict[str, Any]) -> RolloutHistory:
    return RolloutHistory.from_rows(rows["rollout"], rows["events"])


def _section(page: str, name: str) -> str:
    start = page.index(f"<section id={name}>")
    return page[start : page.index("</section>", start)]


def _figures(page: str) -> dict[str, str]:
    return dict(re.findall(r"<figure class=plot data-plot=(\w+)>(.*?)</figure>", page, flags=re.S))


@pytest.fixture(scope="module")
def promoted_history() -> RolloutHistory:
    return _history(promoted())


@pytest.fixture(scope="module")
def promoted_page(promoted_history: RolloutHistory) -> str:
    return render(promoted_history)


def test_a_promoted_rollout_draws_each_plot_as_inline_svg(promoted_page: str) -> None:
    """Weight, metrics and requests each get a figure holding an SVG, in the page's order of
    sections; nothing is fetched (no script, link, image)."""
    figures = _figures(promoted_page)
    assert list(figures) == list(PLOTS)
    for kind, body in figures.items():
        assert body.lstrip().startswith("<svg"), kind
        assert body.count("<path") >= 10, kind  # axes, ticks, lines: not an empty frame
    assert re.findall(r"<section id=([\w-]+)>", promoted_page) == SECTIONS
    lowered = promoted_page.lower()
    for pattern in ("<script", "<link", "<img", "<iframe", "@import", 'href="http', 'src="http', "url(http"):
        assert pattern not in lowered, pattern


def test_the_header_says_who_what_and_where_the_rollout_stands(promoted_history: RolloutHistory, promoted_page: str) -> None:
    """Deployment, primary → canary, the state with its reason, step of steps, the weight,
    and when it started and ended."""
    header = promoted_page[: promoted_page.index("<section id=weight>")]
    for text in ("fraud", "fraud:3", "fraud:4", "Promoted: every required rule passed at the last step", "4 of 4",
                 "canary weight 100.0%", "2024-05-01 12:00:00 UTC", "2024-05-01 12:42:06 UTC"):
        assert html.escape(text) in header, text
    assert promoted_history.state == "promoted"


def test_the_last_looks_numbers_are_on_the_page(promoted_history: RolloutHistory, promoted_page: str) -> None:
    """Every metric of the last look with its decision, each arm's value, the effect, the
    relative effect, the interval, the tolerance, the counts per arm and the reason."""
    last = promoted_history.last_look
    assert last is not None
    assert last.recommendation == "promote"
    section = _section(promoted_page, "verdicts")
    assert "Recommendation: promote" in section
    units = {"error_rate": "rate", "latency": "ratio"}
    for v in last.verdicts:
        unit = units[v.metric]
        row = section[section.index(f"<td class=name>{v.metric}</td>") :]
        row = row[: row.index("</tr>", row.index("class=why"))]
        for text in (
            v.decision, numbers.level(v.canary, unit), numbers.level(v.primary, unit), numbers.effect(v.effect, unit),
            numbers.interval(v.lower, v.upper, unit), numbers.tolerance(v, unit), f"{v.n_canary:,} / {v.n_primary:,}", v.reason,
        ):
            assert html.escape(text) in row, (v.metric, text)
        assert v.relative_effect is not None
        assert f"{100 * v.relative_effect:.1f}%" in row
    # Rates read as rates, latency as a ratio, not as a mean of log-seconds.
    assert " pp" in section
    assert "rise ≤ 0.50 pp" in section
    assert "rise ≤ 10.0%" in section
    summary = last.summary
    for arm in ("primary", "canary"):
        assert f"{summary[arm]['requests']:,}" in section


def test_every_decision_is_listed_with_its_actor_and_reason(promoted_history: RolloutHistory, promoted_page: str) -> None:
    """Each event that is not a look is a row: time, actor, kind, weight after it, reason."""
    decisions = promoted_history.decisions
    assert [e.kind for e in decisions] == ["start", "step", "pause", "resume", "step", "step", "promote"]
    section = _section(promoted_page, "decisions")
    rows = re.findall(r"<tr class=kind-(\w+)>(.*?)</tr>", section, flags=re.S)
    assert [kind for kind, _ in rows] == [e.kind for e in decisions]
    for (_, row), event in zip(rows, decisions, strict=True):
        assert html.escape(event.actor) in row
        assert html.escape(event.reason or "") in row
        assert f"{100 * (event.weight or 0):.1f}%" in row
    # The weight chart marks each kind, and labels the decisions a reader looks for.
    svg = _figures(promoted_page)["weight"]
    for kind in ("start", "pause", "resume", "promote"):
        assert f">{kind}</text>" in svg, kind


def test_a_rolled_back_rollout_says_why_and_shows_the_mismatch() -> None:
    """The state and its reason, the failed metric marked, the sample-ratio mismatch."""
    history = _history(rolled_back())
    page = render(history)
    assert "Rolled back: a rule that rolls back on failure failed: error_rate" in page
    verdicts = _section(page, "verdicts")
    assert "<tr class=decision-fail><td class=name>error_rate</td>" in verdicts
    assert "Recommendation: rollback" in verdicts
    srm = _section(page, "srm")
    last = history.last_look
    assert last is not None
    assert last.srm is not None
    assert last.srm.mismatch
    assert "Mismatch" in srm
    flagged = sum(1 for e in history.looks if e.look and e.look.srm and e.look.srm.mismatch)
    assert f"{flagged} of {len(history.looks)} looks found a mismatch" in srm
    assert "sample-ratio mismatch" in _figures(page)["requests"]  # the legend of the crosses
    decisions = _section(page, "decisions")
    assert "<tr class=kind-rollback>" in decisions
    assert "0.0%" in decisions


def test_a_rollout_that_just_started_renders() -> None:
    """Only a start event, no look: the weight is drawn; the metrics, requests, last look and
    sample-ratio sections say there is no look yet."""
    history = _history(just_started())
    assert history.looks == []
    assert history.last_look is None
    page = render(history)
    assert list(_figures(page)) == ["weight"]
    for name in ("metrics", "requests", "verdicts"):
        assert "No look yet: the controller judges the canary every 1 min" in _section(page, name)
    assert "No sample-ratio test yet" in _section(page, "srm")
    assert "Running" in _section(page, "summary")


def test_a_rollout_with_no_events_and_a_bare_row_renders() -> None:
    """The least a store can hand over (the required fields, no plan, no event) renders."""
    history = RolloutHistory.from_rows(
        {"id": 1, "deployment": "d", "canary": "m:2", "primary": "m:1", "state": "running", "started_at": 1.7e9}, []
    )
    page = render(history)
    assert list(_figures(page)) == ["weight"]
    assert "No decision recorded yet" in page


def test_every_string_from_the_data_is_escaped() -> None:
    """A deployment, model names, an actor, a reason, a metric and a summary key named like
    markup appear as text; mathtext dollars are drawn as written."""
    rows = promoted(looks_per_step=2)
    rows["rollout"] |= {"deployment": NASTY, "canary": '"><img src=x onerror=alert(1)>', "reason": "<b>bold</b> & co"}
    for event in rows["events"]:
        event["actor"] = NASTY if event["kind"] != "look" else event["actor"]
        if event["kind"] == "look":
            for verdict in event["detail"]["judgement"]["verdicts"]:
                if verdict["metric"] == "error_rate":
                    verdict["metric"] = "$x^2$ " + NASTY
            event["detail"]["summary"]["canary"][NASTY] = NASTY
        else:
            event["detail"]["reason"] = NASTY
    page = render(_history(rows))
    for markup in ("<script>", "<img", "<b>bold"):
        assert markup not in page, markup
    assert html.escape(NASTY) in _section(page, "verdicts")  # the metric and the summary key
    assert page.count(html.escape(NASTY)) >= 10
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "$x^2$" in _figures(page)["metrics"]  # drawn as written, not as mathtext
    title = page[page.index("<title>") : page.index("</title>")]
    assert "<script" not in title


def test_the_page_is_bounded_however_many_looks() -> None:
    """With 10,000 looks the page draws at most MAX_LOOKS_DRAWN of them, says so, and is no
    bigger than with 1,000."""
    big = _history(many_looks(10_000))
    small = _history(many_looks(1_000))
    assert len(big.looks) == 10_000
    page, small_page = render(big), render(small)
    assert f"10,000 looks: {MAX_LOOKS_DRAWN} of them drawn, evenly spaced" in page
    assert len(page) < 600_000
    assert len(page) < 1.1 * len(small_page)
    # The last look is drawn and tabled whatever the thinning.
    last = big.last_look
    assert last is not None
    assert f"{last.verdicts[0].n_canary:,} / {last.verdicts[0].n_primary:,}" in _section(page, "verdicts")


@pytest.mark.parametrize("seconds", [1, 95, 150, 213, 7_300, 3 * 86_400 + 17, 90 * 86_400])
def test_any_span_of_time_renders_without_a_warning(seconds: int) -> None:
    """A rollout over seconds, minutes, hours, days or months: the time axes find their
    ticks (filterwarnings = error turns a matplotlib warning into a failure here)."""
    rows = rolled_back()
    start = rows["rollout"]["started_at"]
    last = rows["events"][-1]["at"]
    for event in rows["events"]:
        event["at"] = start + (event["at"] - start) * seconds / (last - start)
    rows["rollout"]["ended_at"] = start + seconds
    assert len(_figures(render(_history(rows)))) == len(PLOTS)


def test_thinning_keeps_the_first_and_last_evenly() -> None:
    """At most the limit, evenly spaced, the first and the last always kept."""
    items = list(range(10_000))
    kept = thin(items, 400)
    assert len(kept) == 400
    assert kept[0] == 0
    assert kept[-1] == 9_999
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert max(gaps) - min(gaps) <= 1
    assert thin(items[:5], 400) == items[:5]


def test_the_decisions_table_is_bounded(monkeypatch: pytest.MonkeyPatch, promoted_history: RolloutHistory) -> None:
    """Past MAX_DECISION_ROWS the table lists the newest and says how many older ones it left out."""
    monkeypatch.setattr(report_html, "MAX_DECISION_ROWS", 3)
    section = _section(render(promoted_history), "decisions")
    assert len(re.findall(r"<tr class=kind-", section)) == 3
    assert "4 older decisions not listed" in section
    assert "<tr class=kind-promote>" in section


def test_rendering_is_deterministic_and_now_ends_a_running_axis() -> None:
    """The same history renders to the same bytes; ``now`` dates the footer."""
    history = _history(just_started())
    assert render(history) == render(history)
    dated = render(history, now=history.started_at + 3_600)
    assert "generated 2024-05-01 13:00 UTC" in dated
    assert dated != render(history)


def test_missing_keys_in_older_events_take_defaults() -> None:
    """A look without summary, SRM or window, verdicts with only a metric and a decision,
    events without actor, step or weight: the history reads and the page renders."""
    rows = just_started()
    rows["events"] += [
        {"id": 2, "rollout_id": 7, "at": rows["rollout"]["started_at"] + 60, "kind": "look",
         "detail": {"judgement": {"recommendation": "continue", "verdicts": [{"metric": "error_rate", "decision": "inconclusive"}]}}},
        {"id": 3, "rollout_id": 7, "at": rows["rollout"]["started_at"] + 90, "kind": "pause"},
        {"id": 4, "rollout_id": 7, "at": rows["rollout"]["started_at"] + 120, "kind": "look", "detail": None},
    ]
    history = _history(rows)
    assert len(history.looks) == 2
    assert history.decisions[-1].kind == "pause"
    assert history.decisions[-1].actor == ""
    assert history.decisions[-1].weight is None
    page = render(history)
    assert "<td class=name>error_rate</td>" not in _section(page, "verdicts")  # the newest look judged nothing
    assert "The look judged no metric" in _section(page, "verdicts")
    assert list(_figures(page)) == list(PLOTS)


def test_plan_and_detail_may_be_json_text() -> None:
    """A store that keeps JSON columns as text hands them over as strings."""
    rows = rolled_back()
    rows["rollout"]["plan"] = json.dumps(rows["rollout"]["plan"])
    for event in rows["events"]:
        event["detail"] = json.dumps(event["detail"])
    assert _history(rows) == _history(rolled_back())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["rollout"].__setitem__("started_at", "yesterday"), r"rollout 7: Expected `float`, got `str` - at `\$.started_at`"),
        (lambda r: r["rollout"].pop("deployment"), r"rollout 7: Object missing required field `deployment`"),
        (lambda r: r["rollout"].__setitem__("plan", "{not json"), r"rollout 7: \$\.plan: not JSON"),
        (lambda r: r["events"][1].__setitem__("at", float("nan")), r"event 2 \(look\): Expected `float` >= 0.0 - at `\$.at`"),
        (lambda r: r["events"][1]["detail"]["judgement"]["verdicts"][0].__setitem__("n_canary", "many"),
         r"event 2 \(look\): Expected `int`, got `str` - at `\$\.detail\.judgement\.verdicts\[0\]\.n_canary`"),
        (lambda r: r["events"][1]["detail"]["srm"].__setitem__("mismatch", "maybe"),
         r"event 2 \(look\): Expected `bool`, got `str` - at `\$\.detail\.srm\.mismatch`"),
        (lambda r: r["events"][1].__setitem__("detail", [1, 2]), r"event 2: \$\.detail: must be an object, not list"),
        (lambda r: r["events"][1].__setitem__("rollout_id", 8), r"event 2: \$\.rollout_id is 8, not this rollout's id 7"),
    ],
)
def test_a_wrong_row_is_refused_naming_the_field(change: Any, message: str) -> None:
    """A value of the wrong type fails with ConfigError naming the rollout, the event and the field."""
    rows = copy.deepcopy(rolled_back())
    change(rows)
    with pytest.raises(ConfigError, match=message):
        _history(rows)


def test_the_status_table_prints_state_verdicts_and_decisions(promoted_history: RolloutHistory) -> None:
    """``stalwart rollout status``: the state and reason, step and weight, the last
    recommendation, each metric's decision and effect, the newest decisions."""
    console = Console(width=140, record=True, color_system=None)
    console.print(status_table(promoted_history))
    text = console.export_text()
    for expected in ("fraud:3 → fraud:4", "promoted: every required rule passed at the last step", "step 4 of 4",
                     "canary weight 100.0%", "40 looks; the last recommends promote", "sample ratio: ok"):
        assert expected in text, expected
    last = promoted_history.last_look
    assert last is not None
    rate = next(v for v in last.verdicts if v.metric == "error_rate")
    assert re.search(rf"error_rate\s+pass\s+{re.escape(numbers.level(rate.canary, 'rate'))}", text)
    assert numbers.interval(rate.lower, rate.upper, "rate") in text
    for kind in ("start", "pause", "resume", "promote"):
        assert re.search(rf"\s{kind}\s+\d+\.\d%", text), kind


def test_the_status_table_prints_markup_as_written() -> None:
    """A deployment named like rich markup prints as written; no look yet is said."""
    rows = just_started(deployment="[red]fraud[/red]")
    console = Console(width=120, record=True, color_system=None)
    console.print(status_table(_history(rows)))
    text = console.export_text()
    assert "[red]fraud[/red]" in text
    assert "no look yet" in text


def test_the_report_draws_every_plot_in_headless_chromium(promoted_page: str, tmp_path: Path) -> None:
    """Opened in Chromium, each plot has a visible box and drawn shapes inside the page's
    width; the page logs no error, fetches nothing and has no duplicate ids."""
    path = tmp_path / "rollout.html"
    path.write_text(promoted_page, encoding="utf-8")
    with headless_chromium() as browser:
        browser.open(path)
        figures = browser.figures()
        facts: dict[str, Any] = browser.run(_PAGE_JS)
        console = browser.console()
    assert [f["kind"] for f in figures] == list(PLOTS)
    for figure in figures:
        assert figure["width"] > 100, figure
        assert figure["height"] > 50, figure
        assert figure["drawn"] >= 10, figure
        assert figure["right"] <= facts["page_width"], figure
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    assert facts["resources"] == []
    assert facts["duplicate_ids"] == []
    assert facts["sections"] == SECTIONS


def test_without_matplotlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, promoted_history: RolloutHistory) -> None:
    """Rendering without matplotlib installed says to install stalwart[report]."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'stalwart\[report\]'"):
        render(promoted_history)


_PAGE_JS = """
const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
return {
  resources: performance.getEntriesByType('resource').map(r => r.name),
  duplicate_ids: ids.filter((id, i) => ids.indexOf(id) !== i),
  page_width: document.documentElement.clientWidth,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
};
"""
