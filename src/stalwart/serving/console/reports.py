"""A deployment's report pages in the console: monitoring (drift, distributions, quality,
alerts), its rollouts (the timeline with each look's verdicts and numbers) and its shadows.

Each is the matching report's own sections (:func:`stalwart.monitoring.report_html.report_sections`,
:func:`stalwart.rollout.report_html.report_sections`,
:func:`stalwart.rollout.shadow_report.shadow_sections`), built from the database and drawn
on a worker thread, so the console and the files ``stalwart monitor report``,
``stalwart rollout report`` and ``stalwart shadow report`` write show the same things the
same way. Without matplotlib (the ``report`` extra) a page says what to install instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from stalwart.errors import MissingExtraError, NotFound, RequestError
from stalwart.monitoring.report import build_report
from stalwart.monitoring.report_document import ReportDocument
from stalwart.monitoring.report_html import report_sections as monitoring_sections
from stalwart.rollout.history import RolloutHistory
from stalwart.rollout.report_html import report_sections as rollout_sections
from stalwart.rollout.shadow_report import build_shadow_report, shadow_sections
from stalwart.serving.console.render import markup
from stalwart.serving.console.state import Console
from stalwart.serving.console.views import actions_for
from stalwart.serving.monitoring import parse_instant

__all__ = ["WINDOWS", "monitoring_view", "rollout_view", "shadows_view", "window_of"]

WINDOWS: Final = ("15m", "1h", "6h", "24h", "7d", "30d")
"""The windows a report page offers (``since``: that long ago until now)."""
_MAX_SPAN: Final = dt.timedelta(days=400)
_MAX_EVENTS: Final = 10_000


def window_of(query: Mapping[str, str], default: str) -> tuple[str, dt.datetime, dt.datetime]:
    """The ``since`` of a page's query (a duration ago or an ISO time; ``default`` when
    absent) and the window it means, up to now; a bad one is the client's 400."""
    text = query.get("since") or default
    now = dt.datetime.now(dt.UTC)
    since = parse_instant(text, "since", now)
    if since >= now:
        raise RequestError("since must be in the past", field="since")
    if now - since > _MAX_SPAN:
        raise RequestError(f"since is over {_MAX_SPAN.days} days ago; narrow it", field="since")
    return text, since, now + dt.timedelta(seconds=1)


async def monitoring_view(console: Console, name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """The monitoring report's sections for ``name`` over the chosen window. The
    multivariate drift (a domain classifier, seconds of CPU) only with ``multivariate=1``."""
    console.project.deployment(name)  # DeploymentNotFound (404)
    text, since, until = window_of(query, "24h")
    multivariate = query.get("multivariate") == "1"

    def build() -> dict[str, Any]:
        doc = build_report(console.registry.db, name, since, until, settings=console.settings, multivariate=multivariate)
        if not multivariate:
            doc["notes"].setdefault("multivariate", "not computed on this page by default: follow 'multivariate drift' above to compute it")
        document = ReportDocument.from_dict(doc)
        sections, missing = _drawn(lambda: monitoring_sections(document))
        return {"sections": sections, "missing": missing, "variants": document.variants}

    built = await asyncio.to_thread(build)
    return {"name": name, "since": text, "windows": WINDOWS, "multivariate": multivariate, **built}


async def rollout_view(console: Console, name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """One rollout of ``name`` (``?id=``; default the newest) as the rollout report's
    sections, with every rollout of the deployment listed and the actions its state allows."""
    console.project.deployment(name)
    wanted = query.get("id")
    if wanted is not None and not wanted.isdigit():
        raise RequestError("id: a rollout's number", field="id")

    def build() -> dict[str, Any]:
        rollouts = console.rollouts.of(name, limit=50)
        if not rollouts:
            return {"rollouts": [], "rollout": None, "sections": {}, "missing": None, "actions": ()}
        chosen = rollouts[0] if wanted is None else next((r for r in rollouts if r.id == int(wanted)), None)
        if chosen is None:
            raise NotFound(f"deployment '{name}' has no rollout {wanted} among its last 50")
        history = RolloutHistory.from_rows(chosen.to_dict(), console.rollouts.events(chosen.id, limit=_MAX_EVENTS))
        sections, missing = _drawn(lambda: rollout_sections(history, now=time.time()))
        return {"rollouts": rollouts, "rollout": chosen, "sections": sections, "missing": missing, "actions": actions_for(chosen)}

    return {"name": name, **await asyncio.to_thread(build)}


async def shadows_view(console: Console, name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """Each shadow of ``name`` against the answers clients got, over the chosen window."""
    console.project.deployment(name)
    text, since, until = window_of(query, "1h")

    def build() -> dict[str, Any]:
        document = build_shadow_report(console.registry.db, name, since=since, until=until)
        sections, missing = _drawn(lambda: dict(enumerate(shadow_sections(document))))
        return {"sections": sections, "missing": missing, "count": len(document["shadows"])}

    return {"name": name, "since": text, "windows": WINDOWS, **await asyncio.to_thread(build)}


def _drawn(sections: Callable[[], Mapping[Any, str]]) -> tuple[dict[Any, Any], str | None]:
    """``sections()`` as markup by id; without matplotlib, none and the message saying
    which extra to install."""
    try:
        built = sections()
    except MissingExtraError as exc:
        return {}, exc.message
    return {key: markup(html) for key, html in built.items()}, None
