"""The console in a real browser (headless Chromium over WebDriver, tests/browser.py): every
page loads without a console error and draws its charts, live numbers refresh by
themselves, markup in data stays text, a login keeps an HttpOnly SameSite=Strict cookie
(never the token), and a rollback clicked in the console rolls the canary back in the
server. Each page's screenshot goes to benchmarks/results/console/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser, headless_chromium
from tests.console.conftest import NAME, TOKEN, XSS, ConsoleServer

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "console"


def _visit(browser: Browser, url: str, shot: str | None = None) -> None:
    """Load ``url``; fail on anything the page logged as an error (a script error, a
    resource refused by the CSP, a failed request); save its screenshot as ``shot``."""
    browser.get(url)
    _no_errors(browser, url)
    if shot is not None:
        browser.screenshot(SHOTS / f"{shot}.png")


def _no_errors(browser: Browser, where: str) -> None:
    errors = [e for e in browser.console() if e.get("level") in ("SEVERE", "WARNING")]
    assert not errors, f"{where}: {errors}"


def _no_injection(browser: Browser, where: str) -> None:
    """Markup from data was shown as text: no script of it ran, no element of it exists."""
    injected = browser.run("return [window.__xss === undefined, document.querySelectorAll('img[data-xss]').length];")
    assert injected == [True, 0], f"{where}: markup from data became elements"


def _charts(browser: Browser, selector: str) -> list[dict[str, Any]]:
    """Each SVG ``selector`` picks: its box and how many of its shapes have a non-empty box."""
    charts: list[dict[str, Any]] = browser.run(
        """return [...document.querySelectorAll(arguments[0])].map(svg => {
             const box = svg.getBoundingClientRect();
             const drawn = [...svg.querySelectorAll('path, polyline, circle, rect, use, text')].filter(e => {
               const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
             return {width: box.width, height: box.height, drawn: drawn};
           });""",
        selector,
    )
    return charts


def _wait(browser: Browser, script: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.run(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s: {script}")


def test_the_console_in_a_browser(judged_console: ConsoleServer) -> None:
    """Overview, deployment, monitoring, rollout, shadows, predictions, a record and a
    model, as an operator sees them; then a rollback from the console."""
    console = judged_console
    base = console.url
    with headless_chromium(width=1280, height=900) as browser:
        # Read-only pages need no login.
        _visit(browser, f"{base}/ui", "overview")
        _no_injection(browser, "overview")
        sparks = _charts(browser, "#live svg.spark")
        assert sparks
        assert all(c["width"] > 0 for c in sparks)
        assert any(c["drawn"] >= 1 for c in sparks), "no sparkline drew its line"
        assert XSS.replace("<script>", "") not in browser.run("return document.body.innerHTML;").replace("&lt;script&gt;", "")
        # The live part refreshes itself (console.js, allowed by the page's CSP).
        _wait(browser, "return document.querySelector('#live').dataset.refreshed;", timeout=12)
        _no_errors(browser, "overview, refreshed")

        _visit(browser, f"{base}/ui/deployments/{NAME}", "deployment")
        _no_injection(browser, "deployment")
        assert browser.run("return document.querySelectorAll('button[data-action=roll-back]').length;") == 0
        assert "Scores payments <img" in browser.run("return document.querySelector('header .window').textContent;")

        # Request data needs a login: the browser is sent to the form, then back.
        _visit(browser, f"{base}/ui/deployments/{NAME}/monitoring")
        assert "/ui/login?next=" in browser.url
        browser.screenshot(SHOTS / "login.png")
        browser.type("input[name=token]", TOKEN)
        browser.click(".login-form button")
        # A click that starts a navigation may return before the next page is shown.
        _wait(browser, f"return location.pathname === '/ui/deployments/{NAME}/monitoring' && document.readyState === 'complete';")
        _no_errors(browser, "monitoring")
        session = next(c for c in browser.cookies() if c["name"] == "stalwart_ui_session")
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"
        assert session["secure"] is True
        assert TOKEN not in session["value"]
        assert browser.run("return document.cookie;") == "", "a script can read a console cookie"
        figures = browser.figures()
        assert {"distribution", "drift-over-time", "predictions"} <= {f["kind"] for f in figures}
        assert all(f["drawn"] > 0 and f["width"] > 0 for f in figures), figures
        browser.screenshot(SHOTS / "monitoring.png")

        _visit(browser, f"{base}/ui/deployments/{NAME}/rollout", "rollout")
        _no_injection(browser, "rollout")
        figures = browser.figures()
        assert {"weight", "metrics", "requests"} <= {f["kind"] for f in figures}
        assert all(f["drawn"] > 0 for f in figures), figures

        _visit(browser, f"{base}/ui/deployments/{NAME}/shadows", "shadows")
        assert browser.figures(), "the shadow page drew nothing"

        _visit(browser, f"{base}/ui/deployments/{NAME}/predictions?variant=canary", "predictions")
        variants = browser.run("return [...document.querySelectorAll('table.records tbody tr td:nth-child(4)')].map(td => td.textContent.trim());")
        assert variants
        assert set(variants) == {"canary"}
        _visit(browser, f"{base}/ui/deployments/{NAME}/predictions")
        _no_injection(browser, "predictions")
        browser.click("table.records a[href*='%3Cscript']")  # the request whose id is markup
        _wait(browser, "return location.pathname.includes('%3Cscript') && document.readyState === 'complete';")
        _no_errors(browser, "record")
        _no_injection(browser, "record")
        assert browser.run("return document.querySelector('header h1 .name').textContent;") == XSS
        assert len(browser.run("return document.querySelector('table.facts').textContent;").split("trace id")[1].strip()) >= 32
        assert _charts(browser, "svg.bars")[0]["drawn"] > 0
        browser.screenshot(SHOTS / "record.png")

        _visit(browser, f"{base}/ui/models/scorer", "model")
        _no_injection(browser, "model")

        # A rollback clicked in the console rolls the canary back in the server.
        assert console.rollout()["state"] == "running"
        _visit(browser, f"{base}/ui/deployments/{NAME}")
        browser.type("form.action input[name=reason]", "bad canary")
        browser.click("button[data-action=roll-back]")
        assert "roll back rollout" in browser.accept_alert()
        _wait(browser, "return location.search.includes('done=rollback');")
        _no_errors(browser, "after the rollback")
        time.sleep(3 * console.settings.routes_poll_seconds)  # this replica polls the new routes
        _visit(browser, browser.url, "deployment-rolled-back")
    rollout = console.rollout()
    assert (rollout["state"], rollout["reason"]) == ("rolled_back", "bad canary")
    routes = console.get(f"/v1/deployments/{NAME}/routes").json()["routes"]
    assert (routes["canary"], routes["canary_weight"]) == (None, 0.0)
    event = next(e for e in console.registry.events(limit=None) if e["action"] == "rollout.rollback")
    assert event["actor"] == "admin"
