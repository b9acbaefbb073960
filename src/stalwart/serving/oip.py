"""The Open Inference Protocol (KServe v2) REST endpoints.

``GET /v2``, ``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}]``, its ``/ready``
and ``POST .../infer``. Without a version, the version the repository currently serves as
latest answers.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart._version import __version__
from stalwart.errors import NotReady, ResilienceError, ValidationFailed
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.pipeline import Exchange
from stalwart.registry import ModelVersion
from stalwart.resilience import GuardConfig, LoadShedder, ShedderConfig
from stalwart.serving.chains import Chains, ChainSpec
from stalwart.serving.codec import check_request, decode_request, encode_response
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.repository import ModelRepository, version_or_not_found
from stalwart.serving.responses import json_response

__all__ = ["oip_routes"]

EXTENSIONS = ["model_repository_metadata", "prometheus_metrics", "stalwart_deployments"]


def oip_routes(repository: ModelRepository, chains: Chains, guard: GuardConfig | None, metrics: ResilienceMetrics) -> list[Route]:
    endpoints = _Endpoints(repository, chains, guard, metrics)
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
    def __init__(self, repository: ModelRepository, chains: Chains, guard: GuardConfig | None, metrics: ResilienceMetrics) -> None:
        self.repository = repository
        self.chains = chains
        self.guard = guard
        self.metrics = metrics
        self.shedders: dict[str, LoadShedder] = {}

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
        deadline = deadline_of(request)
        priority = priority_of(request)
        body = await request.body()
        if not self.repository.ready:
            raise NotReady("the server is still loading its models; retry shortly")
        loaded = await self.repository.get(name, version)
        mv = loaded.version
        info.model, info.version = name, str(mv.version)
        shedder = self.shedders.get(name)
        if shedder is None:
            shedder = self.shedders[name] = LoadShedder(f"model:{name}", ShedderConfig())
        try:
            admission = shedder.admit(priority)
        except ResilienceError:
            self.metrics.shed.labels(f"model:{name}", priority.name.lower()).inc()
            raise
        with admission:
            decode_start = time.perf_counter()
            inference = decode_request(body)
            arrays, rows, outputs = check_request(inference, mv.signature)
            exchange = Exchange(
                request_id=info.request_id,
                inputs=arrays,
                rows=rows,
                outputs=outputs,
                model=name,
                version=mv.version,
                deadline=deadline,
                on_service_start=admission.start,
            )
            exchange.timings["decode_ms"] = (time.perf_counter() - decode_start) * 1000
            chain = self.chains.get(ChainSpec("/v2", f"model:{name}", self.guard), loaded)
            try:
                await chain(exchange)
            except ValidationFailed as exc:
                info.fields["validation"] = {"violations": len(exc.violations), "rejected": True}
                raise
        if exchange.results is None:  # pragma: no cover - every pipeline ends in a model call
            raise NotReady(f"model {mv.ref} produced no result")
        info.fields["rows"] = rows
        for stage, ms in exchange.timings.items():
            info.fields[stage] = round(ms, 3)
        parameters = None
        if "validation" in exchange.notes:
            info.fields["validation"] = exchange.notes["validation"]
            parameters = {"stalwart_validation": exchange.notes["validation_response"]}
        return Response(
            encode_response(
                model_name=name,
                model_version=mv.version,
                request_id=inference.id,
                outputs={k: exchange.results[k] for k in outputs},
                signature=mv.signature,
                parameters=parameters,
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
