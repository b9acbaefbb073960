"""The ASGI application: routes, middleware and the lifespan that loads models.

>>> app = create_app(Settings(home="/tmp/stalwart-doctest"))  # doctest: +SKIP
>>> uvicorn.run(app)                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.config import Settings
from stalwart.monitoring.metrics import CONTENT_TYPE_LATEST, BatchMetrics, ServingMetrics
from stalwart.pipeline import Stage
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.flavors import Predictor
from stalwart.serving.batching import AdaptiveBatcher, BatchCall, BatchingPolicy
from stalwart.serving.errors import exception_handlers
from stalwart.serving.middleware import BodyLimit, Observe, request_info
from stalwart.serving.oip import oip_routes
from stalwart.serving.openapi import openapi_document
from stalwart.serving.repository import ModelRepository
from stalwart.serving.responses import json_response
from stalwart.serving.runner import DirectRunner, ModelCall

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, registry: Registry | None = None) -> Starlette:
    """The Stalwart server as an ASGI app, configured by ``settings`` (the environment's
    ``STALWART_*`` variables when omitted)."""
    settings = settings or Settings()
    registry = registry or Registry.open(settings)
    metrics = ServingMetrics()
    executor = ThreadPoolExecutor(
        max_workers=min(8, (os.cpu_count() or 1) + 2), thread_name_prefix="stalwart-model"
    )

    policy = BatchingPolicy(
        enabled=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_batch_wait_ms,
        adaptive=settings.batch_adaptive,
    )
    batch_metrics = BatchMetrics(metrics.registry) if policy.enabled else None
    batchers: list[AdaptiveBatcher] = []

    def pipeline_for(mv: ModelVersion, predictor: Predictor) -> Stage:
        if not policy.enabled:
            return ModelCall(DirectRunner(predictor, mv.ref, executor))
        batcher = AdaptiveBatcher(
            predictor, mv.signature, mv.ref, executor, policy,
            metrics=batch_metrics, model=mv.name, version=str(mv.version),
        )
        batchers.append(batcher)
        return BatchCall(batcher)

    repository = ModelRepository(
        registry,
        pipeline_for,
        metrics,
        poll_seconds=settings.registry_poll_seconds,
        preload=settings.preload,
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await repository.start()
        if settings.gc_freeze:
            # Everything loaded so far (libraries, models) lives as long as the process. Out
            # of the collector's sight, a full collection under load takes milliseconds
            # instead of a tenth of a second over a few hundred thousand objects.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if settings.gc_freeze:
                gc.unfreeze()  # the process may go on (tests, an embedding app): collect as usual
            await repository.stop()
            # Callers still queued get a clear error; nothing waits on a batch forever.
            await asyncio.gather(*(batcher.close() for batcher in batchers))
            executor.shutdown(wait=False, cancel_futures=True)

    async def metrics_endpoint(request: Request) -> Response:
        request_info(request.scope).endpoint = "/metrics"
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    document = openapi_document()

    async def openapi_endpoint(request: Request) -> Response:
        request_info(request.scope).endpoint = "/openapi.json"
        return json_response(document)

    routes = [
        *oip_routes(repository),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(Observe, metrics=metrics, access_log=settings.access_log),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.repository = repository
    app.state.metrics = metrics
    return app
