"""The Open Inference Protocol (KServe v2) REST endpoints: a thin adapter over the data plane.

``GET /v2``, ``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}]``, its ``/ready``
and ``POST .../infer``. Without a version, the version the repository currently serves as
latest answers. ``infer`` reads the path and headers, hands the body to
:meth:`DataPlane.infer <stalwart.serving.dataplane.DataPlane.infer>` and encodes the answer:
JSON, or the binary tensor data extension's form (:mod:`~stalwart.serving.binary`).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart._version import __version__
from stalwart.errors import StalwartError
from stalwart.registry import ModelVersion
from stalwart.serving.binary import (
    HEADER_LENGTH,
    encode_rest_response,
    header_length,
    request_decoder,
)
from stalwart.serving.dataplane import DataPlane, InferCall
from stalwart.serving.drain import Drain
from stalwart.serving.errors import logged_error_response
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.repository import ModelRepository, version_or_not_found
from stalwart.serving.responses import json_response

__all__ = ["InferFastPath", "oip_routes"]

EXTENSIONS = ["binary_tensor_data", "model_repository_metadata", "prometheus_metrics", "stalwart_deployments"]


def oip_routes(plane: DataPlane, drain: Drain | None = None) -> list[Route]:
    """The ``/v2`` routes over ``plane``; readiness says no while ``drain`` is draining."""
    endpoints = _Endpoints(plane, drain or Drain())
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
    def __init__(self, plane: DataPlane, drain: Drain) -> None:
        self.plane = plane
        self.repository: ModelRepository = plane.repository
        self.drain = drain

    async def server_metadata(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2"
        return json_response({"name": "stalwart", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2/health/live"
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        request_info(request.scope).endpoint = "/v2/health/ready"
        # Draining first: a load balancer must stop sending before the server stops accepting.
        reason = "draining: the server is shutting down" if self.drain.draining else self.repository.not_ready_reason()
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
        """Reached only when :class:`InferFastPath` is not installed (``create_app`` installs it)."""
        name, version = _target(request)
        body, headers = await _answer(self.plane, request.scope, name, version, await request.body(), request.headers)
        return Response(body, headers={k.decode(): v.decode() for k, v in headers})


class InferFastPath:
    """``POST /v2/models/{m}[/versions/{v}]/infer`` straight to the data plane, past
    Starlette's router, request object and exception middleware: the inference routes
    take nearly all the traffic, and those layers cost them more per request than the
    adapter itself. Installed as the innermost middleware, below the body limit and the
    request's identity; everything else (and any other method) goes on to the router.
    Answers and errors are the routes' own, byte for byte; an error that is not
    Stalwart's goes up to :class:`~stalwart.serving.middleware.Observe`, as from a route.
    """

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _infer_target(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        name, raw_version = target
        try:
            version = None if raw_version is None else version_or_not_found(raw_version, name)
            body, headers = await _answer(self.plane, scope, name, version, await _body(receive), Headers(scope=scope))
        except StalwartError as exc:
            await logged_error_response(exc, scope.get("stalwart.request_id"))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(body)).encode()), *headers,
        ]})
        await send({"type": "http.response.body", "body": body})


async def _answer(
    plane: DataPlane, scope: Scope, name: str, version: int | None, body: bytes, headers: Headers
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its headers (JSON, or the binary form when the client asked)."""
    info = request_info(scope)
    info.endpoint = "/v2/models/{model}/infer"
    decode = request_decoder(header_length(headers.get(HEADER_LENGTH)))
    inferred = await plane.infer(InferCall(name, version, body, info, deadline_of(headers), priority_of(headers), decode))
    validation = inferred.validation
    return encode_rest_response(
        inferred.request,
        model_name=name,
        model_version=inferred.version.version,
        request_id=inferred.id,
        outputs=inferred.outputs,
        signature=inferred.version.signature,
        parameters={"stalwart_validation": validation.response} if validation is not None else None,
    )


def _infer_target(scope: Scope) -> tuple[str, str | None] | None:
    """(model, version or None) when the path is an inference route, as the router's
    ``{model}`` and ``{version}`` (one non-empty segment each) would match it."""
    path: str = scope["path"]
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


async def _body(receive: Receive) -> bytes:
    """The whole request body (a client gone before sending it: ClientDisconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # type: ignore[no-any-return]
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect


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
