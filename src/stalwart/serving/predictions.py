"""``GET /v1/predictions/{request_id}``: one request's prediction record, for the admin.

A record holds what a request sent and got (features, inputs, outputs), so reading it
needs the admin bearer token, like the control plane. The store is the configured log's
(opened once, with the app); the read runs on a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.errors import NotFound
from stalwart.monitoring.records import encode_record
from stalwart.monitoring.sinks import PredictionStore
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import shown
from stalwart.serving.middleware import request_info

__all__ = ["prediction_routes"]


def prediction_routes(store: PredictionStore | None, auth: BearerAuth, *, log: str) -> list[Route]:
    """The prediction log's read route over ``store`` (None: the log cannot be read back,
    ``log`` says which it is, and the route says so)."""

    async def get_prediction(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/predictions/{request_id}"
        auth.require(request)
        request_id: str = request.path_params["request_id"]
        if store is None:
            raise NotFound(
                f"this server's prediction log ({log}) cannot be read back; set "
                f"STALWART_PREDICTION_LOG to auto, sql or parquet to look records up"
            )
        record = await asyncio.to_thread(store.get, request_id)
        if record is None:
            raise NotFound(
                f"no prediction record for request '{shown(request_id)}'; records reach the log "
                f"shortly after their answer, and retention removes old ones"
            )
        return Response(encode_record(record), media_type="application/json")

    return [Route("/v1/predictions/{request_id}", get_prediction, methods=["GET"])]
