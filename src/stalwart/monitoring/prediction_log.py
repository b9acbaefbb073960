"""The prediction log: every request's record, taken off the event loop, spooled, delivered.

The request path only appends to a bounded in-memory queue (a deque append: no encoding,
no I/O). One writer thread does the rest, in batches:

1. turns queued items into :class:`PredictionRecord` s (the ``convert`` function given: the
   serving layer's, which knows requests), links them into this writer's hash chain;
2. appends them to the local :class:`~stalwart.monitoring.spool.Spool` (a write-ahead log);
3. delivers the spool to the sink in order and moves the spool's cursor past what the sink
   has stored. A failing sink is retried with backoff while records keep spooling; nothing
   is lost and, sinks being idempotent by request id, nothing is stored twice.

Durability modes:

- ``async`` (the default): a record reaches the spool (the file, in the OS's page cache)
  within ``flush_ms`` (50 ms) of its answer: a killed process loses at most what was
  queued in that window, a crashed machine also what the OS had not yet written back.
- ``sync``: :meth:`PredictionLog.submit` returns a future that the request awaits before
  it is answered; it resolves when the record is fsynced to the spool. Concurrent requests
  share one fsync (group commit): the writer takes whatever is queued, writes it, syncs
  once, and resolves them all. If the record cannot be made durable the request fails.

A spool that cannot be written (a full disk) loses nothing by itself in ``async`` mode: the
records already linked into the chain wait in memory and are written first once space
returns, while newer ones wait in the queue (so the chain has no gap). In ``sync`` mode the
requests waiting for them fail (503) and their records are unlinked and dropped, counted.

When the queue is full, new records are dropped and counted
(``stalwart_prediction_log_dropped_total{reason="queue_full"}`` and a log line), never
silently. At start the writer also delivers the spools of processes that died with records
still undelivered (their spool directories are unlocked).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Literal, TypeVar

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from stalwart.errors import PredictionLogError, SinkUnavailable
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import gauge_function
from stalwart.monitoring.records import Chain, PredictionRecord, decode_record
from stalwart.monitoring.sinks import PredictionSink, PredictionStore
from stalwart.monitoring.spool import Position, Spool

__all__ = ["LogMetrics", "PredictionLog"]

T = TypeVar("T")
_log = get_logger("stalwart.predictions")
_BATCH = 2_000  # records per sink write
_BACKOFF = (0.5, 1.0, 2.0, 5.0)
_DROP_LOG_EVERY = 10.0  # seconds between "dropped" log lines
_RETENTION_EVERY = 3600.0
_FLUSH_EVERY = 30.0  # a sink that buffers (Parquet) is asked to make its records durable this often
# Records reach the spool every flush_ms; the sink gets them at most this often (or once a
# batch is waiting): a sink's transaction and the spool's cursor file cost the same for 1
# record as for 2000, so delivering in bigger batches is most of the log's cost saved.
_DELIVER_EVERY = 0.25
# Building records holds the GIL; the event loop, waking for a request meanwhile, would wait
# for the interpreter's switch interval (5 ms). Yielding every few records keeps it prompt.
_YIELD_EVERY = 16


class LogMetrics:
    """The prediction log's own metrics."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.records = Counter(
            "stalwart_prediction_log_records", "Prediction records by what happened to them (spooled, delivered)", ("stage",), registry=registry
        )
        self.dropped = Counter(
            "stalwart_prediction_log_dropped", "Prediction records dropped, by reason (queue_full, spool_error, unencodable)", ("reason",), registry=registry
        )
        self.sink_failures = Counter(
            "stalwart_prediction_log_sink_failures", "Failed deliveries to the prediction sink (retried from the spool)", registry=registry
        )
        # Workers: the sink is up when it is up for every one of them; the rest add up.
        self.sink_up = Gauge(
            "stalwart_prediction_log_sink_up", "1 while the prediction sink accepts records", registry=registry, multiprocess_mode="livemin"
        )
        self.queued = Gauge(
            "stalwart_prediction_log_queued", "Records waiting in memory for the spool", registry=registry, multiprocess_mode="livesum"
        )
        self.undelivered = Gauge(
            "stalwart_prediction_log_undelivered_bytes", "Spooled bytes not yet delivered to the sink", registry=registry,
            multiprocess_mode="livesum",
        )


