"""Stalwart's own HTTP API under ``/v1``: deployments (predict, describe, health) and the
control plane (source rows, cache invalidation), each control call recorded in the audit
log with the name of the token that made it."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.cache import FeatureCache
from stalwart.errors import NotFound
from stalwart.features.readers import SqlReader
from stalwart.features.writes import invalidate as invalidate_cached
from stalwart.features.writes import write_rows as write_rows_into
from stalwart.project import Project, SqlSource
from stalwart.registry import Registry
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import decode_json, shown
from stalwart.serving.dataplane import DataPlane, PredictCall
from stalwart.serving.deployments import Deployments
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.responses import json_response

__all__ = ["control_routes", "invalidate_feature_set", "v1_routes"]


def v1_routes(plane: DataPlane) -> list[Route]:
    """Deployments: list, describe, health, and predict (a thin adapter over the data plane)."""
    deployments = plane.deployments

    async def list_deployments(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments"
        return json_response({"deployments": [await deployments.describe(d.name) for d in deployments.deployments()]})

    async def get_deployment(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}"
        return json_response(await deployments.describe(request.path_params["name"]))

    async def health(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}/health"
        return json_response(plane.health(request.path_params["name"]))

    async def predict(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/deployments/{name}/predict"
        headers = request.headers
        call = PredictCall(
            request.path_params["name"], await request.body(), info, deadline_of(headers), priority_of(headers),
            routing_key=headers.get("x-stalwart-routing-key"),
        )
        prediction = await plane.predict(call)
        answer = {"X-Stalwart-Variant": prediction.variant}
        if prediction.degraded is not None:
            answer["X-Stalwart-Degraded"] = prediction.degraded.header()
        return json_response(prediction.body(), headers=answer)

    return [
        Route("/v1/deployments", list_deployments, methods=["GET"]),
        Route("/v1/deployments/{name}", get_deployment, methods=["GET"]),
        Route("/v1/deployments/{name}/health", health, methods=["GET"]),
        Route("/v1/deployments/{name}/predict", predict, methods=["POST"]),
    ]


def control_routes(deployments: Deployments, auth: BearerAuth, cache: FeatureCache | None, registry: Registry) -> list[Route]:
    """Mutating calls: writing source rows and invalidating cached features (bearer token).

    Each call that succeeds is recorded in ``registry``'s audit log after it took effect,
    with counts (never row values); if the record cannot be written the call answers the
    storage error, so no change is reported as done without its record."""
    project = deployments.project

    async def audit(actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        await asyncio.to_thread(registry.audit, actor, action, subject, detail)

    async def write_rows(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/sources/{name}/rows"
        actor = auth.require(request)
        name = request.path_params["name"]
        source = project.sources.get(name)
        if not isinstance(source, SqlSource):
            raise NotFound(f"source '{name}' is not a SQL source of this project; rows can be written to {', '.join(sorted(n for n, s in project.sources.items() if isinstance(s, SqlSource))) or 'none'}")
        rows = _rows_body(await request.body())
        reader = await asyncio.to_thread(deployments.reader, source)
        if not isinstance(reader, SqlReader):  # pragma: no cover - a SqlSource always gets a SqlReader
            raise NotFound(f"source '{name}' cannot be written")
        result = await write_rows_into(source, rows, reader=reader, cache=cache, feature_sets=project.feature_sets.values())
        info.fields["rows"] = result.rows
        await audit(actor, "source.write", name, result.as_dict())
        return json_response(result.as_dict())

    async def invalidate_features(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/features/{name}/invalidate"
        actor = auth.require(request)
        name = request.path_params["name"]
        entities = _invalidate_body(await request.body())
        return json_response(await invalidate_feature_set(project, cache, registry, name, entities, actor=actor))

    return [
        Route("/v1/sources/{name}/rows", write_rows, methods=["POST"]),
        Route("/v1/features/{name}/invalidate", invalidate_features, methods=["POST"]),
    ]


async def invalidate_feature_set(
    project: Project,
    cache: FeatureCache | None,
    registry: Registry,
    name: str,
    entities: list[dict[str, Any]] | None,
    *,
    actor: str,
) -> dict[str, Any]:
    """Drop the cached values of feature set ``name`` (of ``entities``, or all of them) in
    every replica, then record it in the audit log under ``actor``: what
    ``POST /v1/features/{name}/invalidate`` and the console's button do. NotFound for a set
    the project lacks."""
    feature_set = project.feature_sets.get(name)
    if feature_set is None:
        raise NotFound(f"feature set '{shown(name)}' is not in this project; it has {', '.join(sorted(project.feature_sets)) or 'none'}")
    published = await invalidate_cached(feature_set, entities, cache)
    answer = {"feature_set": name, "entities": None if entities is None else len(entities), "invalidated": published}
    await asyncio.to_thread(registry.audit, actor, "features.invalidate", name, {"entities": answer["entities"], "invalidated": published})
    return answer


class _RowsBody(msgspec.Struct):
    rows: list[dict[str, Any]]


class _InvalidateBody(msgspec.Struct):
    entities: list[dict[str, Any]] | None = None


_rows_decoder = msgspec.json.Decoder(_RowsBody)
_invalidate_decoder = msgspec.json.Decoder(_InvalidateBody)


def _rows_body(body: bytes) -> list[dict[str, Any]]:
    return decode_json(body, _rows_decoder, field="rows", hint='send {"rows": [{...}, ...]}').rows


def _invalidate_body(body: bytes) -> list[dict[str, Any]] | None:
    if not body.strip():
        return None
    hint = 'send {"entities": [{...}]}, or nothing for the whole set'
    return decode_json(body, _invalidate_decoder, field="entities", hint=hint).entities
