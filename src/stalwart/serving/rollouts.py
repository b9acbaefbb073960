"""The admin API of variants and rollouts (``stalwart rollout ...`` over HTTP).

::

    GET  /v1/deployments/{name}/routes                  the variants every replica serves
    PUT  /v1/deployments/{name}/routes                  {"canary": "fraud:3", "canary_weight": 0.1,
                                                         "shadows": {"next": {"model": "fraud:4", "rate": 0.5}}}
    POST /v1/deployments/{name}/rollout                 {"canary": "fraud:3", "plan": {...}, "reason": "..."}
    GET  /v1/deployments/{name}/rollout?events=100      the open (else the last) rollout and its newest events
    POST /v1/deployments/{name}/rollout/{action}        pause | resume | promote | rollback, {"reason": "..."}

Changes need the admin bearer token and are in the audit log under the token's name; reads
do not (they hold no request data). Every change is written to the database, which every
replica polls: this replica serves it within ``STALWART_ROUTES_POLL_SECONDS`` like the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.errors import NotFound, RequestError
from stalwart.project import Project
from stalwart.registry import Registry
from stalwart.rollout.commands import ACTIONS, set_routes, start_rollout
from stalwart.rollout.rollouts import RolloutStore
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import decode_json, shown
from stalwart.serving.middleware import request_info
from stalwart.serving.responses import json_response

__all__ = ["rollout_routes"]

_MAX_EVENTS = 1000


class _RoutesBody(msgspec.Struct, forbid_unknown_fields=True):
    canary: str | None = None
    canary_weight: float | None = None
    shadows: dict[str, Any] | None = None
    remove_canary: bool = False


class _StartBody(msgspec.Struct, forbid_unknown_fields=True):
    canary: str
    plan: dict[str, Any] | None = None
    reason: str = ""


class _ActionBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


_routes_decoder = msgspec.json.Decoder(_RoutesBody)
_start_decoder = msgspec.json.Decoder(_StartBody)
_action_decoder = msgspec.json.Decoder(_ActionBody)


def rollout_routes(
    store: RolloutStore, registry: Registry, project: Project, auth: BearerAuth, *, prediction_log: str = "auto"
) -> list[Route]:
    """The routes and rollout endpoints of ``project``'s deployments (``prediction_log``:
    where the server's records go; a rollout needs them in the database)."""

    def deployment_of(request: Request, endpoint: str) -> str:
        request_info(request.scope).endpoint = endpoint
        name: str = request.path_params["name"]
        if name not in project.deployments:
            raise NotFound(f"no deployment '{shown(name)}' in this server's project; GET /v1/deployments lists them")
        return name

    async def get_routes(request: Request) -> Response:
        name = deployment_of(request, "/v1/deployments/{name}/routes")
        routes, revision = await asyncio.to_thread(store.routes.get, name)
        return json_response({"deployment": name, "revision": revision, "routes": routes.to_dict()})

    async def put_routes(request: Request) -> Response:
        name = deployment_of(request, "/v1/deployments/{name}/routes")
        actor = auth.require(request)
        body = decode_json(await request.body() or b"{}", _routes_decoder, field="body", hint=_ROUTES_HINT)
        routes, revision = await asyncio.to_thread(
            lambda: set_routes(
                store, registry, project, name, canary=body.canary, canary_weight=body.canary_weight,
                shadows=body.shadows, remove_canary=body.remove_canary, actor=actor,
            )
        )
        return json_response({"deployment": name, "revision": revision, "routes": routes.to_dict()})

    async def post_rollout(request: Request) -> Response:
        name = deployment_of(request, "/v1/deployments/{name}/rollout")
        actor = auth.require(request)
        body = decode_json(await request.body(), _start_decoder, field="body", hint=_START_HINT)
        rollout = await asyncio.to_thread(
            lambda: start_rollout(
                store, registry, project, name, body.canary, plan=body.plan, actor=actor, reason=body.reason,
                prediction_log=prediction_log,
            )
        )
        return json_response({"rollout": rollout.to_dict()}, status=201)

    async def get_rollout(request: Request) -> Response:
        name = deployment_of(request, "/v1/deployments/{name}/rollout")
        limit = _events_param(request.query_params.get("events", "100"))
        rollout = await asyncio.to_thread(store.latest, name)
        if rollout is None:
            raise NotFound(f"deployment '{name}' has had no rollout; start one with POST /v1/deployments/{name}/rollout")
        events = await asyncio.to_thread(store.events, rollout.id, limit=limit) if limit else []
        return json_response({"rollout": rollout.to_dict(), "events": events})

    async def post_action(request: Request) -> Response:
        name = deployment_of(request, "/v1/deployments/{name}/rollout/{action}")
        action: str = request.path_params["action"]
        if action not in ACTIONS:
            raise NotFound(f"no rollout action '{shown(action)}'; use one of {', '.join(ACTIONS)}")
        actor = auth.require(request)
        body = decode_json(await request.body() or b"{}", _action_decoder, field="body", hint='send {"reason": "..."} or nothing')
        move: Callable[..., Any] = getattr(store, action)
        rollout = await asyncio.to_thread(lambda: move(name, actor=actor, reason=body.reason))
        return json_response({"rollout": rollout.to_dict()})

    return [
        Route("/v1/deployments/{name}/routes", get_routes, methods=["GET"]),
        Route("/v1/deployments/{name}/routes", put_routes, methods=["PUT"]),
        Route("/v1/deployments/{name}/rollout", get_rollout, methods=["GET"]),
        Route("/v1/deployments/{name}/rollout", post_rollout, methods=["POST"]),
        Route("/v1/deployments/{name}/rollout/{action}", post_action, methods=["POST"]),
    ]


_ROUTES_HINT = 'send {"canary": "model:version", "canary_weight": 0.1} or {"shadows": {"next": "model:version"}}'
_START_HINT = 'send {"canary": "model:version", "plan": {"steps": [0.05, 0.25, 0.5]}}'


def _events_param(text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_EVENTS:
        raise RequestError(f"events: a whole number from 0 to {_MAX_EVENTS}", field="events")
    return int(text)
