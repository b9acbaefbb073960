"""Deployments over HTTP: entity keys and request values in, predictions out.

``POST /v1/deployments/{name}/predict`` takes
``{"entities": [{"card_id": 17}], "values": [{"amount": 12.5}], "return_features": true}``,
computes the model's features online (the same definitions its training set used), runs
the model through the same pipeline as ``/v2`` (so batching and guards apply), and answers
``{"request_id", "deployment", "model": {"name", "version"}, "predictions", "features"?}``.

A plan (which features, in which layout, checked against the project's definitions) is
built once per model version, never per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.deployment import Deployment
from stalwart.errors import ConfigError, NotReady, RequestError, StalwartError
from stalwart.features.definitions import FeatureRef, RequestField
from stalwart.features.online import OnlineFeatures
from stalwart.features.project import Project
from stalwart.features.readers import SourceReader, make_reader
from stalwart.pipeline import Exchange
from stalwart.registry import ModelVersion, Signature
from stalwart.serving.middleware import request_info
from stalwart.serving.repository import ModelRepository
from stalwart.serving.responses import json_response
from stalwart.storage import DatabasePool

__all__ = ["DeploymentService", "deployment_routes"]


class PredictRequest(msgspec.Struct):
    entities: list[Any]
    values: list[Any] | None = None
    return_features: bool = False
    id: str | None = None


_decoder = msgspec.json.Decoder(PredictRequest)
_RETRY_PLAN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one model version is fed: its features and how they become model inputs."""

    version: ModelVersion
    features: OnlineFeatures
    layout: str  # "matrix" or "columns"
    names: tuple[str, ...]


class DeploymentService:
    """The project's deployments, served by the model repository's pipelines."""

    def __init__(self, project: Project, repository: ModelRepository, pool: DatabasePool) -> None:
        self.project = project
        self.repository = repository
        self.pool = pool
        self._readers: dict[str, SourceReader] = {}
        self._plans: dict[tuple[str, int], _Plan] = {}
        self._failures: dict[tuple[str, int], tuple[float, str]] = {}

    def deployments(self) -> list[Deployment]:
        return list(self.project.deployments.values())

    async def predict(self, name: str, body: bytes, request_id: str) -> dict[str, Any]:
        deployment = self.project.deployment(name)
        request = _decode(body)
        loaded = await self.repository.get(deployment.model_name, deployment.model_version)
        plan = await self._plan(deployment, loaded.version)
        start = time.perf_counter()
        resolved = await plan.features.resolve(request.entities, request.values)
        features_ms = (time.perf_counter() - start) * 1000
        inputs = _model_inputs(plan, resolved.columns, loaded.version.signature)
        exchange = Exchange(
            request_id=request_id,
            inputs=inputs,
            rows=resolved.rows,
            outputs=tuple(loaded.version.signature.output_names),
            model=loaded.version.name,
            version=loaded.version.version,
        )
        exchange.timings["features_ms"] = features_ms
        await loaded.pipeline(exchange)
        results = exchange.results or {}
        body_out: dict[str, Any] = {
            "request_id": request_id,
            "deployment": name,
            "model": {"name": loaded.version.name, "version": loaded.version.version},
            "predictions": _rows_of(results, resolved.rows),
        }
        if request.id is not None:
            body_out["id"] = request.id
        if request.return_features:
            body_out["features"] = _rows_of(resolved.columns, resolved.rows)
        return body_out

    async def describe(self, name: str) -> dict[str, Any]:
        deployment = self.project.deployment(name)
        info: dict[str, Any] = {"name": name, "model": deployment.model, "description": deployment.description}
        try:
            mv = await self.repository.describe(deployment.model_name, deployment.model_version)
            plan = await self._plan(deployment, mv)
        except StalwartError as exc:
            info.update(ready=False, error=exc.message)
            return info
        info.update(
            ready=True,
            serving={"name": mv.name, "version": mv.version},
            features=[_feature_info(ref) for ref in plan.features.refs],
            entity_keys=plan.features.entity_keys,
            request_values={f.name: f.type for f in plan.features.request_fields},
        )
        return info

    async def _plan(self, deployment: Deployment, mv: ModelVersion) -> _Plan:
        key = (deployment.name, mv.version)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < _RETRY_PLAN_SECONDS:
            raise NotReady(failed[1])
        try:
            plan = await asyncio.to_thread(self._build_plan, deployment, mv)
        except ConfigError as exc:
            # The deployment cannot serve this version as configured: that is the server's
            # state, not the client's mistake, so it is a 503 with the reason.
            message = f"deployment '{deployment.name}' cannot serve {mv.ref}: {exc.message}"
            self._failures[key] = (time.monotonic(), message)
            raise NotReady(message) from exc
        self._plans[key] = plan
        self._failures.pop(key, None)
        return plan

    def _build_plan(self, deployment: Deployment, mv: ModelVersion) -> _Plan:
        refs = self.project.features_for(deployment, mv.ref, mv.training)
        readers = {}
        for ref in refs:
            if isinstance(ref, FeatureRef):
                source = ref.feature_set.source
                if source.name not in self._readers:
                    self._readers[source.name] = make_reader(source, self.pool, self.project.root)
                readers[source.name] = self._readers[source.name]
        names = tuple(ref.name for ref in refs)
        signature = mv.signature
        if signature.is_columnar:
            if sorted(signature.input_names) != sorted(names):
                raise ConfigError(
                    f"deployment '{deployment.name}': model {mv.ref} takes inputs {signature.input_names} "
                    f"but its features are {list(names)}"
                )
            layout = "columns"
        else:
            width = signature.inputs[0].shape[1]
            if width not in (-1, len(names)):
                raise ConfigError(
                    f"deployment '{deployment.name}': model {mv.ref} takes {width} columns but "
                    f"has {len(names)} features"
                )
            layout = "matrix"
        return _Plan(mv, OnlineFeatures(refs, readers), layout, names)


