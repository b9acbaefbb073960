"""``POST /v1/feedback``: labels for logged predictions, a batch at a time.

A thin adapter over :mod:`stalwart.monitoring.feedback`: the bearer token is checked, the
body decoded, checked and stored on a worker thread (a batch of 10 000 labels is
milliseconds of work the event loop does not wait on), in one transaction. The answer
counts the labels accepted and those matched to a logged prediction; the batch is
recorded in the audit log (counts only) in the same transaction as its labels.

::

    POST /v1/feedback
    {"deployment": "fraud",
     "items": [{"request_id": "4f1c...", "label": 1},
               {"entity": {"card_id": 7}, "time": "2024-05-01T12:00:00Z", "label": 0}]}
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.config import Settings
from stalwart.monitoring.feedback import FeedbackResult, check_items, store_feedback
from stalwart.registry import Registry
from stalwart.registry.audit import append_event
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import decode_json
from stalwart.serving.middleware import request_info
from stalwart.serving.responses import json_response

__all__ = ["feedback_routes"]


class _Batch(msgspec.Struct):
    items: list[Any]
    deployment: Any = None


_decoder = msgspec.json.Decoder(_Batch)
_HINT = 'send {"items": [{"request_id": "...", "label": 1}, ...]}'


def feedback_routes(registry: Registry, auth: BearerAuth, settings: Settings) -> list[Route]:
    """The feedback route, storing labels in ``registry``'s database."""

    def store(body: bytes, actor: str) -> FeedbackResult:
        batch = decode_json(body, _decoder, field="items", hint=_HINT)
        items = check_items(batch.items, deployment=batch.deployment, max_items=settings.feedback_max_items)
        # The audit event is appended in the labels' own transaction.
        def record(conn: Connection, result: FeedbackResult) -> None:
            append_event(conn, actor, "feedback.write", batch.deployment if isinstance(batch.deployment, str) else "*", result.as_dict())

        return store_feedback(registry.db, items, actor=actor, match_seconds=settings.feedback_match_seconds, within=record)

    async def post_feedback(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/feedback"
        actor = auth.require(request)
        result = await asyncio.to_thread(store, await request.body(), actor)
        info.fields["labels"] = result.accepted
        return json_response(result.as_dict())

    return [Route("/v1/feedback", post_feedback, methods=["POST"])]
