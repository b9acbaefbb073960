"""The HTML monitoring report: one file that opens without a network, draws its plots in a
real browser, escapes whatever the data holds, puts drifted features first and says why a
section is empty."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from stalwart.errors import ConfigError, MissingExtraError
from stalwart.monitoring import report_html
from stalwart.monitoring.report_document import ReportDocument, sorted_columns
from stalwart.monitoring.report_html import render_html
from tests.browser import headless_chromium
from tests.monitoring.report_factory import NASTY, empty_document, fraud_document

# One figure per section that draws over time, besides the per-feature small multiples.
TIME_PLOTS = {"drift-over-time", "predictions", "quality", "alerts"}

_PAGE_JS = """
const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
return {
  scripts: document.scripts.length,
  resources: performance.getEntriesByType('resource').map(r => r.name),
  duplicate_ids: ids.filter((id, i) => ids.indexOf(id) !== i),
  captions: [...document.querySelectorAll('figure.small figcaption .feature')].map(c => c.textContent),
  alert_names: [...document.querySelectorAll('#alerts tbody td.name')].map(c => c.textContent),
  page_width: document.documentElement.clientWidth,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
};
"""


@pytest.fixture(scope="module")
def document() -> ReportDocument:
    return ReportDocument.from_dict(fraud_document())


@pytest.fixture(scope="module")
def page(document: ReportDocument, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(document), encoding="utf-8")
    return path


def test_the_report_draws_every_plot_in_headless_chromium(document: ReportDocument, page: Path) -> None:
    """Opened in Chromium, the page shows one plot per feature distribution and one per
    time section, each with a visible box and drawn shapes, inside the page's width; it
    logs no error and fetches nothing."""
    with headless_chromium() as browser:
        browser.open(page)
        figures = browser.figures()
        facts: dict[str, Any] = browser.run(_PAGE_JS)
        console = browser.console()

    kinds = [f["kind"] for f in figures]
    assert kinds.count("distribution") == len(document.distributions)
    assert sorted(k for k in kinds if k != "distribution") == sorted(TIME_PLOTS)
    for figure in figures:
        assert figure["width"] > 100, figure
        assert figure["height"] > 50, figure
        assert figure["drawn"] >= 10, figure  # axes, ticks, bars or lines: not an empty frame
        assert figure["right"] <= facts["page_width"], figure
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    assert facts["resources"] == []  # nothing fetched: no font, image, style or script
    assert facts["scripts"] == 0
    assert facts["duplicate_ids"] == []  # each inline SVG's ids are its own
    assert facts["sections"] == ["summary", "drift", "drift-over-time", "predictions", "quality", "alerts", "skew"]
    # Escaped names read back as the very text the data holds, not as markup.
    assert NASTY in facts["captions"]
    assert NASTY in facts["alert_names"]


def test_the_report_references_nothing_outside_itself(page: Path) -> None:
    """No stylesheet, script, font or image from a network: the file opens offline."""
    text = page.read_text(encoding="utf-8").lower()
    for pattern in ('src="http', "src='http", 'href="http', "href='http", "@import", "url(http", "url('http", 'url("http', "<link", "<script", "<img", "<iframe"):
        assert pattern not in text, pattern


def test_every_string_from_the_data_is_escaped(page: Path) -> None:
    """A feature, a category and an alert named like markup appear as text, escaped."""
    text = page.read_text(encoding="utf-8")
    assert NASTY not in text
    assert html.escape(NASTY) in text or html.escape(NASTY, quote=False) in text
    doc = empty_document() | {
        "deployment": '"><img src=x onerror=alert(1)>',
        "notes": {"alerts": "<b>not bold</b> & not markup"},
        "variants": [{"variant": "<i>v</i>", "model": "m&m", "version": 1}],
    }
    rendered = render_html(doc)
    for markup in ("<img", "<b>not bold", "<i>v"):
        assert markup not in rendered
    assert "&lt;b&gt;not bold&lt;/b&gt; &amp; not markup" in rendered


def test_drifted_features_come_first(document: ReportDocument, page: Path) -> None:
    """The table and the small multiples list drifted features first, the most severe
    (furthest past its threshold) at the top."""
    text = page.read_text(encoding="utf-8")
    drifted = {c.column for c in document.drift.columns if c.drifted}
    assert 0 < len(drifted) < len(document.drift.columns)  # the document has both kinds
    captions = [html.unescape(c) for c in re.findall(r"data-plot=distribution>.*?<figcaption><span class=feature>(.*?)</span>", text, flags=re.S)]
    assert set(captions[: len(drifted)]) == drifted
    table = text[text.index("<section id=drift>") : text.index("<h3>Distributions</h3>")]
    rows = [html.unescape(n) for n in re.findall(r"<td class=name>(.*?)</td>", table)]
    assert rows == [c.column for c in sorted_columns(document.drift.columns)]
    assert set(rows[: len(drifted)]) == drifted
    severities = [c.severity() for c in sorted_columns(document.drift.columns) if c.drifted]
    assert severities == sorted(severities, reverse=True)


def test_empty_sections_say_why() -> None:
    """A deployment that served nothing gets every section, each saying why it is empty,
    and no plot; a builder's note replaces the generic reason."""
    text = render_html(empty_document() | {"notes": {"alerts": "the project declares no alert rules"}})
    for section in ("summary", "drift", "drift-over-time", "predictions", "quality", "alerts", "skew"):
        assert f"<section id={section}>" in text
    assert "<figure" not in text
    for reason in (
        "No feature was compared",
        "No predictions were logged in this window.",
        "no quality to measure",
        "the project declares no alert rules",
        "No parity check ran",
        "No training profile to compare",
    ):
        assert reason in text, reason


