"""Deployments: entity keys and request values in, predictions out, degrading gracefully.

A request to a deployment (``POST /v1/deployments/{name}/predict``) is admitted by the
deployment's load shedder, then served by the first rung of its ladder that can:

1. the **primary** model: features computed online (the same definitions its training set
   used), the chain (validation, guard, the version's batcher);
2. the **fallback** model, the same way, with its own features;
3. each entity's **last good** prediction, no older than the deployment's bound;
4. the declared **default** prediction.

Only failures of the serving machinery step down (an open breaker, a timeout, a model
error, a feature source failing without defaults, a version that cannot be served); a
client's mistake (a bad value, a rejected validation, an unknown entity) is its answer.

A plan (which features, in which layout, checked against the project's definitions) is
built once per model version and deployment, never per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from pydantic import BaseModel, ValidationError

from stalwart.cache import FeatureSetCache
from stalwart.durations import parse_seconds
from stalwart.errors import (
    ConfigError,
    FeatureError,
    ModelError,
    NotReady,
    RequestError,
    ResilienceError,
    StalwartError,
    StorageError,
)
from stalwart.features.online import OnlineFeatures
from stalwart.features.readers import SourceReader, make_reader
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.pipeline import Exchange
from stalwart.project import Deployment, FeatureRef, Project, RequestField, Source, parse_model_ref
from stalwart.registry import ModelVersion, Signature
from stalwart.resilience import Admission, Guard, GuardConfig, LoadShedder, Priority, ShedderConfig
from stalwart.serving.chains import Chains, ChainSpec, make_guard
from stalwart.serving.codec import decode_json
from stalwart.serving.degradation import Degradation, LastGoodStore, worst
from stalwart.serving.repository import ModelRepository
from stalwart.storage import DatabasePool
from stalwart.validation.policy import PolicyOverrides

__all__ = ["DEFAULT_MODEL_GUARD", "DeploymentService", "Prediction"]

# A deployment's model guard unless it declares one: resilience4j's breaker with the ML
# defaults of stalwart.resilience, a one-second time limit, and a bulkhead sized for
# batching (requests waiting for batch mates count as calls in flight).
DEFAULT_MODEL_GUARD = GuardConfig.model_validate({"bulkhead": {"max_concurrent_calls": 256}})

# Each online feature source's guard unless the deployment declares one: a source that
# does not answer in 500 ms is treated as failing (cached values or defaults serve).
DEFAULT_SOURCE_GUARD = GuardConfig.model_validate({"timeout": {"timeout_duration": 0.5}, "bulkhead": {"max_concurrent_calls": 64}})

# Failures of the serving machinery, which the ladder may step around.
LADDER_ERRORS: tuple[type[BaseException], ...] = (ResilienceError, ModelError, FeatureError, NotReady, StorageError)


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


@dataclass(frozen=True, slots=True)
class _Draft:
    """A plan's parts that need I/O (reflecting tables), made off the event loop."""

    version: ModelVersion
    refs: list[FeatureRef | RequestField]
    readers: dict[str, SourceReader]
    layout: str
    names: tuple[str, ...]


@dataclass(slots=True)
class Prediction:
    """A deployment's answer, and how it was reached."""

    body: dict[str, Any]
    degraded: Degradation | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Runtime:
    """A deployment's validated policies and live state."""

    deployment: Deployment
    model_spec: ChainSpec
    fallback_spec: ChainSpec | None
    fallback: tuple[str, int | None] | None
    shedder: LoadShedder
    last_good_seconds: float | None
    default_prediction: dict[str, Any] | None
    source_guard: GuardConfig | None


