"""The one data plane under every entrypoint.

``/v2`` (the Open Inference Protocol) and ``/v1/deployments`` are thin adapters: they read
the path and headers, call :meth:`DataPlane.infer` or :meth:`DataPlane.predict`, and encode
what comes back. Everything between is here, once, in this order::

    admit (the shedder)
      → plan (the loaded version; for a deployment: route to a variant, its features plan)
        → features (online: cache, then sources; deployments only)
          → decode and check the inputs against the signature
            → the chain: validate → guard → batch → model   (``serving/chains.py``)
              → ladder (deployments: fallback, last good, default)
                → respond (the result; the request's log fields; the tap)

Two extension points are marked in the code and in docs/architecture.md:

- **Routing** (:meth:`DataPlane._route`): which variant of a deployment answers a request
  (the primary, or the canary for its share of routing keys) and which shadows see a copy.
  The deployment's policy (its variants and router) may be swapped at run time
  (``serving/route_sync.py``); a request reads it once, at its start. Once the answer is
  ready, each sampled shadow gets the request through
  :class:`~stalwart.serving.shadows.Shadows` (:meth:`DataPlane.serve_shadow` runs it, off the
  critical path: no shedder, no ladder, no tap).
- **The tap** (:class:`RequestTap`): called once per request, whatever its outcome
  (answered, rejected, degraded, shed, failed), with an :class:`Outcome`, after the answer
  is made. The prediction log and live profiles plug in there. It must not block: it is on
  the event loop, so it hands the outcome to a queue and returns.

Policies (shedding, guards, batching, validation overrides, time limits) come built from
configuration (:class:`~stalwart.serving.policies.ServingPolicy`); nothing here reads a
setting per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
import numpy as np

from stalwart.errors import (
    ConfigError,
    FeatureError,
    ModelError,
    NotReady,
    RequestError,
    ResilienceError,
    StorageError,
)
from stalwart.features.online import check_entity_count
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.pipeline import Arrays, Exchange, ValidationNote
from stalwart.registry import ModelVersion, Signature
from stalwart.resilience import Admission, LoadShedder, Priority
from stalwart.rollout.routing import routing_key
from stalwart.serving.chains import Chains
from stalwart.serving.codec import TensorRequest, check_request, decode_json, decode_request
from stalwart.serving.degradation import Degradation, LastGoodStore, worst
from stalwart.serving.deployments import Deployments, Plan
from stalwart.serving.middleware import RequestInfo
from stalwart.serving.policies import (
    PRIMARY_SHARE_OF_DEADLINE,
    ChainSpec,
    DeploymentPolicy,
    ServingPolicy,
    Variant,
)
from stalwart.serving.repository import ModelRepository
from stalwart.serving.shadows import ShadowCall, Shadows

__all__ = ["DataPlane", "InferCall", "Inferred", "Outcome", "PredictCall", "Prediction", "RequestTap"]

# Failures of the serving machinery, which a deployment's ladder may step around. A
# client's mistake (a bad value, a rejected validation, an unknown entity) is its answer.
LADDER_ERRORS: tuple[type[BaseException], ...] = (ResilienceError, ModelError, FeatureError, NotReady, StorageError)


@dataclass(slots=True)
class InferCall:
    """An Open Inference Protocol request: a model (and version) and its encoded body,
    which ``decode`` turns into tensors (JSON by default; the REST binary form and gRPC
    bring their own), timed as the request's decode stage."""

    model: str
    version: int | None
    payload: bytes
    info: RequestInfo
    deadline: float | None = None
    priority: Priority = Priority.NORMAL
    decode: Callable[[bytes], TensorRequest] = decode_request


@dataclass(slots=True)
class Inferred:
    """The answer to an :class:`InferCall`: the outputs the client asked for, and the
    request as decoded (the adapter reads how it wants them encoded)."""

    version: ModelVersion
    id: str | None  # the client's own request id, echoed
    outputs: Arrays
    validation: ValidationNote | None
    request: TensorRequest | None = None


@dataclass(slots=True)
class PredictCall:
    """A deployment request: entity keys and request-time values, encoded."""

    deployment: str
    payload: bytes
    info: RequestInfo
    deadline: float | None = None
    priority: Priority = Priority.NORMAL
    routing_key: str | None = None  # X-Stalwart-Routing-Key


