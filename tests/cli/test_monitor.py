"""`stalwart monitor report|status` on a saved document (`--from-json`): the HTML file, the
JSON for machines, the terminal tables, and errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.monitoring.report_document import ReportDocument, sorted_columns
from tests.monitoring.report_factory import NASTY, fraud_document


def _run(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("monitor") / "fraud.json"
    path.write_text(json.dumps(fraud_document()), encoding="utf-8")
    return path


def test_report_renders_a_saved_document_to_one_html_file(saved: Path, tmp_path: Path) -> None:
    """`report --from-json FILE -o PATH` writes the HTML report and says what it found."""
    out = tmp_path / "report.html"
    result = _run("monitor", "report", "--from-json", str(saved), "-o", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<span class=name>fraud</span>" in page
    assert page.count("<figure") == len(fraud_document()["distributions"]) + 4
    doc = ReportDocument.from_dict(fraud_document())
    drifted = sum(c.drifted for c in doc.drift.columns)
    assert f"{drifted} of {len(doc.drift.columns)} features drifted, 1 alert firing" in result.output


def test_report_json_prints_the_document_for_machines(saved: Path, tmp_path: Path) -> None:
    """`--json` prints the document (times in UTC, checked), which `--from-json` reads back:
    a report saved today renders the same tomorrow."""
    result = _run("monitor", "report", "--from-json", str(saved), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == ReportDocument.from_dict(fraud_document()).to_dict()
    assert printed["since"] == "2024-05-01T00:00:00Z"
    again = tmp_path / "again.json"
    result = _run("monitor", "report", "--from-json", str(saved), "--json", "-o", str(again))
    assert result.exit_code == 0, result.output
    assert json.loads(again.read_bytes()) == printed


def test_status_prints_features_drifted_first_then_quality_and_alerts(saved: Path) -> None:
    """`status` lists every feature, drifted ones first, then quality and alerts; names from
    data print as written (no markup)."""
    result = _run("monitor", "status", "--from-json", str(saved))
    assert result.exit_code == 0, result.output
    out = result.stdout
    doc = ReportDocument.from_dict(fraud_document())
    lines = [line.strip() for line in out.splitlines()]
    rows = [next(i for i, line in enumerate(lines) if line.startswith(c.column + " ")) for c in sorted_columns(doc.drift.columns)]
    assert rows == sorted(rows)
    assert "DRIFTED" in out
    assert NASTY in out
    for alert in doc.alerts:
        assert alert.name in out
    assert out.index("quality") < out.index("alerts, firing first")
    assert "labelled" in out


def test_status_says_when_no_label_arrived_and_keeps_markup_literal(tmp_path: Path) -> None:
    """Before labels, status says so; a feature named like rich markup prints literally."""
    doc = fraud_document(labels=False)
    doc["drift"]["columns"][0]["column"] = "[bold]amount[/bold]"
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = _run("monitor", "status", "--from-json", str(path))
    assert result.exit_code == 0, result.output
    assert "no labels yet" in result.stdout
    assert "[bold]amount[/bold]" in result.stdout


def test_a_wrong_document_fails_naming_the_field(tmp_path: Path) -> None:
    """A file that is not a report document fails with exit 1, naming the field."""
    doc = fraud_document()
    doc["drift"]["share"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    for command in ("report", "status"):
        result = _run("monitor", command, "--from-json", str(path))
        assert result.exit_code == 1
        assert "$.drift.share" in result.output
    path.write_text("{not json", encoding="utf-8")
    result = _run("monitor", "report", "--from-json", str(path))
    assert result.exit_code == 1
    assert "does not parse" in result.output


def test_a_saved_report_of_another_deployment_is_refused(saved: Path) -> None:
    """`--deployment` and `--from-json` together must name the same deployment."""
    result = _run("monitor", "report", "--from-json", str(saved), "--deployment", "churn")
    assert result.exit_code == 1
    assert "'fraud', not 'churn'" in result.output


def test_the_window_and_the_deployment_are_checked_before_anything_is_read() -> None:
    """Without --deployment (or --from-json), or with an empty or unreadable window, the
    command is a usage error (exit 2) saying which option to fix."""
    result = _run("monitor", "report")
    assert result.exit_code == 2
    assert "--deployment" in result.output
    result = _run("monitor", "status", "--deployment", "fraud", "--since", "1h", "--until", "2h")
    assert result.exit_code == 2
    assert "window is empty" in result.output
    result = _run("monitor", "report", "--deployment", "fraud", "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since" in result.output
