"""Calling a model off the event loop: the last stage of every pipeline.

A model call is CPU-bound numpy, scikit-learn, LightGBM, XGBoost or onnxruntime code, most
of which releases the GIL while it computes, so it runs on worker threads: the event loop
keeps accepting and decoding requests meanwhile. (Code that holds the GIL, such as a plain
Python ``predict``, still runs correctly there; it just cannot overlap with other calls.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from stalwart.errors import ModelError
from stalwart.pipeline import Arrays, Exchange
from stalwart.registry.flavors import Predictor

__all__ = ["DirectRunner", "ModelCall", "Runner", "call_model", "one_native_thread"]


def one_native_thread() -> None:
    """Limit OpenMP to one thread in the calling thread: the model executor's initializer.

    The server runs model calls side by side on its worker threads (and batches rows), so,
    as the ONNX and tree flavors do with their own settings, each call gets one core.
    scikit-learn's OpenMP estimators (HistGradientBoosting, for one) would otherwise start a
    team of threads per worker, and on a small machine those spin-waiting teams starve one
    another: single-row calls of the fraud example's model took p99 366 ms, with 1 s
    timeouts, on 2 cores; p99 9 ms with this. The limit holds for the OpenMP runtimes loaded
    when the worker starts (models load before their first call, so theirs are).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # no scikit-learn, hence no OpenMP estimator to limit
        return
    threadpool_limits(1, user_api="openmp")


class Runner(Protocol):
    """Runs the model on one request's rows and returns that request's outputs, calling
    ``on_start`` when the model call really begins (load shedding measures the queue wait
    up to that moment)."""

    async def run(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Arrays: ...


def call_model(predictor: Predictor, ref: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
    """Call the predictor, turning whatever it raises into a :class:`ModelError`."""
    try:
        return predictor.predict(inputs, outputs)
    except Exception as exc:  # a user's model can raise anything; the client gets a clear error
        raise ModelError(f"model {ref} raised {type(exc).__name__}: {exc}") from exc


class DirectRunner:
    """One model call per request, on a worker thread."""

    def __init__(self, predictor: Predictor, ref: str, executor: Executor) -> None:
        self._predictor = predictor
        self._ref = ref
        self._executor = executor

    async def run(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Arrays:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _started_call, on_start, self._predictor, self._ref, inputs, outputs
        )


def _started_call(
    on_start: Callable[[], None] | None, predictor: Predictor, ref: str, inputs: Arrays, outputs: Sequence[str]
) -> Arrays:
    # Service begins when a worker picks the call up: time in the executor's queue before
    # that is queueing, which the shedder's queue-wait signal must see.
    if on_start is not None:
        on_start()
    return call_model(predictor, ref, inputs, outputs)


class ModelCall:
    """The terminal stage: runs the model and stores its outputs on the exchange."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def __call__(self, exchange: Exchange) -> None:
        start = time.perf_counter()
        exchange.results = await self._runner.run(exchange.inputs, exchange.rows, exchange.outputs, exchange.on_service_start)
        exchange.timings.model_ms = (time.perf_counter() - start) * 1000
