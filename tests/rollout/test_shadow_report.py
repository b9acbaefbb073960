"""The shadow report: a JSON-safe document built from the stored pairs, and an HTML page
that a browser draws with every plot, escapes every name from data and fetches nothing."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest

from stalwart.errors import ConfigError
from stalwart.monitoring.quality import OutputReading
from stalwart.registry import Registry
from stalwart.rollout.shadow_pairs import PairBuckets
from stalwart.rollout.shadow_report import MAX_TIME_BINS, build_shadow_report, render_shadow_html
from stalwart.rollout.shadow_store import write_buckets
from tests.browser import headless_chromium

NASTY = "<script>alert('x')</script>"
START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
T0 = int(START.timestamp())

_PLOTS_JS = """
return [...document.querySelectorAll('figure.plot')].map(f => {
  const svg = f.querySelector(':scope > svg');
  if (!svg) return {kind: f.dataset.plot, width: 0, height: 0, drawn: 0, right: 0};
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('path, use, text')].filter(e => {
    const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
  return {kind: f.dataset.plot, width: box.width, height: box.height, drawn: drawn, right: box.right};
});
"""
_PAGE_JS = """
const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
return {
  scripts: document.scripts.length,
  resources: performance.getEntriesByType('resource').map(r => r.name),
  duplicate_ids: ids.filter((id, i) => ids.indexOf(id) !== i),
  classes: [...document.querySelectorAll('section table td.name')].map(c => c.textContent),
  page_width: document.documentElement.clientWidth,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
};
"""


@pytest.fixture
def document(registry: Registry) -> dict[str, Any]:
    """Two shadows over three hours of pairs: one a classifier's (classes, one named like
    markup, and scores), one a regression's (scores only) that fails now and then."""
    rng = random.Random(5)
    buckets = PairBuckets()
    reading = OutputReading()
    for minute in range(0, 180, 3):
        for _ in range(20):
            x = rng.random()
            primary = [{"predict": "fraud" if x > 0.5 else "ok", "predict_proba": [1 - x, x]}]
            label = NASTY if 0.45 < x <= 0.5 else ("fraud" if x > 0.5 else "ok")
            shadow = [{"predict": label, "predict_proba": [1 - x * 0.9, x * 0.9]}]
            latencies = (0.002 + rng.random() / 500, 0.003 + rng.random() / 300)
            buckets.add(("fraud", "next", T0 + 60 * minute), reading, primary, shadow, 1, latencies, ("fraud:2", "fraud:3"))
            value = [{"predict": 100 * x}]
            other = None if rng.random() < 0.1 else [{"predict": 100 * x + rng.gauss(0, 1)}]
            buckets.add(("fraud", "regress", T0 + 60 * minute), reading, value, other, 1, latencies, ("fraud:2", "amounts:1"))
    write_buckets(registry.db, buckets.take(), "r")
    return build_shadow_report(registry.db, "fraud", since=START, until=START + dt.timedelta(hours=3))


def test_the_document_is_json_and_bounded(document: dict[str, Any], registry: Registry) -> None:
    """The document holds every shadow in name order, strict JSON (no NaN), the pairs
    over time in at most MAX_TIME_BINS bins; one shadow can be asked for alone."""
    json.dumps(document, allow_nan=False)
    assert [s["name"] for s in document["shadows"]] == ["next", "regress"]
    assert document["since"] == "2024-05-01T00:00:00Z"
    nxt, regress = document["shadows"]
    assert nxt["report"]["summary"]["pairs"] == 1200
    assert sum(b["pairs"] for b in nxt["over_time"]) == 1200
    assert len(nxt["over_time"]) <= MAX_TIME_BINS
    assert regress["report"]["summary"]["classes"]["labelled"] == 0
    assert regress["report"]["summary"]["errors"]["shadow"] > 0
    assert sum(regress["histogram"]["shares"]) == pytest.approx(1.0)
    week = build_shadow_report(registry.db, "fraud", since=START, until=START + dt.timedelta(days=7), shadow="regress")
    assert [s["name"] for s in week["shadows"]] == ["regress"]
    assert len(week["shadows"][0]["over_time"]) <= MAX_TIME_BINS
    with pytest.raises(ConfigError, match="aware datetimes"):
        build_shadow_report(registry.db, "fraud", since=START.replace(tzinfo=None), until=START + dt.timedelta(hours=1))


def test_the_page_draws_every_plot_in_headless_chromium(document: dict[str, Any], tmp_path: Path) -> None:
    """Opened in Chromium, each shadow's section shows its plots (a regression has no
    confusion table), each with a visible box and drawn shapes inside the page's width;
    a class named like markup reads back as text; nothing is fetched, nothing logged."""
    page = tmp_path / "shadows.html"
    page.write_text(render_shadow_html(document), encoding="utf-8")
    with headless_chromium() as browser:
        browser.open(page)
        figures: list[dict[str, Any]] = browser.run(_PLOTS_JS)
        facts: dict[str, Any] = browser.run(_PAGE_JS)
        console = browser.console()
    kinds = [f["kind"] for f in figures]
    assert kinds == [
        "s0-confusion", "s0-differences", "s0-latency", "s0-over-time",
        "s1-differences", "s1-latency", "s1-over-time",
    ]
    for figure in figures:
        assert figure["width"] > 100, figure
        assert figure["height"] > 50, figure
        assert figure["drawn"] >= 10, figure
        assert figure["right"] <= facts["page_width"], figure
    assert facts["sections"] == ["shadow-next", "shadow-regress"]
    assert NASTY in facts["classes"]
    assert facts["resources"] == []
    assert facts["scripts"] == 0
    assert facts["duplicate_ids"] == []
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []


def test_a_window_without_pairs_says_so(registry: Registry) -> None:
    """No pairs: the page says what to check; a document of another format is refused."""
    empty = build_shadow_report(registry.db, "fraud", since=START, until=START + dt.timedelta(hours=1))
    assert empty["shadows"] == []
    assert "No shadow answered a request of this deployment in this window" in render_shadow_html(empty)
    with pytest.raises(ConfigError, match="shadow report format 7 is not 1"):
        render_shadow_html({**empty, "format": 7})