@dataclass(slots=True)
class Prediction:
    """A deployment's answer, and how it was reached."""

    request_id: str
    deployment: str
    variant: str  # the variant the request was routed to ("primary", "canary"), whoever answered
    model: tuple[str, int] | None  # None: no model answered ever (the declared default)
    predictions: list[dict[str, Any]]
    id: str | None = None
    features: list[dict[str, Any]] | None = None
    validation: ValidationNote | None = None
    degraded: Degradation | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/deployments/{name}/predict``."""
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "deployment": self.deployment,
            "variant": self.variant,
            "model": None if self.model is None else {"name": self.model[0], "version": self.model[1]},
            "predictions": self.predictions,
        }
        if self.id is not None:
            body["id"] = self.id
        if self.features is not None:
            body["features"] = self.features
        if self.validation is not None and self.validation.response is not None:
            body["validation"] = self.validation.response
        if self.degraded is not None:
            body["degraded"] = self.degraded.as_dict()
        return body


@dataclass(slots=True)
class Outcome:
    """What became of one request, for the tap: its identity, the last pass through a
    chain (inputs as the model saw them, outputs, timings, validation), and either the
    answer or the error."""

    entrypoint: str  # "/v2" or "/v1"
    info: RequestInfo
    deployment: str | None = None
    variant: str | None = None  # the variant whose chain the request last went through
    routed: str | None = None  # /v1: the variant it was routed to (a rollout's arm)
    exchange: Exchange | None = None
    inferred: Inferred | None = None
    prediction: Prediction | None = None
    error: BaseException | None = None
    features: Mapping[str, Any] = field(default_factory=dict)  # cache hits, degraded sources, versions, as-of
    request: PredictRequest | None = None  # /v1: the entities and request values
    feature_names: tuple[str, ...] | None = None  # /v1: the columns of a matrix input


class RequestTap(Protocol):
    """Sees every request's :class:`Outcome` once it is answered. Runs on the event loop:
    it must hand the outcome on (to a bounded queue) and return at once. It may return an
    awaitable that the request waits for before it is answered (the prediction log's
    ``sync`` mode: the record on disk first)."""

    def __call__(self, outcome: Outcome) -> Awaitable[None] | None: ...


class PredictRequest(msgspec.Struct):
    entities: list[Any]
    values: list[Any] | None = None
    return_features: bool = False
    id: str | None = None


_predict_decoder = msgspec.json.Decoder(PredictRequest)
_Answer = TypeVar("_Answer", "Inferred", "Prediction")


@dataclass(frozen=True, slots=True)
class _ModelEntry:
    """What ``/v2`` keeps per model: its shedder and the chain spec in front of it."""

    shedder: LoadShedder
    chain: ChainSpec


class DataPlane:
    """Serves every inference request, whatever protocol it came in by."""

    def __init__(
        self,
        repository: ModelRepository,
        chains: Chains,
        policy: ServingPolicy,
        deployments: Deployments,
        metrics: ResilienceMetrics,
        *,
        tap: RequestTap | None = None,
    ) -> None:
        self.repository = repository
        self.chains = chains
        self.policy = policy
        self.deployments = deployments
        self.metrics = metrics
        self.last_good = LastGoodStore()
        self._tap = tap
        # Set by the app once built (it needs serve_shadow); None: shadows are not run.
        self.shadows: Shadows | None = None
        self._models: dict[str, _ModelEntry] = {}
        self._shedders = {name: LoadShedder(name, p.shedding) for name, p in policy.deployments.items()}

    # --- /v2: a model, its tensors -----------------------------------------------------

    async def infer(self, call: InferCall) -> Inferred:
        """Run one Open Inference Protocol request through the model's chain."""
        outcome = Outcome("/v2", call.info) if self._tap is not None else None
        return await self._tapped(outcome, self._infer(call, outcome))

    async def _infer(self, call: InferCall, outcome: Outcome | None) -> Inferred:
        info = call.info
        self._require_ready()
        loaded = await self.repository.get(call.model, call.version, deadline=call.deadline)
        mv = loaded.version
        info.model, info.version = mv.name, str(mv.version)
        entry = self._model_entry(mv.name)
        with self._admit(entry.shedder, f"model:{mv.name}", call.priority) as admission:
            start = time.perf_counter()
            request = call.decode(call.payload)
            # Missing inputs and nulls are the schema's to judge (its policies may impute
            # them); without a schema, the model would get them, so they are refused here.
            arrays, rows, outputs = check_request(request, mv.signature, gaps=self.chains.validates(loaded))
            exchange = Exchange(
                request_id=info.request_id,
                inputs=arrays,
                rows=rows,
                outputs=outputs,
                model=mv.name,
                version=mv.version,
                deadline=call.deadline,
                on_service_start=admission.start,
            )
            exchange.timings.decode_ms = (time.perf_counter() - start) * 1000
            exchange.timings.decode_start = start
            if outcome is not None:
                outcome.exchange = exchange
            try:
                await self.chains.get(entry.chain, loaded)(exchange)
            finally:
                _log_exchange(info, exchange)
        if exchange.results is None:  # pragma: no cover - every chain ends in a model call
            raise NotReady(f"model {mv.ref} produced no result")
        return Inferred(mv, request.id, {k: exchange.results[k] for k in outputs}, exchange.validation, request)

    def _model_entry(self, model: str) -> _ModelEntry:
        # Only names the repository resolved get here, so the dict is bounded by the
        # registry's models, never by what clients send.
        entry = self._models.get(model)
        if entry is None:
            entry = self._models[model] = _ModelEntry(
                LoadShedder(f"model:{model}", self.policy.model_shedding), self.policy.model_chain(model)
            )
        return entry

    # --- /v1: a deployment, its entities ------------------------------------------------

    async def predict(self, call: PredictCall) -> Prediction:
        """Serve one deployment request, stepping down the ladder if the machinery fails."""
        outcome = Outcome("/v1", call.info, deployment=call.deployment) if self._tap is not None else None
        return await self._tapped(outcome, self._predict(call, outcome))

    async def _predict(self, call: PredictCall, outcome: Outcome | None) -> Prediction:
        info = call.info
        policy = self.deployments.policy(call.deployment)  # DeploymentNotFound
        name = policy.deployment.name
        info.fields["deployment"] = name
        self._require_ready()
        info.model = policy.primary.model
        with self._admit(self._shedders[name], name, call.priority, queued=False) as admission:
            request = _decode_predict(call.payload)
            if outcome is not None:
                outcome.request = request
            check_entity_count(request.entities, self.policy.max_entities)
            keys = _entity_keys(request.entities)
            variant, shadows = self._route(policy, request, call)
            if outcome is not None:
                outcome.routed = variant.name
            deadline = call.deadline
            if deadline is not None and policy.fallback is not None:
                now = time.monotonic()
                deadline = now + max(0.0, deadline - now) * PRIMARY_SHARE_OF_DEADLINE
            start = time.perf_counter()
            try:
                prediction = await self._serve(policy, variant, request, info, deadline, admission, outcome)
            except LADDER_ERRORS as exc:
                if shadows:  # the shadows still answer: who failed alone is part of the comparison
                    self._shadow(policy, shadows, request, info, None, time.perf_counter() - start)
                prediction = await self._step_down(policy, variant.name, request, keys, call, exc, admission, outcome)
            else:
                if shadows:
                    self._shadow(policy, shadows, request, info, prediction, time.perf_counter() - start)
                if policy.last_good_seconds is not None and keys is not None and prediction.degraded is None:
                    # Only undegraded answers are "good": one made on default features is not.
                    model = {"name": prediction.model[0], "version": prediction.model[1]} if prediction.model else None
                    self.last_good.remember(name, keys, [{"model": model, "prediction": p} for p in prediction.predictions])
        info.fields["rows"] = len(prediction.predictions)
        if prediction.model is not None:
            info.model, info.version = prediction.model[0], str(prediction.model[1])
        if prediction.degraded is not None:
            step = prediction.degraded
            info.fields["degraded"] = step.level
            info.fields["degraded_reason"] = step.reason
            self.metrics.degraded.labels(name, step.level, step.reason).inc()
        return prediction

    def _route(self, policy: DeploymentPolicy, request: PredictRequest, call: PredictCall) -> tuple[Variant, tuple[str, ...]]:
        """The variant that answers this request: the canary for the share of routing keys
        its weight gives it (a sticky hash: ``rollout/routing.py``), else the primary; and
        the shadows that sample the key. The key is ``X-Stalwart-Routing-Key``, else the
        first entity, else the request id."""
        router = policy.router
        if router is None:
            return policy.primary, ()
        first = request.entities[0] if request.entities else None
        key = routing_key(first if isinstance(first, dict) else None, call.routing_key, call.info.request_id)
        decision = router.route(key)
        canary = policy.canary
        variant = canary if canary is not None and decision.variant == canary.name else policy.primary
        return variant, decision.shadows

    def _shadow(
        self,
        policy: DeploymentPolicy,
        shadows: tuple[str, ...],
        request: PredictRequest,
        info: RequestInfo,
        answer: Prediction | None,
        latency: float,
    ) -> None:
        """Hand the sampled shadows their copies (O(1) each; nothing here is awaited)."""
        if self.shadows is not None:
            arrived = info.arrived_ns or time.time_ns()
            self.shadows.submit(policy, shadows, request, info.request_id, arrived, answer, latency)

    async def serve_shadow(self, call: ShadowCall) -> Prediction:
        """A shadow's answer to its copy of a request: the variant path (plan, features,
        chain with the shadow's own breaker and executor) within the shadow's time limit,
        outside the deployment's shedder and ladder and never shown to the taps."""
        request = call.request
        if request.return_features:  # the copy: nobody reads a shadow's features back
            request = msgspec.structs.replace(request, return_features=False)
        deadline = time.monotonic() + call.time_limit
        return await self._serve(call.policy, call.variant, request, RequestInfo(call.request_id), deadline, None, None)

    async def _serve(
        self,
        policy: DeploymentPolicy,
        variant: Variant,
        request: PredictRequest,
        info: RequestInfo,
        deadline: float | None,
        admission: Admission | None,
        outcome: Outcome | None,
    ) -> Prediction:
        """One variant's answer, due by ``deadline``: its plan, its features, its chain.
        ``admission`` None: outside the shedder (a shadow)."""
        loaded = await self.repository.get(variant.model, variant.version, deadline=deadline)
        plan = await self.deployments.plan(policy.deployment, loaded.version)
        start = time.perf_counter()
        resolved = await plan.features.resolve(
            request.entities, request.values, deadline=deadline, gaps=self.chains.validates(loaded)
        )
        features_ms = (time.perf_counter() - start) * 1000
        if admission is not None:
            admission.queued()  # waiting for the model from here; fetching features is not queueing
        if resolved.degraded:
            info.fields["features_degraded"] = resolved.degraded
        if resolved.cache:
            info.fields["feature_cache"] = resolved.cache
        if outcome is not None:
            outcome.variant = variant.name
            outcome.features = {
                "degraded": resolved.degraded, "cache": resolved.cache, "fetches": resolved.fetches,
                "feature_sets": plan.feature_sets, "as_of_ns": resolved.as_of_ns,
            }
            outcome.feature_names = plan.names if plan.layout == "matrix" else None
        mv = loaded.version
        exchange = Exchange(
            request_id=info.request_id,
            inputs=_model_inputs(plan, resolved.columns, mv.signature),
            rows=resolved.rows,
            outputs=tuple(mv.signature.output_names),
            model=mv.name,
            version=mv.version,
            deadline=deadline,
            on_service_start=admission.start if admission is not None else None,
        )
        exchange.timings.features_ms = features_ms
        exchange.timings.features_start = start
        if outcome is not None:
            outcome.exchange = exchange
        try:
            await self.chains.get(variant.chain, loaded)(exchange)
        finally:
            _log_exchange(info, exchange)
        steps = [
            Degradation(d["level"], d.get("reason", ""), f"source {d.get('source')}, feature set {d.get('feature_set')}, {d.get('entities')} entities")
            for d in resolved.degraded
        ]
        return Prediction(
            request_id=info.request_id,
            deployment=policy.deployment.name,
            variant=variant.name,
            model=(mv.name, mv.version),
            predictions=_rows_of(exchange.results or {}, resolved.rows),
            id=request.id,
            features=_rows_of(resolved.columns, resolved.rows) if request.return_features else None,
            validation=exchange.validation,
            degraded=worst(steps),
        )

    async def _step_down(
        self,
        policy: DeploymentPolicy,
        routed: str,
        request: PredictRequest,
        keys: list[tuple[Any, ...]] | None,
        call: PredictCall,
        failure: BaseException,
        admission: Admission,
        outcome: Outcome | None,
    ) -> Prediction:
        """The rest of the ladder, after the ``routed`` variant failed with ``failure``.
        The answer keeps the routed variant's name (the arm a rollout judges it in: a canary
        that fails over has failed); ``degraded`` and ``model`` say who really answered."""
        name = policy.deployment.name
        reason = type(failure).__name__
        detail = getattr(failure, "message", str(failure))
        if policy.fallback is not None:
            try:
                prediction = await self._serve(policy, policy.fallback, request, call.info, call.deadline, admission, outcome)
            except LADDER_ERRORS as exc:
                detail = f"{detail}; the fallback failed too: {getattr(exc, 'message', exc)}"
            else:
                step = Degradation("fallback_model", reason, detail)
                prediction.degraded = worst([step, *([prediction.degraded] if prediction.degraded else [])])
                prediction.variant = routed
                return prediction
        request_id = call.info.request_id
        if policy.last_good_seconds is not None and keys is not None:
            recalled = self.last_good.recall(name, keys, policy.last_good_seconds)
            if recalled is not None:
                model = recalled[0]["model"]
                return Prediction(
                    request_id, name, routed, (model["name"], model["version"]) if model else None,
                    [r["prediction"] for r in recalled], id=request.id, degraded=Degradation("last_good", reason, detail),
                )
        if policy.default_prediction is not None:
            return Prediction(
                request_id, name, routed, None, [dict(policy.default_prediction) for _ in request.entities],
                id=request.id, degraded=Degradation("default", reason, detail),
            )
        raise failure

    def health(self, name: str) -> dict[str, Any]:
        """Every guard of the deployment and its shedder, as they are now."""
        self.deployments.policy(name)  # DeploymentNotFound
        return self.deployments.health(name, self._shedders[name].snapshot().as_dict())

    # --- shared ---------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.repository.ready:
            raise NotReady("the server is still loading its models; retry shortly")

    def _admit(self, shedder: LoadShedder, label: str, priority: Priority, *, queued: bool = True) -> Admission:
        try:
            return shedder.admit(priority, queued=queued)
        except ResilienceError:
            self.metrics.shed.labels(label, priority.name.lower()).inc()
            raise

    async def _tapped(self, outcome: Outcome | None, work: Awaitable[_Answer]) -> _Answer:
        """Await the request's work, then show the tap its outcome: the answer or the error
        (the one place both entrypoints are tapped)."""
        if outcome is None:
            return await work
        try:
            answer = await work
        except BaseException as exc:
            outcome.error = exc
            await self._tap_failure(outcome, exc)
            raise
        if isinstance(answer, Inferred):
            outcome.inferred = answer
        else:
            outcome.prediction = answer
        await self._tap_outcome(outcome)
        return answer

    async def _tap_outcome(self, outcome: Outcome) -> None:
        if self._tap is not None:
            waiter = self._tap(outcome)
            if waiter is not None:
                await waiter

    async def _tap_failure(self, outcome: Outcome, error: BaseException) -> None:
        """Tap a failed request; its own error is what the client gets, whatever the tap
        says, and a cancelled request (the client left) waits for nothing."""
        if self._tap is None:
            return
        waiter = self._tap(outcome)
        if waiter is None:
            return
        if isinstance(error, asyncio.CancelledError):
            asyncio.ensure_future(waiter).add_done_callback(_quiet)
            return
        with contextlib.suppress(Exception):
            await waiter