class _Waiter:
    """A sync-mode request waiting for its record to be on disk."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def settle(self, error: BaseException | None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, error)


class PredictionLog(Generic[T]):
    """A bounded queue, a writer thread, a spool and a sink (see the module docstring).

    >>> log = PredictionLog(sink, home / "spool", convert=to_record)   # doctest: +SKIP
    >>> log.start()                                                    # doctest: +SKIP
    >>> log.submit(item)       # from the event loop: O(1), never blocks  # doctest: +SKIP
    >>> log.close()            # at shutdown: spools and delivers what is left  # doctest: +SKIP
    """

    def __init__(
        self,
        sink: PredictionSink,
        spool_root: Path,
        *,
        convert: Callable[[T], PredictionRecord | None],
        mode: Literal["async", "sync"] = "async",
        flush_ms: float = 50.0,
        max_queue: int = 100_000,
        retention_days: float | None = None,
        registry: CollectorRegistry | None = None,
        chain: str | None = None,
    ) -> None:
        self.sink = sink
        self.mode = mode
        self.chain = Chain(chain or _chain_name())
        self._convert = convert
        self._spool_root = spool_root
        self._flush = flush_ms / 1000
        self._max_queue = max_queue
        self._retention = retention_days
        self._queue: deque[tuple[T, _Waiter | None]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._spool: Spool | None = None
        self._metrics = LogMetrics(registry)
        gauge_function(self._metrics.queued, lambda: len(self._queue))
        self._metrics.sink_up.set(1)
        self._sink_ok = True
        self._retry_at = 0.0
        self._failures = 0
        self._dropped_since_log = 0
        self._last_drop_log = 0.0
        self._next_retention = 0.0
        self._idle = threading.Event()  # set when the queue and the spool are drained (tests)
        # Records handed to the sink but not yet durable there (a buffering sink's open
        # segment): the position after each, oldest first. The spool's cursor moves past
        # them as the sink reports them durable; the next batch is read after the last.
        self._inflight: deque[Position] = deque()
        self._sent: Position | None = None
        self._last_flush = time.monotonic()
        self._last_delivery = 0.0
        self._spooled_since_delivery = 0
        # Records linked into the chain that the spool refused (a full disk): written before
        # any newer record is linked, so the chain never has a gap.
        self._unspooled: list[bytes] = []
        self._last_blocked_log = 0.0

    # --- the request path ----------------------------------------------------------------

    def submit(self, item: T) -> asyncio.Future[None] | None:
        """Queue one request's item. In ``sync`` mode returns a future that resolves when
        its record is on disk (fails with PredictionLogError when it cannot be); in
        ``async`` mode returns None. Never blocks; when the queue is full the item is
        dropped and counted (in ``sync`` mode the future fails)."""
        waiter = None
        if self.mode == "sync":
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop, loop.create_future())
        if len(self._queue) >= self._max_queue:
            self._drop("queue_full", 1)
            if waiter is not None:
                waiter.future.set_exception(PredictionLogError("the prediction log is full; retry shortly"))
                return waiter.future
            return None
        self._queue.append((item, waiter))
        if waiter is not None:
            self._wake.set()  # a waiting request: write now, not at the next flush
            return waiter.future
        return None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._spool = Spool(self._spool_root / _safe(self.chain.name))
        self._thread = threading.Thread(target=self._run, name="stalwart-prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Spool what is queued, try to deliver it (within ``timeout``), stop the writer."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._inflight:
            self._flush_sink()
        if self._spool is not None:
            self._spool.close()
        self.sink.close()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is delivered, a buffering sink asked to
        make it durable at once (for tests and shutdown)."""
        self._last_flush = 0.0  # the next writer turn flushes a buffering sink
        self._last_delivery = 0.0  # ... and delivers what is spooled
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            if self._idle.wait(0.05) and not self._queue:
                return True
        return False

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._adopt_orphans()
        while True:
            self._wake.wait(self._flush)
            self._wake.clear()
            stopping = self._stop
            self._spool_queued()
            if (
                stopping
                or self._spooled_since_delivery >= _BATCH
                or time.monotonic() - self._last_delivery >= _DELIVER_EVERY
            ):
                self._deliver()
            self._maintain()
            if not self._queue and not self._unspooled and (self._spool is None or not self._spool.pending()):
                self._idle.set()
            if stopping and (not self._queue or self._unspooled):
                self._drop("spool_error", len(self._unspooled) + len(self._queue), detail="the spool could not be written before the log closed")
                return
            if self._inflight and time.monotonic() - self._last_flush >= _FLUSH_EVERY:
                self._flush_sink()

    def _spool_queued(self) -> None:
        spool = self._spool
        if spool is None:
            return
        if self._unspooled and not self._append(spool, self._unspooled, sync=False):
            return  # still no room: newer records wait in the queue (bounded, drops counted)
        self._unspooled = []
        while self._queue:
            items: list[tuple[T, _Waiter | None]] = []
            while self._queue and len(items) < _BATCH:
                items.append(self._queue.popleft())
            seq, prev_hash = self.chain.seq, self.chain.prev_hash
            encoded: list[bytes] = []
            for n, (item, _) in enumerate(items, 1):
                if not n % _YIELD_EVERY:
                    time.sleep(0)  # let the event loop have the GIL between small runs of records
                try:
                    record = self._convert(item)
                    if record is not None:
                        encoded.append(self.chain.link_encoded(record))
                except Exception as exc:  # noqa: BLE001 - one record that cannot be built or encoded (a model's output JSON cannot carry) must not stop the log
                    self._drop("unencodable", 1, detail=f"{type(exc).__name__}: {exc}"[:200])
            waiters = [w for _, w in items if w is not None]
            error: BaseException | None = None
            if encoded and not self._append(spool, encoded, sync=bool(waiters)):
                if not waiters:
                    self._unspooled = encoded  # written first once there is room again
                    return
                # Requests waiting for their records fail; records of failed answers must not
                # be stored as answered, so they leave the chain as if never linked.
                self.chain.seq, self.chain.prev_hash = seq, prev_hash
                self._drop("spool_error", len(encoded), detail="the spool cannot be written")
                error = PredictionLogError("the prediction log cannot write its spool (is the disk full?); retry shortly")
            for waiter in waiters:
                waiter.settle(error)
            if error is not None:
                return

    def _append(self, spool: Spool, encoded: list[bytes], *, sync: bool) -> bool:
        """Append to the spool; False (said in the log at most every 10 s) when the disk
        refuses (full, failing): the spool is left as it was before the call."""
        try:
            spool.append(encoded, sync=sync)
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_blocked_log >= _DROP_LOG_EVERY:
                _log.warning("prediction log cannot write its spool (is the disk full?); records wait", error=str(exc), waiting=len(encoded) + len(self._queue))
                self._last_blocked_log = now
            return False
        self._metrics.records.labels("spooled").inc(len(encoded))
        self._spooled_since_delivery += len(encoded)
        return True

    def _deliver(self) -> None:
        spool = self._spool
        if spool is None:
            return
        self._last_delivery = time.monotonic()
        self._spooled_since_delivery = 0
        if not self._sink_ok and time.monotonic() < self._retry_at:
            return
        while True:
            payloads, ends = spool.read_pending(_BATCH, self._sent)
            if not payloads:
                break
            records = [decode_record(p) for p in payloads]
            try:
                self.sink.write(records, payloads)
            except SinkUnavailable as exc:
                # Whatever the sink held is suspect now: resend from the durable cursor
                # (sinks are idempotent, so records it did keep are not stored twice).
                self._sent = None
                self._inflight.clear()
                self._sink_failed(exc)
                return
            self._inflight.extend(ends)
            self._sent = ends[-1]
            self._settle()
            self._sink_recovered()
        if self._inflight and time.monotonic() - self._last_flush >= _FLUSH_EVERY:
            self._flush_sink()

    def _flush_sink(self) -> None:
        flush = getattr(self.sink, "flush", None)
        self._last_flush = time.monotonic()
        if not callable(flush):
            return
        try:
            flush()
        except SinkUnavailable as exc:
            self._sent = None
            self._inflight.clear()
            self._sink_failed(exc)
            return
        self._settle()

    def _settle(self) -> None:
        """Move the spool's cursor past what the sink now holds durably."""
        durable = len(self._inflight) - _pending(self.sink)
        if durable <= 0 or self._spool is None:
            return
        for _ in range(durable - 1):
            self._inflight.popleft()
        self._spool.advance(self._inflight.popleft())
        self._metrics.records.labels("delivered").inc(durable)

    def _sink_failed(self, exc: SinkUnavailable) -> None:
        self._metrics.sink_failures.inc()
        delay = _BACKOFF[min(self._failures, len(_BACKOFF) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        if self._sink_ok:
            _log.warning("prediction sink unavailable; spooling until it returns", sink=self.sink.name, error=exc.message)
        self._sink_ok = False
        self._metrics.sink_up.set(0)

    def _sink_recovered(self) -> None:
        if not self._sink_ok:
            _log.info("prediction sink back; delivering the spool", sink=self.sink.name)
        self._sink_ok = True
        self._failures = 0
        self._metrics.sink_up.set(1)

    def _maintain(self) -> None:
        if self._retention is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + _RETENTION_EVERY
        if not isinstance(self.sink, PredictionStore):
            return
        cutoff = time.time_ns() - int(self._retention * 86_400 * 1e9)
        try:
            removed = self.sink.delete_older(cutoff)
        except SinkUnavailable as exc:
            _log.warning("prediction log retention failed", error=exc.message)
            return
        if removed:
            _log.info("prediction log retention", removed=removed, days=self._retention)

    def _adopt_orphans(self) -> None:
        """Deliver the spools of writers that died with records undelivered. Never fatal:
        a spool that cannot be read now is left for the next writer that starts."""
        if not self._spool_root.exists():
            return
        own = self._spool.directory if self._spool is not None else None
        for directory in sorted(self._spool_root.iterdir()):
            # Hidden names: spools being made or removed by other processes.
            if directory == own or directory.name.startswith(".") or not directory.is_dir():
                continue
            orphan = Spool.adopt(directory)
            if orphan is None:
                continue  # a live writer's (or removed meanwhile)
            try:
                delivered = self._drain(orphan)
            except (OSError, ValueError, msgspec.DecodeError) as exc:
                _log.warning("cannot deliver a dead writer's spool; left for the next start", spool=directory.name, error=str(exc)[:200])
                orphan.close()
                continue
            if delivered is not None:
                _log.info("delivered a dead writer's spool", spool=directory.name, records=delivered)
                orphan.remove()
            else:
                orphan.close()

    def _drain(self, orphan: Spool) -> int | None:
        count = 0
        while orphan.pending():
            payloads, ends = orphan.read_pending(_BATCH)
            if not payloads:
                break
            try:
                self.sink.write([decode_record(p) for p in payloads], payloads)
                flush = getattr(self.sink, "flush", None)
                if callable(flush) and _pending(self.sink):
                    flush()
            except SinkUnavailable as exc:
                self._sink_failed(exc)
                return None
            orphan.advance(ends[-1])
            count += len(payloads)
        return count

    def _drop(self, reason: str, n: int, detail: str = "") -> None:
        if not n:
            return
        self._metrics.dropped.labels(reason).inc(n)
        self._dropped_since_log += n
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY:
            _log.warning("prediction records dropped", reason=reason, records=self._dropped_since_log, detail=detail or None)
            self._dropped_since_log = 0
            self._last_drop_log = now


def _pending(sink: PredictionSink) -> int:
    pending = getattr(sink, "pending", None)
    return int(pending()) if callable(pending) else 0


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _chain_name() -> str:
    """This writer's chain: host, process and a random suffix (a restarted process starts
    a new chain; its predecessor's chain stays intact)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
