"""The Open Inference Protocol (KServe v2) REST endpoints: a thin adapter over the data plane.

``GET /v2``, ``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}]``, its ``/ready``
and ``POST .../infer``. Without a version, the version the repository currently serves as
latest answers. ``infer`` reads the path and headers, hands the body to
:meth:`DataPlane.infer <stalwart.serving.dataplane.DataPlane.infer>` and encodes the answer.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart._version import __version__
from stalwart.registry import ModelVersion
from stalwart.serving.codec import encode_response
from stalwart.serving.dataplane import DataPlane, InferCall
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.repository import ModelRepository, version_or_not_found
from stalwart.serving.responses import json_response

__all__ = ["oip_routes"]

EXTENSIONS = ["model_repository_metadata", "prometheus_metrics", "stalwart_deployments"]


def oip_routes(plane: DataPlane) -> list[Route]:
    endpoints = _Endpoints(plane)
    # The router tries routes in order and no two of these overlap: the inference routes,
    # which take nearly all the traffic, go first so they match on the first try.
    return [
        Route("/v2/models/{model}/infer", endpoints.infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", endpoints.infer, methods=["POST"]),
        Route("/v2", endpoints.server_metadata, methods=["GET"]),
        Route("/v2/health/live", endpoints.live, methods=["GET"]),
        Route("/v2/health/ready", endpoints.ready, methods=["GET"]),
        Route("/v2/models/{model}", endpoints.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", endpoints.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", endpoints.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", endpoints.model_ready, methods=["GET"]),
    ]


class _Endpoints:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.repository: ModelRepository = plane.repository

    async def server_metadata(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2"
        return json_response({"name": "stalwart", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2/health/live"
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2/health/ready"
        reason = self.repository.not_ready_reason()
        if reason is not None:
            return json_response({"ready": False, "error": reason}, status=503)
        return json_response({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v2/models/{model}"
        name, version = _target(request)
        mv = await self.repository.describe(name, version)
        info.model, info.version = name, str(mv.version)
        return json_response(_metadata(mv))

    async def model_ready(self, request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v2/models/{model}/ready"
        name, version = _target(request)
        mv = await self.repository.describe(name, version)
        info.model, info.version = name, str(mv.version)
        if self.repository.is_loaded(name, mv.version):
            return json_response({"name": name, "ready": True})
        failure = self.repository.failure(name, mv.version)
        if failure is None:
            self.repository.warm(name, mv.version)
        error = failure or f"model {mv.ref} is loading"
        return json_response({"name": name, "ready": False, "error": error}, status=503)

    async def infer(self, request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v2/models/{model}/infer"
        name, version = _target(request)
        call = InferCall(name, version, await request.body(), info, deadline_of(request), priority_of(request))
        inferred = await self.plane.infer(call)
        validation = inferred.validation
        return Response(
            encode_response(
                model_name=name,
                model_version=inferred.version.version,
                request_id=inferred.id,
                outputs=inferred.outputs,
                signature=inferred.version.signature,
                parameters={"stalwart_validation": validation.response} if validation is not None else None,
            ),
            media_type="application/json",
        )


def _target(request: Request) -> tuple[str, int | None]:
    name: str = request.path_params["model"]
    raw = request.path_params.get("version")
    return name, None if raw is None else version_or_not_found(raw, name)


def _metadata(mv: ModelVersion) -> dict[str, Any]:
    return {
        "name": mv.name,
        "versions": [str(mv.version)],
        "platform": mv.flavor,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.signature.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.signature.outputs],
        "parameters": {"sha256": mv.sha256, "created_at": mv.created_at, "tags": mv.tags},
    }