def _quiet(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: nothing to report for a request already gone


def _log_exchange(info: RequestInfo, exchange: Exchange) -> None:
    """What a pass through a chain adds to the request's access line."""
    fields = info.fields
    fields["rows"] = exchange.rows
    for stage, ms in exchange.timings.items():
        fields[stage] = round(ms, 3)
    if exchange.validation is not None:
        fields["validation"] = _log_summary(exchange.validation.summary)


def _log_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Validation on the access line: counts and the features involved, never the values
    (a request's values may be personal; the prediction record keeps them, redacted as
    declared) nor per-row lists, whose size the client chooses."""
    line: dict[str, Any] = {"violations": summary.get("violations", 0)}
    if line["violations"]:
        line["rejected"] = summary.get("rejected", 0)
        details = summary.get("details") or ()
        line["features"] = sorted({str(d.get("feature")) for d in details if isinstance(d, dict)})
    return line


def _decode_predict(body: bytes) -> PredictRequest:
    hint = 'send {"entities": [{...}], "values": [{...}]}'
    if not body:
        raise RequestError(f"body: the request body is empty; {hint}", field="body")
    return decode_json(body, _predict_decoder, field="body", hint=hint)


def _entity_keys(entities: list[Any]) -> list[tuple[Any, ...]] | None:
    """Each entity's key values in a hashable form (for the last-good store)."""
    if not all(isinstance(e, Mapping) for e in entities):
        return None
    return [tuple(sorted((str(k), v) for k, v in e.items() if isinstance(v, int | str))) for e in entities]


def _model_inputs(plan: Plan, columns: dict[str, np.ndarray[Any, Any]], signature: Signature) -> Arrays:
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