def _decode(body: bytes) -> PredictRequest:
    if not body:
        raise RequestError("the request body is empty; send {\"entities\": [...]}", field="body")
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(f"{exc}", field="body") from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"body: not valid JSON ({exc})", field="body") from None


def _model_inputs(plan: _Plan, columns: dict[str, np.ndarray[Any, Any]], signature: Signature) -> dict[str, np.ndarray[Any, Any]]:
    if plan.layout == "matrix":
        spec = signature.inputs[0]
        try:
            matrix = np.column_stack([np.asarray(columns[n], dtype=spec.dtype) for n in plan.names])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"features of {plan.version.ref} do not fit its {spec.datatype} input: {exc}") from exc
        return {spec.name: matrix}
    return {spec.name: np.asarray(columns[spec.name], dtype=spec.dtype) for spec in signature.inputs}


def _rows_of(columns: dict[str, np.ndarray[Any, Any]], n: int) -> list[dict[str, Any]]:
    listed = {name: _jsonable(col) for name, col in columns.items()}
    return [{name: values[i] for name, values in listed.items()} for i in range(n)]


def _jsonable(column: np.ndarray[Any, Any]) -> list[Any]:
    values = column.tolist()
    if column.dtype.kind == "f":
        # JSON has no NaN: a missing feature value travels as null.
        return [None if isinstance(v, float) and v != v else v for v in values]
    return list(values)


def _feature_info(ref: FeatureRef | RequestField) -> dict[str, Any]:
    if isinstance(ref, RequestField):
        return {"name": ref.name, "request": ref.source, "type": ref.type}
    return {"name": ref.name, "set": ref.feature_set.name, "version": ref.feature_set.version}


def deployment_routes(service: DeploymentService) -> list[Route]:
    async def list_deployments(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments"
        return json_response({"deployments": [await service.describe(d.name) for d in service.deployments()]})

    async def get_deployment(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/deployments/{name}"
        return json_response(await service.describe(request.path_params["name"]))

    async def predict(request: Request) -> Response:
        info = request_info(request.scope)
        info.endpoint = "/v1/deployments/{name}/predict"
        name = request.path_params["name"]
        deployment = service.project.deployment(name)
        body = await request.body()
        if not service.repository.ready:
            raise NotReady("the server is still loading its models; retry shortly")
        info.model = deployment.model_name
        result = await service.predict(name, body, info.request_id)
        info.version = str(result["model"]["version"])
        info.fields["deployment"] = name
        info.fields["rows"] = len(result["predictions"])
        return json_response(result)

    return [
        Route("/v1/deployments", list_deployments, methods=["GET"]),
        Route("/v1/deployments/{name}", get_deployment, methods=["GET"]),
        Route("/v1/deployments/{name}/predict", predict, methods=["POST"]),
    ]