class DeploymentService:
    """The project's deployments, served by the model repository's pipelines."""

    def __init__(
        self,
        project: Project,
        repository: ModelRepository,
        pool: DatabasePool,
        chains: Chains,
        metrics: ResilienceMetrics,
        caches: Mapping[str, FeatureSetCache] | None = None,
    ) -> None:
        self.project = project
        self.caches = dict(caches or {})
        self.repository = repository
        self.pool = pool
        self.chains = chains
        self.metrics = metrics
        self.last_good = LastGoodStore()
        self._readers: dict[str, SourceReader] = {}
        self._readers_lock = threading.Lock()
        self._plans: dict[tuple[str, str, int], _Plan] = {}
        self._failures: dict[tuple[str, str, int], tuple[float, str]] = {}
        self._runtimes = {name: _runtime(d) for name, d in project.deployments.items()}
        # One guard per deployment and source, shared by every model version it serves.
        self._source_guards: dict[tuple[str, str], Guard] = {}

    def deployments(self) -> list[Deployment]:
        return list(self.project.deployments.values())

    def runtime(self, name: str) -> _Runtime:
        self.project.deployment(name)  # DeploymentNotFound for a name the project lacks
        return self._runtimes[name]

    async def predict(
        self, name: str, body: bytes, request_id: str, *, deadline: float | None = None, priority: Priority = Priority.NORMAL
    ) -> Prediction:
        runtime = self.runtime(name)
        try:
            admission = runtime.shedder.admit(priority, queued=False)
        except ResilienceError:
            self.metrics.shed.labels(name, priority.name.lower()).inc()
            raise
        with admission:
            request = _decode(body)
            keys = _entity_keys(request.entities)
            deployment = runtime.deployment
            try:
                prediction = await self._serve(
                    runtime, runtime.model_spec, deployment.model_name, deployment.model_version,
                    request, request_id, deadline, admission,
                )
            except LADDER_ERRORS as exc:
                return await self._step_down(runtime, request, keys, request_id, deadline, exc, admission)
            if runtime.last_good_seconds is not None and keys is not None and prediction.degraded is None:
                # Only undegraded answers are "good": one made on default features is not.
                model = prediction.body["model"]
                self.last_good.remember(name, keys, [{"model": model, "prediction": p} for p in prediction.body["predictions"]])
            return prediction

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
            ladder={
                "fallback": deployment.fallback,
                "last_good": deployment.last_good,
                "default_prediction": deployment.default_prediction is not None,
            },
        )
        return info

    def health(self, name: str) -> dict[str, Any]:
        """Every guard of the deployment and its shedder, as they are now."""
        runtime = self.runtime(name)
        guards = [g.snapshot().as_dict() for g in self.chains.guards(f"deployment/{name}/")]
        guards += [g.snapshot().as_dict() for (d, _), g in sorted(self._source_guards.items()) if d == name]
        return {
            "name": name,
            "guards": guards,
            "shedding": runtime.shedder.snapshot().as_dict(),
            "status": "degraded" if any(_breaker_open(g) for g in guards) else "ok",
        }

    async def _serve(
        self,
        runtime: _Runtime,
        spec: ChainSpec,
        model: str,
        version: int | None,
        request: PredictRequest,
        request_id: str,
        deadline: float | None,
        admission: Admission,
    ) -> Prediction:
        loaded = await self.repository.get(model, version)
        plan = await self._plan(runtime.deployment, loaded.version)
        start = time.perf_counter()
        resolved = await plan.features.resolve(request.entities, request.values, deadline=deadline)
        features_ms = (time.perf_counter() - start) * 1000
        admission.queued()  # waiting for the model from here; fetching features is not queueing
        signature = loaded.version.signature
        exchange = Exchange(
            request_id=request_id,
            inputs=_model_inputs(plan, resolved.columns, signature),
            rows=resolved.rows,
            outputs=tuple(signature.output_names),
            model=loaded.version.name,
            version=loaded.version.version,
            deadline=deadline,
            on_service_start=admission.start,
        )
        exchange.timings["features_ms"] = features_ms
        chain = self.chains.get(spec, loaded)
        try:
            await chain(exchange)
        finally:
            notes = dict(exchange.notes)
            notes["timings"] = dict(exchange.timings)
        body: dict[str, Any] = {
            "request_id": request_id,
            "deployment": runtime.deployment.name,
            "model": {"name": loaded.version.name, "version": loaded.version.version},
            "predictions": _rows_of(exchange.results or {}, resolved.rows),
        }
        if request.id is not None:
            body["id"] = request.id
        if request.return_features:
            body["features"] = _rows_of(resolved.columns, resolved.rows)
        if "validation_response" in exchange.notes:
            body["validation"] = exchange.notes["validation_response"]
        steps = [
            Degradation(d["level"], d.get("reason", ""), f"source {d.get('source')}, feature set {d.get('feature_set')}, {d.get('entities')} entities")
            for d in resolved.degraded
        ]
        if resolved.degraded:
            notes["features_degraded"] = resolved.degraded
        if resolved.cache:
            notes["feature_cache"] = resolved.cache
        return Prediction(body, worst(steps), notes)

    async def _step_down(
        self,
        runtime: _Runtime,
        request: PredictRequest,
        keys: list[tuple[Any, ...]] | None,
        request_id: str,
        deadline: float | None,
        failure: BaseException,
        admission: Admission,
    ) -> Prediction:
        """The rest of the ladder, after the primary failed with ``failure``."""
        name = runtime.deployment.name
        reason = type(failure).__name__
        detail = getattr(failure, "message", str(failure))
        if runtime.fallback is not None and runtime.fallback_spec is not None:
            try:
                prediction = await self._serve(
                    runtime, runtime.fallback_spec, *runtime.fallback, request, request_id, deadline, admission
                )
            except LADDER_ERRORS as exc:
                detail = f"{detail}; the fallback failed too: {getattr(exc, 'message', exc)}"
            else:
                step = Degradation("fallback_model", reason, detail)
                prediction.degraded = worst([step, *([prediction.degraded] if prediction.degraded else [])])
                return prediction
        base: dict[str, Any] = {"request_id": request_id, "deployment": name}
        if request.id is not None:
            base["id"] = request.id
        if runtime.last_good_seconds is not None and keys is not None:
            recalled = self.last_good.recall(name, keys, runtime.last_good_seconds)
            if recalled is not None:
                body = {**base, "model": recalled[0]["model"], "predictions": [r["prediction"] for r in recalled]}
                return Prediction(body, Degradation("last_good", reason, detail))
        if runtime.default_prediction is not None:
            body = {**base, "model": None, "predictions": [dict(runtime.default_prediction) for _ in request.entities]}
            return Prediction(body, Degradation("default", reason, detail))
        raise failure

    async def _plan(self, deployment: Deployment, mv: ModelVersion) -> _Plan:
        key = (deployment.name, mv.name, mv.version)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < _RETRY_PLAN_SECONDS:
            raise NotReady(failed[1])
        try:
            draft = await asyncio.to_thread(self._draft_plan, deployment, mv)
            plan = self._finish_plan(deployment, draft)
        except ConfigError as exc:
            # The deployment cannot serve this version as configured: that is the server's
            # state, not the client's mistake, so it is a 503 with the reason.
            message = f"deployment '{deployment.name}' cannot serve {mv.ref}: {exc.message}"
            self._failures[key] = (time.monotonic(), message)
            raise NotReady(message) from exc
        self._plans[key] = plan
        self._failures.pop(key, None)
        return plan

    def reader(self, source: Source) -> SourceReader:
        """The one reader of a source, shared by plans and writes (reflects the table on
        first use: call it off the event loop)."""
        with self._readers_lock:
            reader = self._readers.get(source.name)
            if reader is None:
                reader = self._readers[source.name] = make_reader(source, self.pool, self.project.root)
            return reader

    def _finish_plan(self, deployment: Deployment, draft: _Draft) -> _Plan:
        """The plan's live parts, on the event loop: source guards and caches."""
        runtime = self._runtimes[deployment.name]
        guards: dict[str, Guard] = {}
        if runtime.source_guard is not None:
            for source in draft.readers:
                key = (deployment.name, source)
                guard = self._source_guards.get(key)
                if guard is None:
                    guard = make_guard(f"deployment/{deployment.name}/source/{source}", runtime.source_guard, self.metrics)
                    self._source_guards[key] = guard
                guards[source] = guard
        features = OnlineFeatures(draft.refs, draft.readers, guards=guards, caches=self.caches)
        return _Plan(draft.version, features, draft.layout, draft.names)

    def _draft_plan(self, deployment: Deployment, mv: ModelVersion) -> _Draft:
        if mv.name != deployment.model_name and (mv.training or {}).get("features"):
            # A fallback trained on a training set gets its own features; one without
            # training metadata shares the deployment's declared list.
            deployment = _without_features(deployment)
        refs = self.project.features_for(deployment, mv.ref, mv.training)
        readers = {}
        for ref in refs:
            if isinstance(ref, FeatureRef):
                source = ref.feature_set.source
                readers[source.name] = self.reader(source)
        names = tuple(ref.name for ref in refs)
        signature = mv.signature
        if signature.is_columnar:
            if sorted(signature.input_names) != sorted(names):
                raise ConfigError(
                    f"model {mv.ref} takes inputs {signature.input_names} but its features are {list(names)}"
                )
            layout = "columns"
        else:
            width = signature.inputs[0].shape[1]
            if width not in (-1, len(names)):
                raise ConfigError(f"model {mv.ref} takes {width} columns but has {len(names)} features")
            layout = "matrix"
        return _Draft(mv, refs, readers, layout, names)


