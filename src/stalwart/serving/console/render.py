"""Rendering the console's pages: Jinja2 templates, escaped by default, and the headers
every page is sent with.

Why Jinja2 rather than the f-strings of the report pages: a report is written once, from one
document, by code a reviewer reads end to end; the console's pages show names, reasons,
categories, request ids and error messages in text, attributes and links across a dozen
templates. With autoescape on, every value is escaped unless it is marked markup on
purpose (the reports' sections and sparklines, which escape their own data), so forgetting is
safe rather than a hole.

Every page says what it may load (``Content-Security-Policy``): scripts and style sheets
from this server only (``/ui/static``, shipped in the wheel: no CDN, no network at run
time), no inline script, no frame around it. Inline styles stay allowed: the reports'
matplotlib SVGs carry ``style`` attributes, and a style cannot run code.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

from stalwart.monitoring import report_markup

__all__ = ["CSP", "HEADERS", "Pages", "markup"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show live state and, once logged in, request data: never kept by a cache.
    "Cache-Control": "no-store",
}


def markup(html: str) -> Markup:
    """``html`` to be inserted as markup: only for what escaped its own data (the reports'
    sections, the sparklines)."""
    return Markup(html)  # noqa: S704 - the callers' markup escapes every data string itself


class Pages:
    """The templates under ``console/templates`` and their filters."""

    def __init__(self) -> None:
        env = Environment(
            loader=PackageLoader("stalwart.serving.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,  # a misspelt name fails the page instead of showing blank
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(num=_num, pct=report_markup.pct, ms=_ms, when=_when, ago=_ago, p_value=report_markup.p_value, pretty=_pretty)
        self.env = env

    def render(self, template: str, *, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
        """``template`` filled with ``context``, as a response with the console's headers."""
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={**HEADERS, **(headers or {})})

    def fragment(self, template: str, **context: Any) -> str:
        """``template`` filled with ``context``, as markup to put into a page."""
        return self.env.get_template(template).render(**context)


def _num(value: float | None) -> str:
    return report_markup.num(value)


def _ms(value: float | None) -> str:
    """A latency in milliseconds, two significant digits."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2g} ms" if value < 1000 else f"{value / 1000:.2g} s"


def _when(epoch: float | None) -> str:
    """Epoch seconds as a UTC time to the second."""
    if epoch is None:
        return "—"
    return report_markup.time(dt.datetime.fromtimestamp(epoch, dt.UTC), seconds=True)


def _ago(epoch: float | None, now: float) -> str:
    """How long before ``now`` (epoch seconds) ``epoch`` was."""
    if epoch is None:
        return "—"
    return report_markup.span(dt.timedelta(seconds=max(0.0, now - epoch))) + " ago"


def _pretty(value: Any) -> str:
    """A JSON value as indented text (escaped by the template like any text)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
