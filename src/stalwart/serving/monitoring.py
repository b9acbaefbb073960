"""``GET /v1/deployments/{name}/monitoring``: the monitoring report of a deployment as JSON.

The same document as ``stalwart monitor report --json`` (drift against the training
profile, distributions, predictions and quality over time, skew, alerts), built from the
registry's database on a worker thread. Query: ``since`` (a duration ago or an ISO time,
default ``24h``) and ``until`` (default now). Distributions of served features are data
about the traffic, so reading them needs the admin bearer token, like the prediction log.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.config import Settings
from stalwart.errors import ConfigError, NotFound, RequestError
from stalwart.monitoring.prediction_reads import datetime_ns, parse_time
from stalwart.monitoring.report import build_report
from stalwart.monitoring.report_document import ReportDocument
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import shown
from stalwart.serving.middleware import request_info
from stalwart.storage import Database

__all__ = ["monitoring_routes", "parse_instant"]

_MAX_SPAN = dt.timedelta(days=400)


def monitoring_routes(database: Database, deployments: frozenset[str], auth: BearerAuth, settings: Settings) -> list[Route]:
    """The report route over ``database``, for the declared ``deployments``."""

    async def get_monitoring(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}/monitoring"
        auth.require(request)
        name: str = request.path_params["name"]
        if name not in deployments:
            raise NotFound(
                f"no deployment '{shown(name)}' in this server's project; GET /v1/deployments lists them"
            )
        now = dt.datetime.now(dt.UTC)
        since = parse_instant(request.query_params.get("since", "24h"), "since", now)
        until = parse_instant(request.query_params.get("until"), "until", now) if "until" in request.query_params else now
        if until <= since:
            raise RequestError("until must be after since", field="until")
        if until - since > _MAX_SPAN:
            raise RequestError(f"since to until spans over {_MAX_SPAN.days} days; narrow it", field="since")
        doc = await asyncio.to_thread(build_report, database, name, since, until, settings=settings)
        return Response(ReportDocument.from_dict(doc).to_json(), media_type="application/json")

    return [Route("/v1/deployments/{name}/monitoring", get_monitoring, methods=["GET"])]


def parse_instant(text: str | None, field: str, now: dt.datetime) -> dt.datetime:
    """A duration ago (``24h``) or an ISO 8601 time, read as the CLI and
    ``stalwart.read_predictions`` read them (``parse_time``); a bad one is the client's 400."""
    if text is None or len(text) > 64:
        raise RequestError(f"{field}: give a duration ago (24h) or an ISO 8601 time", field=field)
    try:
        ns = parse_time(text, field, now_ns=datetime_ns(now)) or 0  # a str is never None
    except ConfigError as exc:
        raise RequestError(exc.message, field=field) from None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
