"""Adaptive batching: concurrent requests for one model version share one model call.

A tabular model spends most of a one-row call on per-call overhead (input validation,
dispatch), not arithmetic: scikit-learn scores sixty-four rows in barely more time than
one. The :class:`AdaptiveBatcher` queues the rows of concurrent requests, joins them
along axis 0 into one call, and hands each caller back exactly its own rows, in order.

How a batch forms (one batch computes at a time per model version; the next one forms
in the queue meanwhile):

- ``adaptive`` (the default): when the model is free, the batcher lets the event loop
  turn once more and keeps doing so while requests keep arriving; when a turn brings
  none, the batch goes, unless fewer requests are queued than most of the last batch's
  (those callers are probably on their way back), in which case it waits for them. A
  lone request after a lone request pays one loop turn (microseconds), never
  ``max_wait_ms``; under load the queue fills while the previous batch computes, so
  batches grow by themselves. ``max_wait_ms`` bounds how long the oldest queued request
  is held back for company (once, after load drops suddenly).
- fixed (``adaptive=False``): the first queued request starts a ``max_wait_ms`` timer; the
  batch goes when the timer fires or ``max_batch_size`` rows are queued.

``max_batch_size`` counts rows, not requests. A request bigger than that is split into
parts of at most ``max_batch_size`` rows that queue in order; its answer is their
outputs joined again. Requests asking for different outputs share a batch: the model
computes the union, each caller gets its own selection.

The model runs on a worker thread, not in another process: numpy, scikit-learn,
LightGBM, XGBoost and onnxruntime release the GIL in their compute loops, and a thread
shares the loaded model and the arrays without copying or pickling. Code that holds the
GIL (a plain Python ``predict``, or scikit-learn's own per-call validation) still runs
correctly on the thread; it competes with the event loop for the GIL while it runs,
which is the very cost batching divides by the batch size. A process pool would take
that contention away but pays for pickling every batch both ways and for a copy of the
model per process; it only pays off for a model whose own Python work is heavy
(milliseconds per batch), which the tabular flavors are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stalwart.errors import ModelError, NotReady
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import BatchMetrics, BatchSeries
from stalwart.pipeline import Arrays, Exchange
from stalwart.registry.flavors import Predictor
from stalwart.registry.signature import Signature
from stalwart.serving.runner import Blame, call_model

__all__ = ["AdaptiveBatcher", "BatchCall", "Batched", "BatchingPolicy"]

_log = get_logger("stalwart.batching")

# The share of the last batch's requests a new batch waits for (within max_wait_ms) when
# arrivals pause: most of them come back, a few clients stop or slow down.
_EXPECTED_SHARE = 0.75


class BatchingPolicy(BaseModel):
    """How a model version's requests are batched; validated once, when it is built.

    The defaults were measured on the demo models (see ``python -m benchmarks batching``):
    64 rows cost a scikit-learn model barely more than one, and under load the adaptive
    mode fills batches in well under the 2 ms budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="batch this version's requests")
    max_batch_size: int = Field(
        default=64, ge=1, le=1_000_000, description="rows per model call (a request counts its rows)"
    )
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=10_000, description="longest a queued request waits for company"
    )
    adaptive: bool = Field(
        default=True, description="call as soon as no more requests are arriving"
    )


@dataclass(frozen=True, slots=True)
class Batched:
    """One request's answer from a batched call, with what it cost."""

    outputs: Arrays
    queue_wait: float  # seconds between queueing and the start of its model call
    model_seconds: float  # the batch's model call
    batch_rows: int  # rows in that call


@dataclass(slots=True, eq=False)
class _Item:
    """Rows waiting in the queue (a whole request, or one part of a split one)."""

    inputs: Arrays
    rows: int
    outputs: tuple[str, ...]
    future: asyncio.Future[Batched]
    key: Any
    queued_at: float
    on_start: Callable[[], None] | None = None  # told when its model call begins


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    rows: int
    outputs: tuple[str, ...]
    started: float = 0.0
    # Per item: its outputs, or the error its own rows caused (found by isolating them).
    results: list[Arrays | BaseException] = field(default_factory=list)