def _runtime(deployment: Deployment) -> _Runtime:
    """Validate a deployment's policies once, naming the deployment and field of a mistake."""
    where = f"deployment '{deployment.name}'"
    guard = _validated(GuardConfig, deployment.guard, f"{where} guard") if deployment.guard is not None else DEFAULT_MODEL_GUARD
    shedding = _validated(ShedderConfig, deployment.shedding, f"{where} shedding") if deployment.shedding is not None else ShedderConfig()
    validation = PolicyOverrides.parse(deployment.validation, source=f"{where} validation") if deployment.validation else None
    last_good = parse_seconds(deployment.last_good, f"{where} last_good", positive=True) if deployment.last_good is not None else None
    fallback = parse_model_ref(deployment.fallback, f"{where} fallback") if deployment.fallback else None
    source_guard = (
        _validated(GuardConfig, deployment.source_guard, f"{where} source_guard")
        if deployment.source_guard is not None
        else DEFAULT_SOURCE_GUARD
    )
    return _Runtime(
        deployment=deployment,
        model_spec=ChainSpec(f"deployment/{deployment.name}/primary", deployment.name, guard, validation),
        fallback_spec=ChainSpec(f"deployment/{deployment.name}/fallback", deployment.name, guard, validation) if fallback else None,
        fallback=fallback,
        shedder=LoadShedder(deployment.name, shedding),
        last_good_seconds=last_good,
        default_prediction=dict(deployment.default_prediction) if deployment.default_prediction is not None else None,
        source_guard=source_guard,
    )


