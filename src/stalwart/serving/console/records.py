"""Recent predictions of a deployment, filtered, and one record in full: the console's view
of the prediction log (the store ``GET /v1/predictions/{id}`` reads), for a logged-in admin.

Filters: ``status`` (a status code, or ``errors`` for every 4xx and 5xx), ``degraded``
(``yes`` or ``no``), ``variant`` (``primary``, ``canary``, ...), ``since`` (a duration ago or
an ISO time) and ``limit`` (at most :data:`MAX_LIMIT`). A bad value is a 400 naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from stalwart.errors import NotFound, RequestError
from stalwart.monitoring.prediction_reads import datetime_ns
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks import Query
from stalwart.serving.codec import shown
from stalwart.serving.console.charts import bars
from stalwart.serving.console.render import markup
from stalwart.serving.console.reports import WINDOWS, window_of
from stalwart.serving.console.state import Console

__all__ = ["MAX_LIMIT", "prediction_view", "predictions_view"]

MAX_LIMIT: Final = 500
_VARIANT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:")


def _query(name: str, params: Mapping[str, str]) -> tuple[Query, dict[str, str]]:
    """The store query a page's filters ask for, and the filters as the form shows them."""
    status_text = params.get("status", "")
    status: int | None = None
    if status_text not in ("", "errors"):
        if not status_text.isdigit() or not 100 <= int(status_text) <= 599:
            raise RequestError("status: a status code from 100 to 599, or 'errors'", field="status")
        status = int(status_text)
    degraded_text = params.get("degraded", "")
    if degraded_text not in ("", "yes", "no"):
        raise RequestError("degraded: 'yes', 'no' or nothing", field="degraded")
    variant = params.get("variant", "")
    if len(variant) > 64 or not set(variant) <= _VARIANT_CHARS:
        raise RequestError("variant: a variant's name (primary, canary, fallback, a shadow's)", field="variant")
    limit_text = params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise RequestError(f"limit: a whole number from 1 to {MAX_LIMIT}", field="limit")
    since_text, since, _ = window_of(params, "24h")
    query = Query(
        deployment=name,
        status=status,
        errors_only=status_text == "errors",
        degraded=None if not degraded_text else degraded_text == "yes",
        variant=variant or None,
        since_ns=datetime_ns(since),
        limit=int(limit_text),
    )
    shown_filters = {"status": status_text, "degraded": degraded_text, "variant": variant, "limit": limit_text, "since": since_text}
    return query, shown_filters


async def predictions_view(console: Console, name: str, params: Mapping[str, str]) -> dict[str, Any]:
    """The deployment's newest records that pass the filters."""
    console.project.deployment(name)  # DeploymentNotFound (404)
    query, filters = _query(name, params)
    store = console.store
    records: list[PredictionRecord] = [] if store is None else await asyncio.to_thread(store.query, query)
    variants = sorted({"primary", "canary", "fallback", *(v for v in console.plane.deployments.policy(name).routes.shadows)})
    return {
        "name": name,
        "records": records,
        "filters": filters,
        "variants": variants,
        "windows": WINDOWS,
        "readable": store is not None,
        "log": console.settings.prediction_log,
    }


async def prediction_view(console: Console, request_id: str) -> dict[str, Any]:
    """One record: identity, outcome, features and outputs per row, validation, cache,
    timings (drawn), and its place in its hash chain."""
    store = console.store
    if store is None:
        raise NotFound(
            f"this server's prediction log ({console.settings.prediction_log}) cannot be read back; "
            f"set STALWART_PREDICTION_LOG to auto, sql or parquet to look records up"
        )
    record = await asyncio.to_thread(store.get, request_id)
    if record is None:
        raise NotFound(f"no prediction record for request '{shown(request_id)}'; records reach the log shortly after their answer")
    timings = record.timings or {}
    return {
        "record": record,
        "time": record.time_ns / 1e9,
        "features": _rows(record.features),
        "outputs": _rows(record.outputs),
        "inputs": _rows(record.inputs),
        "timings_chart": markup(bars(list(timings.items()), "milliseconds per stage")) if timings else None,
    }


def _rows(columns: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Columns of per-row values as a table (headers, rows); a value that is not a list per
    row (a tensor's summary) is one row of its own."""
    if not columns:
        return None
    names = list(columns)
    lists = [columns[n] if isinstance(columns[n], list) else [columns[n]] for n in names]
    height = max(len(values) for values in lists)
    rows = [[values[i] if i < len(values) else None for values in lists] for i in range(min(height, 200))]
    return {"headers": names, "rows": rows, "more": max(0, height - 200)}
