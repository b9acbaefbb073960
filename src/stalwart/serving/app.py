"""The ASGI application: routes, middleware and the lifespan that loads models.

>>> app = create_app(Settings(home="/tmp/stalwart-doctest"))  # doctest: +SKIP
>>> uvicorn.run(app)                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from stalwart._optional import require
from stalwart.cache import FeatureCache
from stalwart.config import Settings, load_settings
from stalwart.features.caching import bind_caches
from stalwart.features.notify import pg_listeners
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import (
    CONTENT_TYPE_LATEST,
    SAMPLE_SECONDS,
    BatchMetrics,
    ResilienceMetrics,
    RouteMetrics,
    ServingMetrics,
    multiprocess_dir,
    sample,
)
from stalwart.monitoring.sinks import open_store
from stalwart.pipeline import Stage
from stalwart.project import Project, load_project
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.audit import process_actor, record_settings
from stalwart.registry.flavors import Predictor
from stalwart.rollout.controller import Controller, ControllerLoop
from stalwart.rollout.rollouts import RolloutStore
from stalwart.rollout.shadow_runner import ShadowMetrics
from stalwart.serving.alerting import build_alerting, monitor_source
from stalwart.serving.auth import BearerAuth
from stalwart.serving.batching import AdaptiveBatcher, BatchCall
from stalwart.serving.chains import Chains
from stalwart.serving.console import Console, LiveStats, console_routes
from stalwart.serving.console.render import Pages
from stalwart.serving.console.session import Sessions
from stalwart.serving.dataplane import DataPlane, RequestTap
from stalwart.serving.deployments import Deployments
from stalwart.serving.drain import Drain
from stalwart.serving.errors import exception_handlers
from stalwart.serving.feedback import feedback_routes
from stalwart.serving.middleware import BodyLimit, Observe, request_info
from stalwart.serving.monitoring import monitoring_routes
from stalwart.serving.oip import InferFastPath, oip_routes
from stalwart.serving.openapi import openapi_document
from stalwart.serving.policies import ServingPolicy
from stalwart.serving.predictions import prediction_routes
from stalwart.serving.profile_tap import ProfileTap, open_live_profiles
from stalwart.serving.repository import LoadedModel, ModelRepository, Pipeline
from stalwart.serving.resources import resource_routes
from stalwart.serving.responses import json_response
from stalwart.serving.rollouts import rollout_routes
from stalwart.serving.route_sync import RouteSync
from stalwart.serving.runner import DirectRunner, ModelCall, native_threads, one_native_thread
from stalwart.serving.shadows import Shadows
from stalwart.serving.tap import PredictionTap, open_prediction_log
from stalwart.serving.taps import compose
from stalwart.serving.v1 import control_routes, v1_routes
from stalwart.storage import DatabasePool
from stalwart.validation.stage import ValidationMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from stalwart.monitoring.alerts import Calibrator, MetricSource
    from stalwart.serving.grpc.server import GrpcServer
    from stalwart.serving.tracing import Tracing

__all__ = ["SHADOW_MODEL_THREADS", "create_app"]

_log = get_logger("stalwart.serving")

SHADOW_MODEL_THREADS = 2
"""Threads of each shadow chain's own model executor (see ``isolated_pipeline``)."""


