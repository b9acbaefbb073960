"""Shadow calls off the critical path: a bounded queue, a few workers, a time limit per call.

The request path hands a shadow its copy of the request with :meth:`ShadowRunner.submit`:
an append to a bounded deque and, if a worker is idle, waking it. It never awaits and never
blocks; when the queue is full the item is dropped, counted, and ``False`` returned, so the
primary's response never waits for a shadow. A fixed number of worker tasks take items in
order, ``await call(item)`` under a time limit, and hand the answer (or the exception, or a
``TimeoutError``) with its latency to ``on_result``. Every item that does not yield an
answer is counted in ``stalwart_shadow_dropped_total{shadow, reason}``:

- ``queue_full``: submitted while ``queue_size`` items were waiting;
- ``timeout``: the call had not answered within ``time_limit`` seconds;
- ``error``: the call raised;
- ``stuck``: submitted while more than ``max_abandoned`` timed-out calls still refuse to
  stop (see below): the shadow is not taking work, so queueing more would only grow memory;
- ``closed``: submitted after :meth:`ShadowRunner.close` began, or still queued when it
  gave up.

**Why asyncio tasks, not a thread.** A shadow call is the same asynchronous chain the
primary runs (features through the loop's Redis client, the version's batcher, its guard),
and those objects belong to the server's event loop; a thread would need a second loop and
second clients. Shadow work on the loop is bounded instead: at most ``workers`` calls are
in flight per shadow, whatever the request rate, and the loop only ever does for a shadow
what it does for a request (the model itself runs on a worker thread).

**A call that hangs is abandoned, never awaited forever.** Each call runs in its own task;
the worker awaits it through :func:`asyncio.shield` under
:func:`~stalwart.resilience.deadlines.run_until`, so when the limit passes the worker is
free at once, whether or not the call honours cancellation. The call's task is then
cancelled and, until it actually stops, kept in a set of abandoned calls (bounded by
``max_abandoned``; beyond it submits are dropped as ``stuck``).

**A model call on a worker thread that hangs** cannot be stopped: Python has no way to kill
a thread. Cancelling the awaiting task cancels only the asyncio future of
``run_in_executor``, so the shadow's task ends at once, but the thread keeps running the
model until it returns, and its result is thrown away. That thread is occupied meanwhile.
Shadows must therefore run their models on executors of their own, never the primary's
(the server gives each shadow's chain a batcher and a small executor of its own, even for
the very version the primary serves: ``serving/chains.py``, ``serving/app.py``): a hung
shadow then exhausts only its own threads, its calls queue behind them and time out here
(counted as ``timeout``), and the primary is untouched.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from stalwart.errors import ConfigError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import gauge_function
from stalwart.resilience.deadlines import Expired, run_until

__all__ = ["DROP_REASONS", "ShadowMetrics", "ShadowRunner"]

T = TypeVar("T")
R = TypeVar("R")

DROP_REASONS = ("queue_full", "timeout", "error", "stuck", "closed")

_log = get_logger("stalwart.shadow")
_LOG_EVERY = 10.0  # seconds between log lines about a failing on_result callback
_MAX_WORKERS = 256
_MAX_QUEUE = 1_000_000


class ShadowMetrics:
    """The shadow runners' series, registered once in ``registry`` and shared by every
    :class:`ShadowRunner` of a server (the ``shadow`` label tells them apart; shadow names
    are declared in the project, so the label is bounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "stalwart_shadow_dropped",
            "Shadow calls that yielded no answer, by shadow and reason (queue_full, timeout, error, stuck, closed)",
            ("shadow", "reason"),
            registry=registry,
        )
        self.answered = Counter(
            "stalwart_shadow_answered", "Shadow calls that answered within their time limit", ("shadow",), registry=registry
        )
        self.queued = Gauge(
            "stalwart_shadow_queued", "Shadow calls waiting for a worker", ("shadow",), registry=registry, multiprocess_mode="livesum"
        )
        self.abandoned = Gauge(
            "stalwart_shadow_abandoned",
            "Timed-out shadow calls that have not stopped yet (a call ignoring cancellation)",
            ("shadow",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.write_failures = Counter(
            "stalwart_shadow_pair_write_failures",
            "Failed writes of paired shadow answers to the database (kept in memory and retried)",
            registry=registry,
        )
        self.unwritten = Counter(
            "stalwart_shadow_pairs_unwritten",
            "Paired shadow answers dropped from memory unwritten (the database refused writes for long)",
            registry=registry,
        )


class ShadowRunner(Generic[T, R]):
    """Runs ``call(item)`` for submitted items on ``workers`` asyncio tasks, each call within
    ``time_limit`` seconds, and reports every answer to ``on_result(item, outcome, latency)``
    (``outcome`` is the call's result, the exception it raised, or a ``TimeoutError``;
    ``latency`` the seconds from the call's start to its outcome).

    Create it anywhere, :meth:`start` it on the event loop that will :meth:`submit` to it,
    and ``await`` :meth:`close` when done. ``on_result`` runs on the loop: it must be quick
    (a :class:`~stalwart.rollout.paired.PairedReport` update is).
    """

    def __init__(
        self,
        name: str,
        call: Callable[[T], Awaitable[R]],
        on_result: Callable[[T, R | Exception, float], None],
        *,
        metrics: ShadowMetrics,
        workers: int = 2,
        queue_size: int = 1024,
        time_limit: float = 1.0,
        max_abandoned: int | None = None,
    ) -> None:
        if not 1 <= workers <= _MAX_WORKERS:
            raise ConfigError(f"shadow {name!r}: workers must be between 1 and {_MAX_WORKERS}, not {workers}")
        if not 1 <= queue_size <= _MAX_QUEUE:
            raise ConfigError(f"shadow {name!r}: queue_size must be between 1 and {_MAX_QUEUE}, not {queue_size}")
        if not (math.isfinite(time_limit) and time_limit > 0):
            raise ConfigError(f"shadow {name!r}: time_limit must be a positive number of seconds, not {time_limit}")
        abandoned_cap = 4 * workers if max_abandoned is None else max_abandoned
        if abandoned_cap < 0:
            raise ConfigError(f"shadow {name!r}: max_abandoned must be 0 or more, not {max_abandoned}")
        self.name = name
        self._call = call
        self._on_result = on_result
        self._workers_wanted = workers
        self._queue_size = queue_size
        self._time_limit = time_limit
        self._max_abandoned = abandoned_cap
        self._queue: deque[T] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()  # one per worker waiting for an item
        self._workers: list[asyncio.Task[None]] = []
        self._abandoned: set[asyncio.Task[R]] = set()
        self._accepting = False
        self._closing = False
        self._last_log = -math.inf
        # Children bound once: submit() pays an attribute read and an add, not a label lookup.
        dropped = metrics.dropped
        self._drop_full = dropped.labels(name, "queue_full")
        self._drop_timeout = dropped.labels(name, "timeout")
        self._drop_error = dropped.labels(name, "error")
        self._drop_stuck = dropped.labels(name, "stuck")
        self._drop_closed = dropped.labels(name, "closed")
        self._answered = metrics.answered.labels(name)
        # Read at scrape time, so the request path never updates a gauge.
        gauge_function(metrics.queued.labels(name), lambda: len(self._queue))
        gauge_function(metrics.abandoned.labels(name), lambda: len(self._abandoned))

    @property
    def queued(self) -> int:
        """Items waiting for a worker."""
        return len(self._queue)

    @property
    def abandoned(self) -> int:
        """Timed-out calls that have not stopped yet."""
        return len(self._abandoned)

    def start(self) -> None:
        """Start the workers on the running event loop; submits are accepted from now on."""
        if self._workers or self._closing:
            raise RuntimeError(f"shadow {self.name!r} was already started")
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(loop), name=f"shadow {self.name} worker {i}") for i in range(self._workers_wanted)
        ]
        self._accepting = True

    def submit(self, item: T) -> bool:
        """Queue ``item`` for the shadow; ``False`` (and a counted drop) if it cannot be taken.

        O(1), never blocks, never awaits; call it on the runner's event loop.
        """
        if not self._accepting:
            self._drop_closed.inc()
            return False
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._drop_full.inc()
            return False
        if len(self._abandoned) > self._max_abandoned:
            self._drop_stuck.inc()
            return False
        queue.append(item)
        idle = self._idle
        while idle:  # a waiter is done only if its worker was cancelled: then try the next
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        return True

    async def close(self, timeout: float = 5.0) -> int:
        """Stop taking items, let the workers finish the queue for up to ``timeout`` seconds,
        then cancel what is still running. Returns within ``timeout`` (plus one loop
        iteration); the result is the number of queued items never run (counted as
        ``closed``)."""
        self._accepting = False
        self._closing = True
        for waiter in self._idle:
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()
        workers = [w for w in self._workers if not w.done()]
        if workers and timeout > 0:
            await asyncio.wait(workers, timeout=timeout)
        left = len(self._queue)
        self._queue.clear()
        if left:
            self._drop_closed.inc(left)
        for task in (*self._workers, *self._abandoned):
            task.cancel()
        await asyncio.sleep(0)  # one iteration: the cancellations are delivered
        return left

    # --- internals -------------------------------------------------------------------

    async def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            await self._run(queue.popleft(), loop)

    async def _run(self, item: T, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._invoke(item))
        start = time.monotonic()
        outcome: R | Exception
        try:
            # shield: the worker leaves at the deadline even if the call ignores cancellation.
            outcome = await run_until(asyncio.shield(task), start + self._time_limit)
        except Expired:
            self._abandon(task)
            self._drop_timeout.inc()
            outcome = TimeoutError(f"shadow {self.name!r} did not answer within {self._time_limit} s")
        except asyncio.CancelledError:
            task.cancel()  # the worker itself is being cancelled (close): take the call with it
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the shadow raised is its outcome; it never leaves here
            self._drop_error.inc()
            outcome = exc
        else:
            self._answered.inc()
        latency = time.monotonic() - start
        try:
            self._on_result(item, outcome, latency)
        except Exception:  # noqa: BLE001 - a faulty callback must not stop the worker; logged, rate-limited
            now = time.monotonic()
            if now - self._last_log >= _LOG_EVERY:
                self._last_log = now
                _log.exception("shadow on_result failed", shadow=self.name)
        finally:
            # An exception's traceback holds this frame, which holds the exception: without
            # this, every failed call would be a cycle left for the garbage collector.
            del outcome

    async def _invoke(self, item: T) -> R:
        # Inside the task, so a call that raises before returning an awaitable is its outcome too.
        return await self._call(item)

    def _abandon(self, task: asyncio.Task[R]) -> None:
        task.cancel()
        if task.done():
            return
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[R]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as never retrieved
