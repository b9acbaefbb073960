"""Alert declarations: what a project file may say, and the errors that name the mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart.errors import ConfigError
from stalwart.project import Alert, load_project

PROJECT = '''
from stalwart import Alert, Deployment

fraud = Deployment("fraud", model="fraud")
drift = Alert("feature-drift", "fraud", "ks", threshold=0.05, correction="bh", for_="15m",
              severity="critical", labels={"team": "risk"})
amount = Alert("amount-psi", "fraud", "psi", column="amount", threshold=0.2, calibrate=True)
'''


def test_loader_collects_alerts_declared_in_a_project_file(tmp_path: Path) -> None:
    """Module-level Alerts are collected by name, durations parsed, defaults filled in."""
    file = tmp_path / "project.py"
    file.write_text(PROJECT)
    project = load_project(file)
    assert sorted(project.alerts) == ["amount-psi", "feature-drift"]
    drift = project.alerts["feature-drift"]
    assert (drift.column, drift.correction, drift.for_seconds, drift.window_seconds) == ("*", "bh", 900.0, 3600.0)
    assert drift.labels == {"team": "risk"}
    amount = project.alerts["amount-psi"]
    assert (amount.column, amount.op, amount.severity, amount.calibrate) == ("amount", ">", "warning", True)


def test_an_alert_on_an_undeclared_deployment_is_refused_naming_it(tmp_path: Path) -> None:
    """A typo in the deployment would be an alert that never fires: loading says so."""
    file = tmp_path / "project.py"
    file.write_text(PROJECT.replace('"amount-psi", "fraud"', '"amount-psi", "frawd"'))
    with pytest.raises(ConfigError, match=r"alert 'amount-psi' deployment: 'frawd' is not a deployment"):
        load_project(file)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": "high"}, r"alert 'a' threshold: 'high' must be a finite number"),
        ({"threshold": float("nan")}, r"alert 'a' threshold"),
        ({"threshold": 1, "op": ">="}, r"alert 'a' op: '>=' must be '>' or '<'"),
        ({"threshold": 1, "window": "1 fortnight"}, r"alert 'a' window: '1 fortnight' is not a duration"),
        ({"threshold": 1, "window": 0}, r"alert 'a' window: 0 must be longer than zero"),
        ({"threshold": 1, "for_": "-5m"}, r"alert 'a' for_: '-5m' is negative"),
        ({"threshold": 1, "severity": "page"}, r"alert 'a' severity: 'page' must be one of info, warning, critical"),
        ({"threshold": 1, "labels": {"team-name": "x"}}, r"alert 'a' labels: 'team-name' is not a label name"),
        ({"threshold": 1, "labels": {"severity": "x"}}, r"alert 'a' labels: 'severity' is set by the alert itself"),
        ({"threshold": 1, "labels": {"team": 3}}, r"alert 'a' labels: the value of 'team' must be a string"),
        ({"threshold": 1, "correction": "bonferroni"}, r"alert 'a' correction: 'bonferroni' must be 'bh' or None"),
        ({"threshold": 2, "correction": "bh"}, r"alert 'a' threshold: 2.0 must be in \(0, 1\): with correction='bh' it is the false discovery rate"),
        ({"threshold": 0.05, "correction": "bh", "calibrate": True}, r"alert 'a' calibrate: a rule with correction='bh'"),
        ({"threshold": 1, "column": ""}, r"alert 'a' column: '' must be a non-empty string"),
    ],
)
def test_mistakes_name_the_alert_and_the_field(kwargs: dict[str, object], message: str) -> None:
    """Each bad field is a ConfigError that says which alert and which field."""
    with pytest.raises(ConfigError, match=message):
        Alert("a", "fraud", "psi", **kwargs)  # type: ignore[arg-type]


def test_a_bad_alert_name_is_refused() -> None:
    """Alert names become the alertname label and a key in the database: a plain name."""
    with pytest.raises(ConfigError, match=r"alert name 'drift alert' must start with a letter"):
        Alert("drift alert", "fraud", "psi", threshold=0.2)
