"""Stalwart's own HTTP API under ``/v1``: deployments (predict, describe, health) and the
control plane (source rows, cache invalidation)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.cache import FeatureCache
from stalwart.errors import NotFound, NotReady, ValidationFailed
from stalwart.features.readers import SqlReader
from stalwart.features.writes import invalidate as invalidate_cached
from stalwart.features.writes import write_rows as write_rows_into
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.project import SqlSource
from stalwart.serving.auth import BearerAuth
from stalwart.serving.codec import decode_json
from stalwart.serving.deployments import DeploymentService
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.responses import json_response

__all__ = ["control_routes", "v1_routes"]


def v1_routes(service: DeploymentService, metrics: ResilienceMetrics) -> list[Route]:
    async def list_deployments(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments"
        return json_response({"deployments": [await service.describe(d.name) for d in service.deployments()]})

    async def get_deployment(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}"
        return json_response(await service.describe(request.path_params["name"]))

    async def health(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}/health"
        return json_response(service.health(request.path_params["name"]))

    async def predict(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/deployments/{name}/predict"
        name = request.path_params["name"]
        deployment = service.project.deployment(name)
        info.fields["deployment"] = name
        deadline = deadline_of(request)
        priority = priority_of(request)
        body = await request.body()
        if not service.repository.ready:
            raise NotReady("the server is still loading its models; retry shortly")
        info.model = deployment.model_name
        try:
            prediction = await service.predict(name, body, info.request_id, deadline=deadline, priority=priority)
        except ValidationFailed as exc:
            info.fields["validation"] = {"violations": len(exc.violations), "rejected": True}
            raise
        model = prediction.body.get("model")
        if model:
            info.model, info.version = model["name"], str(model["version"])
        info.fields["rows"] = len(prediction.body["predictions"])
        for stage, ms in prediction.notes.get("timings", {}).items():
            info.fields[stage] = round(ms, 3)
        for note in ("validation", "features_degraded", "feature_cache"):
            if note in prediction.notes:
                info.fields[note] = prediction.notes[note]
        headers: dict[str, str] = {}
        if prediction.degraded is not None:
            step = prediction.degraded
            prediction.body["degraded"] = step.as_dict()
            headers["X-Stalwart-Degraded"] = step.header()
            info.fields["degraded"] = step.level
            info.fields["degraded_reason"] = step.reason
            metrics.degraded.labels(name, step.level, step.reason).inc()
        return json_response(prediction.body, headers=headers)

    return [
        Route("/v1/deployments", list_deployments, methods=["GET"]),
        Route("/v1/deployments/{name}", get_deployment, methods=["GET"]),
        Route("/v1/deployments/{name}/health", health, methods=["GET"]),
        Route("/v1/deployments/{name}/predict", predict, methods=["POST"]),
    ]


def control_routes(service: DeploymentService, auth: BearerAuth, cache: FeatureCache | None) -> list[Route]:
    """Mutating calls: writing source rows and invalidating cached features (bearer token)."""
    project = service.project

    async def write_rows(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/sources/{name}/rows"
        auth.require(request)
        name = request.path_params["name"]
        source = project.sources.get(name)
        if not isinstance(source, SqlSource):
            raise NotFound(f"source '{name}' is not a SQL source of this project; rows can be written to {', '.join(sorted(n for n, s in project.sources.items() if isinstance(s, SqlSource))) or 'none'}")
        rows = _rows_body(await request.body())
        reader = await asyncio.to_thread(service.reader, source)
        if not isinstance(reader, SqlReader):  # pragma: no cover - a SqlSource always gets a SqlReader
            raise NotFound(f"source '{name}' cannot be written")
        result = await write_rows_into(source, rows, reader=reader, cache=cache, feature_sets=project.feature_sets.values())
        info.fields["rows"] = result.rows
        return json_response(result.as_dict())

    async def invalidate_features(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/features/{name}/invalidate"
        auth.require(request)
        name = request.path_params["name"]
        feature_set = project.feature_sets.get(name)
        if feature_set is None:
            raise NotFound(f"feature set '{name}' is not in this project; it has {', '.join(sorted(project.feature_sets)) or 'none'}")
        body = await request.body()
        entities = _invalidate_body(body)
        published = await invalidate_cached(feature_set, entities, cache)
        return json_response({"feature_set": name, "entities": None if entities is None else len(entities), "invalidated": published})

    return [
        Route("/v1/sources/{name}/rows", write_rows, methods=["POST"]),
        Route("/v1/features/{name}/invalidate", invalidate_features, methods=["POST"]),
    ]


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
