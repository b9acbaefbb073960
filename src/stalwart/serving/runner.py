"""Calling a model off the event loop: the last stage of every pipeline.

A model call is CPU-bound numpy, scikit-learn, LightGBM, XGBoost or onnxruntime code, most
of which releases the GIL while it computes, so it runs on worker threads: the event loop
keeps accepting and decoding requests meanwhile. (Code that holds the GIL, such as a plain
Python ``predict``, still runs correctly there; it just cannot overlap with other calls.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from stalwart.errors import ModelError, ModelInputError
from stalwart.pipeline import Arrays, Exchange
from stalwart.registry.flavors import Predictor

__all__ = ["Blame", "DirectRunner", "ModelCall", "Runner", "call_model", "native_threads", "one_native_thread"]


def one_native_thread() -> None:
    """:func:`native_threads` at one OpenMP thread: the default (``STALWART_MODEL_OMP_THREADS``)."""
    native_threads(1)


def native_threads(count: int) -> None:
    """Limit OpenMP to ``count`` threads in the calling thread: the model executor's
    initializer (``STALWART_MODEL_OMP_THREADS``, default 1, or a model's own limit).

    The server runs model calls side by side on its worker threads (and batches rows), so,
    as the ONNX and tree flavors do with their own settings, each call gets one core by default.
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
    threadpool_limits(count, user_api="openmp")


class Runner(Protocol):
    """Runs the model on one request's rows and returns that request's outputs, calling
    ``on_start`` when the model call really begins (load shedding measures the queue wait
    up to that moment)."""

    async def run(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Arrays: ...


def call_model(predictor: Predictor, ref: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
    """Call the predictor, turning whatever it raises into a :class:`ModelError` (the
    exception's text kept as ``detail``, for the log: it never reaches a client)."""
    try:
        return predictor.predict(inputs, outputs)
    except Exception as exc:  # a user's model can raise anything; the client gets a clear error
        kind = type(exc).__name__
        raise ModelError(f"model {ref} raised {kind}", detail=str(exc)[:2000], error_type=kind) from exc


class Blame:
    """Decides whose fault a failed model call is: the request's rows, or the model's.

    It keeps one row the model has scored (a probe). When a call fails, the probe is scored
    again: if the model still answers it, the model works and the failing rows are at fault
    (:class:`ModelInputError`, the client's 422, which breakers ignore); if it fails too, or
    no row has been scored yet, the model is (:class:`ModelError`: the ladder and the
    breaker's business). A model that fails for every request therefore still opens its
    breaker, and one bad client cannot. Only failures pay for the probe.
    """

    def __init__(self, predictor: Predictor, ref: str) -> None:
        self._predictor = predictor
        self._ref = ref
        self._probe: tuple[Arrays, tuple[str, ...]] | None = None
        self._lock = threading.Lock()

    def scored(self, inputs: Arrays, outputs: tuple[str, ...]) -> None:
        """The model answered these rows: keep the first as the probe (once; a loaded
        version's predictor never changes, so a row it scored stays a fair test)."""
        if self._probe is None:
            with self._lock:
                if self._probe is None:
                    self._probe = ({name: array[:1].copy() for name, array in inputs.items()}, outputs)

    def model_works(self) -> bool:
        """Whether the model still scores the probe (False with no probe yet: a model
        that never answered cannot be told apart from a broken one). On a worker thread."""
        probe = self._probe
        if probe is None:
            return False
        try:
            call_model(self._predictor, self._ref, *probe)
        except ModelError:
            return False
        return True

    def verdict(self, error: ModelError) -> ModelError | ModelInputError:
        """The error for a caller whose rows failed alone (on a worker thread)."""
        return self.input_error(error) if self.model_works() else error

    def input_error(self, error: ModelError) -> ModelInputError:
        """``error`` as the client's fault: the model works, these rows do not."""
        return ModelInputError(
            f"model {self._ref} raised {error.error_type or 'an error'} on this request's rows "
            f"while it scores others: send values like those it was trained on "
            f"(GET /v2/models/{self._ref.partition(':')[0]} lists its inputs)",
            detail=error.detail,
        )


class DirectRunner:
    """One model call per request, on a worker thread."""

    def __init__(self, predictor: Predictor, ref: str, executor: Executor) -> None:
        self._predictor = predictor
        self._ref = ref
        self._executor = executor
        self._blame = Blame(predictor, ref)

    async def run(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Arrays:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, on_start, inputs, outputs)

    def _call(self, on_start: Callable[[], None] | None, inputs: Arrays, outputs: tuple[str, ...]) -> Arrays:
        # Service begins when a worker picks the call up: time in the executor's queue before
        # that is queueing, which the shedder's queue-wait signal must see.
        if on_start is not None:
            on_start()
        try:
            produced = call_model(self._predictor, self._ref, inputs, outputs)
        except ModelError as exc:
            raise self._blame.verdict(exc) from exc
        self._blame.scored(inputs, outputs)
        return produced


class ModelCall:
    """The terminal stage: runs the model and stores its outputs on the exchange."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def __call__(self, exchange: Exchange) -> None:
        start = time.perf_counter()
        exchange.results = await self._runner.run(exchange.inputs, exchange.rows, exchange.outputs, exchange.on_service_start)
        exchange.timings.model_ms = (time.perf_counter() - start) * 1000
        exchange.timings.model_start = start