def _validated(model: type[BaseModel], data: Mapping[str, Any], where: str) -> Any:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def _without_features(deployment: Deployment) -> Deployment:
    """The deployment as its fallback sees it: the fallback model's own training features."""
    return Deployment(deployment.name, deployment.fallback or deployment.model)


def _decode(body: bytes) -> PredictRequest:
    hint = 'send {"entities": [{...}], "values": [{...}]}'
    if not body:
        raise RequestError(f"body: the request body is empty; {hint}", field="body")
    return decode_json(body, _decoder, field="body", hint=hint)


def _entity_keys(entities: list[Any]) -> list[tuple[Any, ...]] | None:
    """Each entity's key values in a hashable form (for the last-good store)."""
    if not all(isinstance(e, Mapping) for e in entities):
        return None
    return [tuple(sorted((str(k), v) for k, v in e.items() if isinstance(v, int | str))) for e in entities]


def _model_inputs(plan: _Plan, columns: dict[str, np.ndarray[Any, Any]], signature: Signature) -> dict[str, np.ndarray[Any, Any]]:
    if plan.layout == "matrix":
        spec = signature.inputs[0]
        try:
            matrix = np.column_stack([np.asarray(columns[n], dtype=spec.dtype) for n in plan.names])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"features of {plan.version.ref} do not fit its {spec.datatype} input: {exc}") from exc
        return {spec.name: matrix}
    return {spec.name: np.asarray(columns[spec.name], dtype=spec.dtype) for spec in signature.inputs}


def _rows_of(columns: Mapping[str, np.ndarray[Any, Any]], n: int) -> list[dict[str, Any]]:
    listed = {name: _jsonable(col) for name, col in columns.items()}
    return [{name: values[i] for name, values in listed.items()} for i in range(n)]


def _jsonable(column: np.ndarray[Any, Any]) -> list[Any]:
    values = column.tolist()
    if column.dtype.kind == "f":
        # JSON has no NaN: a missing feature value travels as null.
        return _nan_to_none(values)
    return list(values)


def _nan_to_none(values: list[Any]) -> list[Any]:
    return [_nan_to_none(v) if isinstance(v, list) else (None if isinstance(v, float) and v != v else v) for v in values]


def _feature_info(ref: FeatureRef | RequestField) -> dict[str, Any]:
    if isinstance(ref, RequestField):
        return {"name": ref.name, "request": ref.source, "type": ref.type}
    return {"name": ref.name, "set": ref.feature_set.name, "version": ref.feature_set.version}


def _breaker_open(guard: Mapping[str, Any]) -> bool:
    breaker = guard.get("breaker") or {}
    return breaker.get("state") in ("open", "forced_open", "half_open")