def test_before_labels_the_report_shows_estimates_and_says_labels_are_missing() -> None:
    """Without labels, quality shows the estimated metrics, says "no labels yet", and the
    realised column stays empty."""
    doc = ReportDocument.from_dict(fraud_document(labels=False))
    text = render_html(doc)
    quality = text[text.index("<section id=quality>") : text.index("<section id=alerts>")]
    assert "No labels yet" in quality
    assert "data-plot=quality" in quality
    rows = re.findall(r"<tr><td class=name>(\w+)</td><td class=num>([^<]+)</td><td class=num>([^<]+)</td></tr>", quality)
    assert {name for name, _, _ in rows} == {"accuracy", "roc_auc"}
    assert all(estimated != "—" and realised == "—" for _, estimated, realised in rows)


def test_the_number_of_small_multiples_is_bounded(monkeypatch: pytest.MonkeyPatch, document: ReportDocument) -> None:
    """Past the limit, the least severe features are not drawn (the page says how many),
    and the table still lists every feature."""
    monkeypatch.setattr(report_html, "MAX_DISTRIBUTION_PLOTS", 2)
    text = render_html(document)
    assert text.count("data-plot=distribution") == 2
    assert f"{len(document.distributions) - 2} more features not drawn" in text
    assert text.count("<td class=name>") >= len(document.drift.columns)


def test_degenerate_data_still_renders() -> None:
    """One bucket, bins of zero width, a category on one side only, names of hundreds of
    characters or with mathtext dollars, an unknown severity, an alert older than the
    window, metrics without a value: every plot renders, without a warning."""
    t = "2024-05-01T00:00:00Z"
    long = "x" * 300
    doc = empty_document() | {
        "drift": {"columns": [{"column": long, "kind": "numeric", "method": "psi", "score": None, "threshold": 0.1, "drifted": False}]},
        "drift_over_time": [{"bucket": t, "share": 0.0, "scores": {long: None}}],
        "distributions": {
            long: {"kind": "numeric", "edges": [1.0, 1.0], "reference": [1.0], "current": [0.0]},
            "new-only": {"kind": "categorical", "reference": {}, "current": {"a" * 300: 1.0}},
            "_gone": {"kind": "categorical", "reference": {"$x^2$": 1.0}, "current": {}},
        },
        "predictions_over_time": [{"bucket": t, "count": 3}],
        "quality": [{"bucket": t, "predictions": 3, "labelled": 0, "realised": {"accuracy": None}}],
        "alerts": [{"name": "old", "severity": "page-someone", "state": "firing", "started_at": "2024-04-01T00:00:00Z"}],
    }
    text = render_html(doc)  # filterwarnings = error: a matplotlib warning fails here
    assert text.count("<figure") == 3 + len(TIME_PLOTS)
    assert "$x^2$" in text  # drawn as written, not as mathtext
    assert "No labels yet, and no estimate" in text


def test_a_document_renders_the_same_bytes_from_its_dict_and_twice(document: ReportDocument) -> None:
    """Rendering is deterministic (no dates or random ids inside), and the builder's dict
    renders as the document does."""
    assert render_html(document) == render_html(document.to_dict())


def test_a_wrong_document_is_refused_naming_the_field() -> None:
    """A document with a wrong field fails with ConfigError naming it, before any plot."""
    with pytest.raises(ConfigError, match=r"\$\.drift\.share"):
        render_html(empty_document() | {"drift": {"share": 2.0}})


def test_without_matplotlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, document: ReportDocument) -> None:
    """Rendering without matplotlib installed says to install stalwart[report]."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'stalwart\[report\]'"):
        render_html(document)
