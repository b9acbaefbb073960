"""Stalwart's own HTTP API under ``/v1``: deployments (predict, describe, health)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.errors import NotReady, ValidationFailed
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.serving.deployments import DeploymentService
from stalwart.serving.headers import deadline_of, priority_of
from stalwart.serving.middleware import request_info
from stalwart.serving.responses import json_response

__all__ = ["v1_routes"]


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
        if "validation" in prediction.notes:
            info.fields["validation"] = prediction.notes["validation"]
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
