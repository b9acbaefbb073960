"""`stalwart rollout ...` on the database the settings name: start, routes, status, pause,
resume, rollback, report; the controller (here driven by hand, as a server's loop drives
it) moves what the CLI started; mistakes are clear errors, never tracebacks."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.project import load_project
from stalwart.registry import Registry
from stalwart.rollout.controller import Controller
from stalwart.rollout.rollouts import RolloutStore
from tests.faults import Switchable

SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
PROJECT = '''
from stalwart.project import Deployment, RequestSource

txn = RequestSource("txn", fields={"amount": "float"})
payments = Deployment("payments", model="scorer:1", features=[txn.amount], rollout={"steps": [0.1, 0.4], "min_seconds": 1})
follows = Deployment("follows", model="scorer", features=[txn.amount])
'''


@pytest.fixture
def project(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    path = home.parent / "project.py"
    path.write_text(PROJECT)
    monkeypatch.setenv("STALWART_HOME", str(home))
    monkeypatch.setenv("STALWART_PROJECT", str(path))
    monkeypatch.setenv("STALWART_PYTHON_MODULES", "tests")
    registry = Registry.open(Settings(home=home, python_modules=("tests",)))
    registry.register("scorer", Switchable("cli-primary"), sample=SAMPLE)
    registry.register("scorer", Switchable("cli-canary"), sample=SAMPLE)
    registry.db.dispose()
    return path


class _Ran:
    """A command's exit code and what it said: its output, or the error `stalwart` prints
    (``main()`` prints a StalwartError's message; the test runner hands the error back)."""

    def __init__(self, result: Any) -> None:
        self.code = result.exit_code
        error = result.exception
        self.output = result.output + (str(error) if error is not None and not isinstance(error, SystemExit) else "")


def _run(*args: str, code: int = 0) -> _Ran:
    ran = _Ran(CliRunner().invoke(app, ["rollout", *args]))
    assert ran.code == code, ran.output
    return ran


def test_a_rollout_from_the_cli(project: Path, home: Path) -> None:
    started = _run("start", "payments", "--canary", "scorer:2", "--steps", "10,40", "--reason", "new data")
    assert "rollout 1" in started.output
    assert "scorer:1 → scorer:2" in started.output
    routes = _run("routes", "payments").output
    assert '"canary": "scorer:2"' in routes
    assert '"canary_weight": 0.1' in routes
    assert _run("pause", "payments", "--reason", "lunch").output.count("paused") == 1
    assert "cannot pause" in _run("pause", "payments", code=1).output
    assert "running" in _run("resume", "payments").output
    status = _run("status", "payments").output
    assert "scorer:2" in status
    assert "step 1 of 2, canary weight 10.0%" in status
    # The CLI refuses to set the canary by hand while the rollout owns it.
    assert "promote or roll it back first" in _run("routes", "payments", "--weight", "0.5", code=1).output
    report = home.parent / "rollout.html"
    assert "wrote" in _run("report", "payments", "-o", str(report)).output
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert "rolled_back" in _run("rollback", "payments", "--reason", "by hand").output
    assert '"canary": null' in _run("routes", "payments").output
    # Shadows by hand, outside a rollout.
    shadowed = _run("routes", "payments", "--shadow", "next=scorer:2@0.25").output
    assert '"rate": 0.25' in shadowed


def test_a_started_rollout_is_moved_by_the_controller(project: Path, home: Path) -> None:
    """The CLI writes the rollout; a controller (a server's, here called directly) judges it.
    Without traffic every rule is inconclusive: it waits, never passes."""
    _run("start", "payments", "--canary", "scorer:2", "--look", "0.1")
    registry = Registry.open(Settings(home=home, python_modules=("tests",)))
    try:
        store = RolloutStore(registry.db)
        controller = Controller(store, load_project(project), lag_seconds=0.0)
        moved = controller.tick(now=time.time() + 5)
        assert len(moved) == 1
        look = store.events(moved[0].id)[-1]
        assert look["kind"] == "look"
        assert moved[0].state == "running"
        assert {v["decision"] for v in look["detail"]["judgement"]["verdicts"]} == {"inconclusive"}
    finally:
        registry.db.dispose()


def test_a_primary_that_follows_the_latest_is_pinned_for_a_rollout(project: Path) -> None:
    """A rollout compares two fixed versions: the primary of a deployment that follows the
    latest version is pinned to the one it serves (v2) while an older canary goes out."""
    assert "scorer:2 → scorer:1" in _run("start", "follows", "--canary", "scorer:1").output
    assert '"primary": "scorer:2"' in _run("routes", "follows").output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("start", "payments", "--canary", "scorer:9"), "has no version 9"),
        (("start", "payments", "--canary", "scorer:2", "--steps", "50,20"), "must rise"),
        (("start", "payments", "--canary", "scorer:2", "--steps", "a,b"), "--steps"),
        (("start", "nowhere", "--canary", "scorer:2"), "nowhere"),
        (("routes", "payments", "--shadow", "broken"), "NAME=MODEL:VERSION"),
        (("start", "follows", "--canary", "scorer:2"), "follows the latest version of 'scorer', which is scorer:2 already"),
        (("pause", "payments"), "has no open rollout"),
    ],
)
def test_mistakes_are_clear_errors(project: Path, args: tuple[str, ...], fragment: str) -> None:
    ran = _Ran(CliRunner().invoke(app, ["rollout", *args]))
    assert ran.code != 0
    assert fragment in ran.output