def create_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    project: Project | None = None,
    tap: RequestTap | None = None,
    tracer_provider: TracerProvider | None = None,
    alert_source: MetricSource | None = None,
    alert_calibrator: Calibrator | None = None,
    ready_before_serving: bool = False,
) -> Starlette:
    """The Stalwart server as an ASGI app, configured by ``settings`` (the environment's
    ``STALWART_*`` variables when omitted). ``project`` (or ``settings.project``, a file)
    declares the features and deployments served under ``/v1/deployments``. ``tap`` sees
    every inference request's outcome (see :class:`~stalwart.serving.dataplane.RequestTap`).
    ``tracer_provider`` traces every inference request into it (an OpenTelemetry provider,
    its shutdown the caller's); without one, ``settings.otel_endpoint`` turns on export
    over OTLP/HTTP, and with neither nothing is traced (and OpenTelemetry never imported).
    ``alert_source`` is where the project's alert rules read their metrics (and
    ``alert_calibrator`` their calibrated thresholds); without a source, declared alerts are
    not evaluated (logged). ``ready_before_serving``: the lifespan's start waits for the
    models preloaded at start, so the server listens only once it can answer (a worker of
    ``stalwart serve --workers N``: its port's other workers answer meanwhile); otherwise it
    listens at once, ready or not (``/v2/health/ready`` says which)."""
    settings = settings or load_settings()  # a bad STALWART_* value is a ConfigError naming it
    owns_registry = registry is None  # then its connections are this app's to close
    registry = registry or Registry.open(settings)
    if project is None:
        project = load_project(settings.project) if settings.project is not None else Project()
    pool = DatabasePool(settings)
    store = open_store(settings)  # the prediction log's read side (None when it has none)
    metrics = ServingMetrics()
    # The feature cache: in-process always, Redis too when STALWART_REDIS_URL is set.
    cache = FeatureCache.from_settings(settings, registry=metrics.registry)
    caches = bind_caches(project.feature_sets.values(), cache)
    listeners = pg_listeners([project.feature_sets[name] for name in caches], cache, settings)
    # Every entrypoint policy, validated once: a mistake in a deployment fails start-up.
    serving_policy = ServingPolicy.build(settings, project.deployments)
    policy = serving_policy.batching
    batch_metrics = BatchMetrics(metrics.registry) if policy.enabled else None

    def pipeline_for(mv: ModelVersion, predictor: Predictor) -> Pipeline:
        # Each version has an executor of its own (STALWART_MODEL_THREADS, or the model's
        # STALWART_MODEL_LIMITS entry): unloading the version releases its threads, and a
        # version whose calls hang holds only its own.
        limits = settings.limits_for(mv.name)
        threads = limits.threads or settings.model_threads
        omp = limits.omp_threads or settings.model_omp_threads
        prefix = f"stalwart-model-{mv.ref}"
        own = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix, initializer=native_threads, initargs=(omp,))
        if not policy.enabled:
            return _owned(ModelCall(DirectRunner(predictor, mv.ref, own)), None, own, threads, limits.max_calls, prefix, omp, threads)
        batcher = AdaptiveBatcher(
            predictor, mv.signature, mv.ref, own, policy,
            metrics=batch_metrics, model=mv.name, version=str(mv.version),
        )
        # Closed, its queue gauge goes: the gauge reads the batcher, which the metrics must
        # not keep alive (with its model) once the version is unloaded.
        forget = partial(batch_metrics.forget, mv.name, str(mv.version)) if batch_metrics is not None else None
        return _owned(BatchCall(batcher), batcher, own, threads, limits.max_calls, prefix, omp, 1, forget)

    def isolated_pipeline(entry: str, loaded: LoadedModel) -> Pipeline:
        # A shadow's chain: a batcher and a small executor of its own, never the version's
        # shared ones (the primary's), even for the very version the primary serves. A
        # model call that hangs holds a thread for good (Python cannot kill one): here it
        # can only hold this shadow's. No batch metrics: they would mix with the version's.
        mv = loaded.version
        prefix = f"stalwart-shadow-{entry.rpartition('/')[2]}"
        own = ThreadPoolExecutor(max_workers=SHADOW_MODEL_THREADS, thread_name_prefix=prefix, initializer=_shadow_thread)
        if not policy.enabled:
            return _owned(ModelCall(DirectRunner(loaded.predictor, mv.ref, own)), None, own, SHADOW_MODEL_THREADS, None, prefix, 1, SHADOW_MODEL_THREADS)
        batcher = AdaptiveBatcher(loaded.predictor, mv.signature, mv.ref, own, policy)
        return _owned(BatchCall(batcher), batcher, own, SHADOW_MODEL_THREADS, None, prefix, 1, 1)

    validation_metrics = ValidationMetrics(metrics.registry)
    resilience_metrics = ResilienceMetrics(metrics.registry)
    chains = Chains(
        registry, validation_metrics, resilience_metrics, isolated=isolated_pipeline,
        resolve=lambda name, version, deadline: repository.get(name, version, deadline=deadline),
        track=settings.model_memory is not None,
    )

    def routed() -> list[tuple[str, int | None]]:
        # What deployments route to now: unloaded last when the memory budget needs room.
        return [
            (variant.model, variant.version)
            for p in deployments.policies.values()
            for variant in (p.primary, p.canary, p.fallback, *p.shadows)
            if variant is not None
        ]

    repository = ModelRepository(
        registry,
        pipeline_for,
        metrics,
        poll_seconds=settings.registry_poll_seconds,
        preload=settings.preload,
        on_poll=chains.refresh,
        on_loaded=_freeze_garbage if settings.gc_freeze else None,
        on_unloaded=chains.drop,
        memory_budget=settings.model_memory,
        routed=routed,
    )
    if settings.model_memory is not None:
        metrics.model_memory_budget.set(settings.model_memory)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # The configuration it serves with, in the audit log when it changed (no secrets).
        await asyncio.to_thread(record_settings, registry.db, settings)
        await cache.start()
        for listener in listeners:
            await listener.start()
        await repository.start()
        if ready_before_serving:
            await repository.wait_ready()
        await route_sync.start()  # the routes in the database, before the first request
        if controller is not None:
            controller.start()
        if predictions is not None:
            predictions.start()
        if alerting is not None:
            alerting.start()
        if live_profiles is not None:
            live_profiles.start()
        shadows.start()
        if grpc_server is not None:
            await grpc_server.start()
        # A worker of several (monitoring/metrics.py): its function gauges, written for the others' scrapes.
        sampler = asyncio.create_task(_sample_gauges(), name="stalwart-gauge-sampler") if multiprocess_dir() else None
        if settings.gc_freeze:
            _freeze_garbage()
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()  # its RPCs in flight finish first, within the grace
            if sampler is not None:
                sampler.cancel()
            if settings.gc_freeze:
                gc.unfreeze()  # the process may go on (tests, an embedding app): collect as usual
            if alerting is not None:
                await asyncio.to_thread(alerting.stop)  # joins its threads, releases its lock
            if controller is not None:
                await controller.stop()  # releases its lock: another replica takes over at once
            await route_sync.stop()
            # Before the batchers close: queued shadow calls finish (within a bound), then
            # every pair still in memory is written.
            await shadows.close()
            await repository.stop()
            for listener in listeners:
                await listener.stop()
            try:
                # Bounded: a Redis that is down must not hold the server's shutdown.
                await asyncio.wait_for(cache.aclose(), 5)
            except TimeoutError:
                _log.warning("the feature cache did not close within 5 s; going on with the shutdown")
            if tracing is not None:
                await asyncio.to_thread(tracing.close)  # flushes buffered spans: blocking I/O
            # Callers still queued get a clear error; nothing waits on a batch forever. The
            # executors are shut down without waiting: a hung model's thread is not waited for.
            await chains.close()
            await repository.close_pipelines()
            if predictions is not None:
                # After the last answer: spool what is queued, deliver what the sink takes.
                await asyncio.to_thread(predictions.close)
            if live_profiles is not None:
                await asyncio.to_thread(live_profiles.close)  # writes the open minutes
            pool.dispose()
            if store is not None:
                store.close()
            if owns_registry:
                registry.db.dispose()

    async def metrics_endpoint(request: Request) -> Response:
        request_info(request.scope).endpoint = "/metrics"
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    document = openapi_document()

    async def openapi_endpoint(request: Request) -> Response:
        request_info(request.scope).endpoint = "/openapi.json"
        return json_response(document)

    deployments = Deployments(project, serving_policy.deployments, repository, pool, chains, resilience_metrics, caches)
    rollout_store = RolloutStore(registry.db)
    route_sync = RouteSync(
        rollout_store.routes, deployments, repository, poll_seconds=settings.routes_poll_seconds, actor=process_actor(),
        metrics=RouteMetrics(metrics.registry),
    )
    controller = (
        ControllerLoop(Controller(rollout_store, project, lag_seconds=settings.rollout_lag_seconds))
        if settings.rollout_controller and project.deployments
        else None
    )
    # --- request taps: tracing first (it may replace the request's trace ids, which the
    # taps after it record), then the prediction log, live profiles, then the caller's. Each is None when
    # off, and compose() of nothing is None: the data plane then builds no Outcome at all.
    tracing = _tracing(settings, tracer_provider)
    log_policies = {name: p.log for name, p in serving_policy.deployments.items()}
    predictions = open_prediction_log(settings, metrics.registry, log_policies)
    prediction_tap = (
        PredictionTap(predictions, sample=settings.prediction_log_sample, deployments=log_policies)
        if predictions is not None
        else None
    )
    live_profiles = open_live_profiles(settings, registry.db, metrics.registry, log_policies)
    profile_tap = ProfileTap(live_profiles) if live_profiles is not None else None
    # The console's live numbers: a tap of their own, only when the console is served.
    live = LiveStats() if settings.ui else None
    plane_tap = compose(tracing, prediction_tap, profile_tap, live, tap)
    # --- end of request taps ---
    plane = DataPlane(repository, chains, serving_policy, deployments, resilience_metrics, tap=plane_tap)
    # Shadows: copies of sampled requests, off the critical path; their series on /metrics.
    shadows = Shadows(
        plane.serve_shadow, registry.db, ShadowMetrics(metrics.registry),
        policies=lambda: deployments.policies, flush_seconds=settings.shadow_flush_seconds,
    )
    plane.shadows = shadows
    if alert_source is None and project.alerts:
        alert_source, alert_calibrator = monitor_source(registry.db, project.alerts.values(), alert_calibrator)
    alerting = build_alerting(settings, project, registry, metrics.registry, alert_source, alert_calibrator)
    auth = BearerAuth.from_settings(settings)
    drain = Drain()  # begun by the server on SIGTERM (serving/drain.py)
    grpc_server = _grpc_server(settings, plane, metrics, drain)
    routes: list[BaseRoute] = [
        *oip_routes(plane, drain),
        *v1_routes(plane),
        *control_routes(deployments, auth, cache, registry),
        *prediction_routes(store, auth, log=settings.prediction_log),
        *feedback_routes(registry, auth, settings),
        *monitoring_routes(registry.db, frozenset(project.deployments), auth, settings),
        *rollout_routes(rollout_store, registry, project, auth, prediction_log=settings.prediction_log),
        *resource_routes(repository, settings),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    if live is not None:
        console = Console(
            settings, project, registry, plane, rollout_store, store, cache, live,
            Sessions(auth, hours=settings.ui_session_hours, secure=settings.ui_secure_cookie), Pages(),
        )
        routes.extend(console_routes(console))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(Observe, metrics=metrics, access_log=settings.access_log, drain=drain),
            Middleware(BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds),
            Middleware(InferFastPath, plane=plane),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.repository = repository
    app.state.metrics = metrics
    app.state.deployments = deployments
    app.state.route_sync = route_sync
    app.state.rollout_controller = controller
    app.state.plane = plane
    app.state.shadows = shadows
    app.state.predictions = predictions
    app.state.live_profiles = live_profiles
    app.state.tracing = tracing
    app.state.cache = cache
    app.state.alerting = alerting
    app.state.grpc = grpc_server
    app.state.live = live
    app.state.drain = drain
    return app


def _owned(
    stage: Stage,
    batcher: AdaptiveBatcher | None,
    executor: ThreadPoolExecutor,
    threads: int,
    max_calls: int | None,
    prefix: str,
    omp_threads: int,
    concurrency: int,
    forget: Callable[[], None] | None = None,
) -> Pipeline:
    """A pipeline with what it owns: closing it closes the batcher (queued callers get
    NotReady) and shuts the executor down without waiting (its idle threads exit; a hung
    model's thread is not waited for)."""

    async def close() -> None:
        if batcher is not None:
            await batcher.close()
        if forget is not None:
            forget()
        executor.shutdown(wait=False, cancel_futures=True)

    return Pipeline(
        stage, close, threads=threads, omp_threads=omp_threads, max_calls=max_calls, thread_prefix=prefix, concurrency=concurrency,
    )


def _tracing(settings: Settings, provider: TracerProvider | None) -> Tracing | None:
    """The tracing tap when tracing is configured, else None (and nothing imported)."""
    if provider is None and settings.otel_endpoint is None:
        return None
    require("opentelemetry.sdk.trace", extra="otel", purpose="tracing requests (STALWART_OTEL_ENDPOINT)")
    # Imported here: the OpenTelemetry SDK loads only when tracing is on.
    from stalwart.serving.tracing import Tracing, otlp_provider

    if provider is not None:
        return Tracing(provider)
    return Tracing(otlp_provider(settings), owned=True)


def _grpc_server(settings: Settings, plane: DataPlane, metrics: ServingMetrics, drain: Drain) -> GrpcServer | None:
    """The gRPC service when ``STALWART_GRPC_PORT`` is set, else None (and grpc never
    imported). MissingExtraError when the port is set but the grpc extra is not installed."""
    if settings.grpc_port is None:
        return None
    require("grpc", extra="grpc", purpose="the gRPC service (STALWART_GRPC_PORT)")
    require("google.protobuf", extra="grpc", purpose="the gRPC service (STALWART_GRPC_PORT)")
    from stalwart.serving.grpc.server import GrpcServer
    from stalwart.serving.grpc.service import InferenceService

    service = InferenceService(plane, metrics, access_log=settings.access_log, drain=drain)
    return GrpcServer(service, settings, host=settings.host, port=settings.grpc_port)


async def _sample_gauges() -> None:
    """Write this worker's function gauges (queue lengths, requests in flight) to its metrics
    file every :data:`SAMPLE_SECONDS`, so that a scrape reaching another worker sees them."""
    while True:
        sample()
        await asyncio.sleep(SAMPLE_SECONDS)


def _shadow_thread() -> None:
    """A shadow's model thread: one OpenMP thread, as every model thread, and a lower CPU
    priority (nice 10, Linux: per thread), so that when cores are scarce the kernel runs the
    primary's threads first."""
    one_native_thread()
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: run at the usual priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _freeze_garbage() -> None:
    """Move everything alive now (libraries, loaded models: objects that live as long as
    the process) out of the garbage collector's scans. A full collection under load then
    takes milliseconds instead of a tenth of a second over a few hundred thousand objects.
    Called at start and after each model version loads."""
    gc.collect()
    gc.freeze()