class AdaptiveBatcher:
    """Batches one model version's calls; a :class:`~stalwart.serving.runner.Runner`.

    >>> batcher = AdaptiveBatcher(predictor, mv.signature, mv.ref, executor, BatchingPolicy())  # doctest: +SKIP
    >>> outputs = await batcher.run({"input-0": x}, len(x), ("predict",))                          # doctest: +SKIP

    ``inputs`` must already be checked against ``signature`` (every input present, its
    datatype and trailing shape right): a bad request must fail before it is queued, so
    it can never fail its batch mates. Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        predictor: Predictor,
        signature: Signature,
        ref: str,
        executor: Executor,
        policy: BatchingPolicy,
        *,
        metrics: BatchMetrics | None = None,
        model: str = "",
        version: str = "",
    ) -> None:
        self._predictor = predictor
        self._ref = ref
        self._executor = executor
        self._max_rows = policy.max_batch_size
        self._max_wait = policy.max_wait_ms / 1000
        self._adaptive = policy.adaptive
        self._names = signature.input_names
        # Inputs whose trailing dimensions are variable can only be joined with inputs of
        # the same trailing shape; with none (the usual case) every request joins.
        self._variable = [
            spec.name for spec in signature.inputs if any(d == -1 for d in spec.shape[1:])
        ]
        self._blame = Blame(predictor, ref)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._arrivals = 0
        self._expected = 0.0  # requests worth waiting for: a share of the last batch's
        self._signal: asyncio.Future[None] | None = None
        self._signal_rows = 0  # queued rows at which submit() resolves _signal
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._series: BatchSeries | None = (
            metrics.series(model, version, lambda: self._queued_rows) if metrics else None
        )

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def run(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Arrays:
        """The outputs for these rows (the :class:`Runner` protocol)."""
        return (await self.infer(inputs, rows, outputs, on_start)).outputs

    async def infer(
        self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None
    ) -> Batched:
        """The outputs for these rows with the queue wait and batch they went through.

        ``on_start`` is called when the rows' model call begins (load shedding measures the
        queue wait with it)."""
        if rows <= self._max_rows:
            return await self._enqueue(inputs, rows, outputs, on_start).future
        parts = [
            self._enqueue(
                {name: array[start : start + self._max_rows] for name, array in inputs.items()},
                min(self._max_rows, rows - start),
                outputs,
                on_start,
            )
            for start in range(0, rows, self._max_rows)
        ]
        try:
            answers = [await part.future for part in parts]
        except BaseException:
            _abandon(parts)
            raise
        return Batched(
            outputs={
                name: np.concatenate([a.outputs[name] for a in answers]) for name in outputs
            },
            queue_wait=max(a.queue_wait for a in answers),
            model_seconds=sum(a.model_seconds for a in answers),
            batch_rows=max(a.batch_rows for a in answers),
        )

    async def close(self) -> None:
        """Stop batching: queued and in-flight callers get :class:`NotReady`, later ones too."""
        self._closed = True
        self._fail_queued(_shutting_down())
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    # --- queueing ---------------------------------------------------------------------

    def _enqueue(self, inputs: Arrays, rows: int, outputs: tuple[str, ...], on_start: Callable[[], None] | None = None) -> _Item:
        if self._closed:
            raise _shutting_down()
        loop = asyncio.get_running_loop()
        key = tuple(inputs[n].shape[1:] for n in self._variable) if self._variable else None
        item = _Item(inputs, rows, outputs, loop.create_future(), key, time.perf_counter(), on_start)
        self._queue.append(item)
        self._queued_rows += rows
        self._arrivals += 1
        signal = self._signal
        if signal is not None and self._queued_rows >= self._signal_rows and not signal.done():
            signal.set_result(None)
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name=f"stalwart-batcher {self._ref}")
            self._worker.add_done_callback(self._worker_ended)
        return item

    def _worker_ended(self, worker: asyncio.Task[None]) -> None:
        if worker.cancelled():
            return
        # The worker only ends by cancellation; anything else is a bug, and the callers
        # it leaves behind must hear of it rather than wait forever.
        error = worker.exception()
        _log.error("the batch worker stopped", model=self._ref, exc_info=error)
        if self._worker is worker:
            self._worker = None
        self._fail_queued(ModelError(f"the batcher of model {self._ref} failed: {error}"))

    def _fail_queued(self, error: BaseException) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(error)
        self._queued_rows = 0

    # --- the worker -------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                await self._wait_for(loop, 1, None)
            await self._gather(loop)
            batch = self._take()
            if batch is not None:
                await self._execute(loop, batch)

    async def _wait_for(self, loop: asyncio.AbstractEventLoop, rows: int, timeout: float | None) -> None:
        """Until ``rows`` rows are queued or ``timeout`` seconds pass."""
        signal: asyncio.Future[None] = loop.create_future()
        self._signal, self._signal_rows = signal, rows
        timer = None if timeout is None else loop.call_later(timeout, _resolve, signal)
        try:
            await signal
        finally:
            self._signal = None
            if timer is not None:
                timer.cancel()

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the queue while more rows are worth waiting for (the model is free)."""
        if not self._queue:
            return
        deadline = self._queue[0].queued_at + self._max_wait
        if not self._adaptive:
            remaining = deadline - time.perf_counter()
            if self._queued_rows < self._max_rows and remaining > 0:
                await self._wait_for(loop, self._max_rows, remaining)
            return
        # Requests decoded in the same turn of the event loop queue together; one more turn
        # shows whether others are still arriving. When a turn brings none, the batch goes,
        # unless fewer requests are queued than the last batch answered: those callers are
        # likely on their way back (a client that waits for its answer before it sends
        # again), so the batch waits for them, within max_wait_ms. A lone request has a
        # lone request before it, so it goes after one turn.
        while self._queued_rows < self._max_rows:
            before = self._arrivals
            await asyncio.sleep(0)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            if self._arrivals == before:
                if len(self._queue) >= self._expected:
                    return
                await self._wait_for(loop, self._queued_rows + 1, remaining)

    def _take(self) -> _Batch | None:
        """The oldest queued rows that fit in one call and can be joined."""
        queue = self._queue
        while queue and queue[0].future.done():  # its caller went away
            self._queued_rows -= queue.popleft().rows
        if not queue:
            return None
        first = queue.popleft()
        items = [first]
        rows = first.rows
        outputs = list(first.outputs)
        while queue:
            item = queue[0]
            if item.future.done():
                queue.popleft()
                self._queued_rows -= item.rows
                continue
            if rows + item.rows > self._max_rows or item.key != first.key:
                break
            queue.popleft()
            items.append(item)
            rows += item.rows
            for name in item.outputs:
                if name not in outputs:
                    outputs.append(name)
        self._queued_rows -= rows
        self._expected = len(items) * _EXPECTED_SHARE
        return _Batch(items, rows, tuple(outputs))

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        batch.started = time.perf_counter()
        for item in batch.items:
            if item.on_start is not None:
                item.on_start()
        try:
            await loop.run_in_executor(self._executor, self._compute, batch)
        except asyncio.CancelledError:
            _settle(batch.items, _shutting_down())
            raise
        except ModelError as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug here must fail this batch's callers, not strand the queue
            _log.error("batched call failed", model=self._ref, exc_info=exc)
            self._failed(batch, exc)
            return
        elapsed = time.perf_counter() - batch.started
        series = self._series
        failed = False
        for item, outcome in zip(batch.items, batch.results, strict=True):
            if not item.future.done():
                if isinstance(outcome, BaseException):
                    failed = True
                    item.future.set_exception(outcome)
                else:
                    wait = batch.started - item.queued_at
                    item.future.set_result(Batched(outcome, wait, elapsed, batch.rows))
            if series is not None:
                series.queue_wait.observe(batch.started - item.queued_at)
        if failed and series is not None:
            series.failures.inc()
        if series is not None:
            series.rows.observe(batch.rows)
            series.requests.observe(len(batch.items))
            series.model_time.observe(elapsed)

    def _failed(self, batch: _Batch, error: BaseException) -> None:
        if self._series is not None:
            self._series.failures.inc()
        _settle(batch.items, error)

    def _compute(self, batch: _Batch) -> None:
        """On the worker thread: join the rows, call the model, split its outputs.

        When the model raises on a batch of several requests and still scores its probe
        row (see :class:`Blame`), the batch is split in halves and each half tried again,
        down to single requests: those whose own rows make the model raise get a
        :class:`ModelInputError`, every other request its answer. One poisoned request
        never fails its batch mates. When the probe fails too (or there is none yet), the
        model is at fault and the whole batch gets the :class:`ModelError` at once: a
        broken model is not bisected, however slowly it fails.
        """
        try:
            self._solve(batch.items, batch.outputs, batch.results)
        except ModelError as exc:
            items = batch.items
            if not self._blame.model_works():
                batch.results[:] = [exc] * len(items)
            elif len(items) == 1:
                batch.results[:] = [self._blame.input_error(exc)]
            else:
                batch.results.clear()
                self._isolate(items, batch.outputs, batch.results)

    def _solve(self, items: Sequence[_Item], outputs: tuple[str, ...], results: list[Arrays | BaseException]) -> None:
        """One model call for ``items``; their outputs appended to ``results``."""
        rows = sum(it.rows for it in items)
        if len(items) == 1:
            inputs = items[0].inputs
        else:
            inputs = {name: np.concatenate([it.inputs[name] for it in items]) for name in self._names}
        produced = call_model(self._predictor, self._ref, inputs, outputs)
        for name in outputs:
            array = produced.get(name)
            if array is None or array.ndim == 0 or array.shape[0] != rows:
                got = "nothing" if array is None else f"shape {list(array.shape)}"
                raise ModelError(
                    f"model {self._ref} returned {got} for output '{name}' from {rows} "
                    f"rows; a batched model must return one output row per input row "
                    f"(turn batching off for this model if it cannot)"
                )
        self._blame.scored(inputs, outputs)
        start = 0
        for item in items:
            stop = start + item.rows
            results.append({name: produced[name][start:stop] for name in item.outputs})
            start = stop

    def _isolate(self, items: Sequence[_Item], outputs: tuple[str, ...], results: list[Arrays | BaseException]) -> None:
        """``items`` failed together: bisect to find whose rows fail, answer the rest."""
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            try:
                self._solve(part, outputs, results)
            except ModelError as exc:
                if len(part) == 1:
                    results.append(self._blame.input_error(exc))
                else:
                    self._isolate(part, outputs, results)


