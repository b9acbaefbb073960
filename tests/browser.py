"""Headless Chromium for tests that must see a page as a browser renders it.

Debian's ``chromium`` driven by its ``chromedriver`` over the W3C WebDriver protocol: plain
JSON over HTTP, so a few lines of urllib replace a Selenium dependency. Both are installed
by ``scripts/ensure-chromium`` (``make test`` runs it); without them a test fails, naming
the script, and never skips.

The browser resolves no host name but 127.0.0.1 (``--host-resolver-rules``), where a test's
own server listens: a page that tried to fetch anything else would show it as a failed
request in its console and its resource timings. Background networking, component updates,
sync and QUIC are off, and every session has a fresh profile directory.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port

__all__ = ["Browser", "headless_chromium"]

_HINT = "run scripts/ensure-chromium (apt-get install chromium chromium-driver) or `make services`"


class Browser:
    """One WebDriver session: open a page, run a script in it, read its console."""

    def __init__(self, base: str, session: str) -> None:
        self._url = f"{base}/session/{session}"

    def open(self, path: Path) -> None:
        """Load a local file and wait until it has loaded."""
        _call("POST", f"{self._url}/url", {"url": path.resolve().as_uri()})

    def get(self, url: str) -> None:
        """Load ``url`` (a page of a server on this machine) and wait until it has loaded."""
        _call("POST", f"{self._url}/url", {"url": url})

    @property
    def url(self) -> str:
        """The address of the page shown now (after any redirect)."""
        current: str = _call("GET", f"{self._url}/url")
        return current

    def click(self, css: str) -> None:
        """Click the first element that ``css`` selects (a button submits its form)."""
        _call("POST", f"{self._url}/element/{self._find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        """Type ``text`` into the first element that ``css`` selects."""
        _call("POST", f"{self._url}/element/{self._find(css)}/value", {"text": text})

    def accept_alert(self) -> str:
        """Accept the open ``confirm()`` (or alert) dialog; its text."""
        text: str = _call("GET", f"{self._url}/alert/text")
        _call("POST", f"{self._url}/alert/accept", {})
        return text

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies the browser holds for the page shown, with their attributes."""
        cookies: list[dict[str, Any]] = _call("GET", f"{self._url}/cookie")
        return cookies

    def screenshot(self, path: Path, *, width: int = 1280, max_height: int = 8000) -> None:
        """Save the whole page (up to ``max_height`` pixels tall) as a PNG at ``path``."""
        # From a small window: a page's scroll height is never less than the window's.
        _call("POST", f"{self._url}/window/rect", {"width": width, "height": 600})
        height = int(self.run("return Math.ceil(document.documentElement.scrollHeight);"))
        _call("POST", f"{self._url}/window/rect", {"width": width, "height": min(max(height, 600), max_height)})
        png = base64.b64decode(_call("GET", f"{self._url}/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)

    def _find(self, css: str) -> str:
        found = _call("POST", f"{self._url}/element", {"using": "css selector", "value": css})
        element: str = next(iter(found.values()))
        return element

    def run(self, script: str, *args: Any) -> Any:
        """The value a script's ``return`` gives, run synchronously in the page."""
        return _call("POST", f"{self._url}/execute/sync", {"script": script, "args": list(args)})

    def figures(self) -> list[dict[str, Any]]:
        """Each ``figure.plot`` of a report page as the browser draws it: its ``kind``
        (``data-plot``), its SVG's box (``width``, ``height``, ``right``) and how many of its
        shapes and texts have a non-empty box (``drawn``; a plot whose drawing failed has none)."""
        figures: list[dict[str, Any]] = self.run(_FIGURES_JS)
        return figures

    def console(self) -> list[dict[str, Any]]:
        """What the page logged (messages, errors, failed requests) since the last call."""
        entries: list[dict[str, Any]] = _call("POST", f"{self._url}/se/log", {"type": "browser"})
        return entries


_FIGURES_JS = """
return [...document.querySelectorAll('figure.plot')].map(f => {
  const svg = f.querySelector(':scope > svg');
  if (!svg) return {kind: f.dataset.plot, width: 0, height: 0, drawn: 0, right: 0};
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('path, use, text')].filter(e => {
    const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
  return {kind: f.dataset.plot, width: box.width, height: box.height, drawn: drawn, right: box.right};
});
"""


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1000) -> Iterator[Browser]:
    """A fresh headless Chromium (its own profile directory), closed afterwards."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(f"headless Chromium is not installed (chromium: {chromium}, chromedriver: {driver}); {_HINT}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    session = None
    try:
        _wait_ready(base, process)
        with tempfile.TemporaryDirectory(prefix="stalwart-chromium-") as profile:
            options = {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--window-size={width},{height}",
                    # Only our own loopback servers resolve; "MAP *" would take 127.0.0.1 too.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
            }
            capabilities = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            created = _call("POST", f"{base}/session", {"capabilities": {"alwaysMatch": capabilities}}, timeout=60)
            session = created["sessionId"]
            try:
                yield Browser(base, session)
            finally:
                _call("DELETE", f"{base}/session/{session}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chromedriver exited with {process.returncode} at start; {_HINT}")
        try:
            if _call("GET", f"{base}/status", timeout=2).get("ready"):
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail("chromedriver did not answer within 20 s")


def _call(method: str, url: str, body: dict[str, Any] | None = None, *, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    # S310: the URL is always chromedriver's, http://127.0.0.1 on the port we chose.
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())["value"]
    except urllib.error.HTTPError as exc:  # WebDriver errors come back as JSON bodies
        detail = json.loads(exc.read() or b"{}").get("value", {})
        raise AssertionError(f"WebDriver {method} {url.rsplit('/', 1)[-1]}: {detail.get('error')}: {detail.get('message')}") from None