class BatchCall:
    """The terminal stage with batching: runs the model through an :class:`AdaptiveBatcher`
    and records the queue wait and the batch's model time on the exchange."""

    def __init__(self, batcher: AdaptiveBatcher) -> None:
        self._batcher = batcher

    async def __call__(self, exchange: Exchange) -> None:
        # The request queues within microseconds of this instant (``infer`` enqueues before
        # it first awaits), and its batch starts ``queue_wait`` seconds after it queued.
        start = time.perf_counter()
        done = await self._batcher.infer(exchange.inputs, exchange.rows, exchange.outputs, exchange.on_service_start)
        exchange.results = done.outputs
        timings = exchange.timings
        timings.queue_wait_ms = done.queue_wait * 1000
        timings.model_ms = done.model_seconds * 1000
        timings.queue_wait_start = start
        timings.model_start = start + done.queue_wait
        exchange.batch_rows = done.batch_rows


def _resolve(signal: asyncio.Future[None]) -> None:
    if not signal.done():
        signal.set_result(None)


def _settle(items: Sequence[_Item], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


def _abandon(parts: Sequence[_Item]) -> None:
    """A split request failed or was cancelled: drop its other parts quietly."""
    for part in parts:
        if not part.future.done():
            part.future.cancel()
        elif not part.future.cancelled():
            part.future.exception()  # retrieved, so asyncio does not log it as lost


def _shutting_down() -> NotReady:
    return NotReady("the server is shutting down; retry the request (on another replica)")
