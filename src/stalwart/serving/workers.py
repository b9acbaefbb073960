"""``stalwart serve --workers N``: N server processes on one port, under a small supervisor.

Each worker (:mod:`stalwart.serving.worker`) is a whole server: its own event loop,
models, batchers, caches, prediction log and breakers, as one more replica would be. They
share the port by ``SO_REUSEPORT``: each binds its own listening socket and the kernel
spreads new connections across those that listen (a worker listens only once its app has
started). The supervisor, the ``stalwart serve`` process itself, serves nothing:

- before any worker starts, it migrates the database once, makes the generated secrets
  (admin token, prediction-log key) if they are missing, and reserves the port (refused
  if another program listens on it; port 0 becomes one free port, shared by all);
- it starts the workers and waits for each to say it listens; if one dies before the
  first time all of them did, it stops the others and exits non-zero (1: a configuration
  or project error, as ``stalwart serve`` exits; 3: the server could not start);
- a worker that dies later is started again after a backoff (0.5 s, doubling to 30 s while
  it keeps dying before or within :data:`STABLE_SECONDS` of listening), logged with its
  exit status; when a worker has died :data:`MAX_FAILED_STARTS` times in a row before listening and no
  other worker serves, the server stops (exit 3): a crash loop with nothing serving is the
  operator's (or the orchestrator's) call;
- without Redis, a feature-cache invalidation made by one worker (a source write, POST
  /v1/features/.../invalidate) is passed to the others over their links, so no worker
  serves a value another one dropped (with Redis, its channel reaches every worker);
- SIGTERM or SIGINT is passed to every worker, which stops accepting, drains its requests
  and closes (a second one forces them, as for ``stalwart serve``); workers still alive
  after ``STALWART_DRAIN_SECONDS`` plus :data:`DRAIN_SECONDS` are killed. Then it exits 0.

Metrics: the supervisor makes a private directory (0700, removed at exit; ones left by a
supervisor that was killed are removed at the next start) and gives it to every worker
as ``PROMETHEUS_MULTIPROC_DIR``, so a scrape of any worker shows the totals of all
(:mod:`stalwart.monitoring.metrics`); a dead worker's gauges are dropped from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.logs import get_logger
from stalwart.registry import Registry
from stalwart.serving.transport import bind_sockets

__all__ = [
    "DRAIN_SECONDS",
    "INVALIDATION",
    "LINK_MESSAGE_BYTES",
    "MAX_FAILED_STARTS",
    "READY",
    "RESTART_BACKOFF",
    "STABLE_SECONDS",
    "Supervisor",
    "run_workers",
]

_log = get_logger("stalwart.workers")

RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before a dead worker is started again, by how many times in a row it died soon after its start."""
STABLE_SECONDS = 30.0
"""A worker that dies this long or more after it began to listen is restarted after the shortest delay."""
MAX_FAILED_STARTS = 5
"""Deaths in a row before listening after which, if no other worker serves, the server stops."""
DRAIN_SECONDS = 30.0
"""How long workers get to stop after SIGTERM, past their ``STALWART_DRAIN_SECONDS``, before
they are killed (their own limit for requests in flight is 10 s, then their lifespan closes)."""
READY = b"R"
"""A worker to its supervisor: it listens (see :mod:`stalwart.serving.worker`)."""
INVALIDATION = b"I"
"""The tag of a feature-cache invalidation, passed from one worker to the others."""
LINK_MESSAGE_BYTES = 64 * 1024
"""The longest message on a link (a worker sends none longer)."""
_METRICS_PREFIX = "stalwart-metrics-"
_POLL_SECONDS = 0.5


def run_workers(settings: Settings) -> int:
    """Serve with ``settings.workers`` worker processes until SIGTERM or SIGINT; the exit
    status (see the module docstring). Linux only: elsewhere a ConfigError."""
    if not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT does not spread connections (the last socket bound gets
        # them all) and Unix sockets have no SOCK_SEQPACKET for the workers' links.
        raise ConfigError(f"STALWART_WORKERS={settings.workers} needs Linux; run one worker per process here (STALWART_WORKERS=1)")
    sockets = _reserve_port(settings.host, settings.port)
    if sockets is None:
        return 3
    # The gRPC port too (STALWART_GRPC_PORT): every worker serves it with SO_REUSEPORT.
    grpc_sockets = _reserve_port(settings.host, settings.grpc_port) if settings.grpc_port is not None else []
    if grpc_sockets is None:
        for sock in sockets:
            sock.close()
        return 3
    port = sockets[0].getsockname()[1]
    grpc_port = grpc_sockets[0].getsockname()[1] if grpc_sockets else None
    url = f"http://{settings.host}:{port}"
    sockets += grpc_sockets
    try:
        registry = Registry.open(settings)  # migrates once, before N workers would race to
        described = registry.db.describe()
        registry.db.dispose()
        if settings.admin_token is None:
            settings.resolved_admin_token()  # here, to be logged below (N workers making it at once would agree)
        with _metrics_dir() as metrics:
            env = _worker_env(settings, port, metrics, grpc_port)
            supervisor = Supervisor(settings.workers, env, metrics, drain_seconds=settings.drain_seconds)
            _log.info("starting workers", workers=settings.workers, url=url)
            code = supervisor.run(
                on_ready=lambda: _log.info(
                    "serving",
                    url=url,
                    grpc=f"{settings.host}:{grpc_port}" if grpc_port is not None else None,
                    workers=settings.workers,
                    pids=supervisor.pids(),
                    registry=described,
                    admin_token_file=str(settings.admin_token_file()) if settings.admin_token is None else None,
                )
            )
    finally:
        for sock in sockets:
            sock.close()
    return code


@dataclass
class _Slot:
    """One worker's place: its process while it runs, and its history."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    started_at: float = 0.0
    ready: bool = False
    ready_at: float = 0.0
    failed_starts: int = 0  # deaths in a row before it listened
    quick_deaths: int = 0  # deaths in a row before or within STABLE_SECONDS of listening: the backoff's step
    restart_at: float | None = None


class Supervisor:
    """Starts ``workers`` worker processes with ``env``, restarts them, stops them (see the
    module docstring). ``metrics`` is their ``PROMETHEUS_MULTIPROC_DIR``; ``drain_seconds``
    their ``STALWART_DRAIN_SECONDS`` (they keep serving that long after SIGTERM)."""

    def __init__(self, workers: int, env: dict[str, str], metrics: Path, *, drain_seconds: float = 0.0) -> None:
        self.env = env
        self.metrics = metrics
        self.drain_seconds = drain_seconds
        self.slots = [_Slot(i) for i in range(workers)]
        self.stopping = False
        self._selector = selectors.DefaultSelector()
        self._drain_deadline = 0.0
        self._all_ready_once = False

    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [s.process.pid for s in self.slots if s.process is not None]

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Supervise until stopped; the exit status. ``on_ready()`` runs once, when every
        worker first listens."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous_fd = signal.set_wakeup_fd(wake_w)
        received: list[int] = []

        def handle(sig: int, _frame: FrameType | None) -> None:
            received.append(sig)

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        code = 0
        try:
            for slot in self.slots:
                self._start(slot)
            while True:
                while received:
                    self._stop(received.pop(0))
                if self.stopping and not self.pids():
                    return code
                failure = self._step(wake_r)
                if failure is not None and not self.stopping:
                    code = failure
                    self._stop(signal.SIGTERM)
                if not self.stopping and not self._all_ready_once and all(s.ready for s in self.slots):
                    self._all_ready_once = True
                    if on_ready is not None:
                        on_ready()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)

    # --- one turn of the loop ------------------------------------------------------------

    def _step(self, wake_r: int) -> int | None:
        """Wait for a worker's message, a signal or a timer; handle it. An exit status when
        the server must stop."""
        now = time.monotonic()
        timers = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.stopping:
            timers.append(self._drain_deadline)
        timeout = max(0.0, min([_POLL_SECONDS, *(t - now for t in timers)]))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)  # a signal: its handler has run
                continue
            slot: _Slot = key.data
            self._read_link(slot)
        failure: int | None = None
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                failure = self._exited(slot) or failure
        now = time.monotonic()
        if self.stopping:
            if now >= self._drain_deadline and self.pids():
                _log.warning("workers did not stop in time; killing them", seconds=self.drain_seconds + DRAIN_SECONDS, pids=self.pids())
                self._kill_all()
            return failure
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                self._start(slot)
        return failure

    def _read_link(self, slot: _Slot) -> None:
        link = slot.link
        if link is None:
            return
        try:
            data = link.recv(LINK_MESSAGE_BYTES)
        except OSError:
            data = b""
        if data == READY:
            slot.ready = True
            slot.ready_at = time.monotonic()
            slot.failed_starts = 0
        elif data[:1] == INVALIDATION:
            self._pass_on(data, slot)
        elif not data:  # the worker is gone (its exit is read below, once it is reaped)
            self._close_link(slot)
            if slot.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(timeout=1)

    def _pass_on(self, message: bytes, sender: _Slot) -> None:
        """An invalidation, to every other worker that serves (one still starting has
        nothing cached yet)."""
        for slot in self.slots:
            if slot is sender or not slot.ready or slot.link is None:
                continue
            try:
                slot.link.send(message, socket.MSG_DONTWAIT)
            except OSError as exc:
                # Its link is full (the worker does not read it: stuck or dying) or gone.
                _log.warning("an invalidation did not reach a worker", worker=slot.index, error=str(exc))

    # --- starting and ending workers -----------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            slot.process = subprocess.Popen(  # noqa: S603 - this interpreter and our own module, no input of anyone's
                [sys.executable, "-m", "stalwart.serving.worker", str(slot.index), str(theirs.fileno())],
                env=self.env,
                pass_fds=(theirs.fileno(),),
                # Its own process group: a terminal's Ctrl+C reaches the supervisor only,
                # which passes it on once (a second SIGINT would force the worker out).
                process_group=0,
            )
        finally:
            theirs.close()
        slot.link = ours
        slot.started_at = time.monotonic()
        slot.ready = False
        self._selector.register(ours, selectors.EVENT_READ, slot)
        _log.info("worker started", worker=slot.index, pid=slot.process.pid)

    def _exited(self, slot: _Slot) -> int | None:
        """Reap a worker that ended; schedule its restart. An exit status when the server
        must stop instead."""
        process = slot.process
        if process is None:
            return None
        code = process.returncode
        self._close_link(slot)
        slot.process = None
        listened, slot.ready = slot.ready, False
        _mark_dead(self.metrics, process.pid)
        status = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit {code}"
        if self.stopping:
            _log.info("worker stopped", worker=slot.index, pid=process.pid, status=status)
            return None
        lived = time.monotonic() - slot.started_at
        if not listened:
            slot.failed_starts += 1
            serving = any(s.ready for s in self.slots)
            if not self._all_ready_once or (slot.failed_starts >= MAX_FAILED_STARTS and not serving):
                _log.error(
                    "worker could not start; stopping the server",
                    worker=slot.index, pid=process.pid, status=status, attempts=slot.failed_starts,
                )
                return code if code in (1, 2) else 3
        # Time to start is not time served: a slow start (models loading on a busy host)
        # followed by a quick death is a quick death.
        quick = not listened or time.monotonic() - slot.ready_at < STABLE_SECONDS
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        delay = RESTART_BACKOFF[min(max(slot.quick_deaths - 1, 0), len(RESTART_BACKOFF) - 1)]
        slot.restart_at = time.monotonic() + delay
        _log.warning(
            "worker died; restarting it", worker=slot.index, pid=process.pid, status=status,
            lived_seconds=round(lived, 1), restart_in_seconds=delay,
        )
        return None

    def _stop(self, sig: int) -> None:
        """Pass ``sig`` on to every worker (once stopping, a second signal forces them)."""
        if not self.stopping:
            _log.info("stopping workers", signal=signal.Signals(sig).name, pids=self.pids())
            self.stopping = True
            self._drain_deadline = time.monotonic() + self.drain_seconds + DRAIN_SECONDS
        for slot in self.slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    def _kill_all(self) -> None:
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            if process.returncode is not None:
                self._exited(slot)

    def _close_link(self, slot: _Slot) -> None:
        if slot.link is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.link)
            slot.link.close()
            slot.link = None


# --- what the supervisor prepares ----------------------------------------------------------


def _reserve_port(host: str, port: int) -> list[socket.socket] | None:
    """Sockets holding ``port`` for the workers (bound with SO_REUSEPORT, never listening:
    the kernel sends them no connection), or None, logged, when the port is taken."""
    try:
        if port != 0:
            # A plain bind first: it fails if any program listens there, even another
            # server with SO_REUSEPORT, which the workers would otherwise join in silence.
            for probe in bind_sockets(host, port, reuse_port=False):
                probe.close()
        return bind_sockets(host, port, reuse_port=True)
    except OSError as exc:
        _log.error("cannot bind the port", host=host, port=port, error=str(exc))
        return None


def _worker_env(settings: Settings, port: int, metrics: Path, grpc_port: int | None = None) -> dict[str, str]:
    """The workers' environment: this one, with what the command line set and what the
    supervisor resolved as ``STALWART_*`` (the ports, 0 become free ones), and the metrics
    directory."""
    env = dict(os.environ)
    # STALWART_WORKERS stays N: a worker never reads it (it is one server), and the audit
    # log's record of the settings says how the server runs.
    env.update(
        {
            "STALWART_HOST": settings.host,
            "STALWART_PORT": str(port),
            "STALWART_WORKERS": str(settings.workers),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }
    )
    env.pop("prometheus_multiproc_dir", None)
    if grpc_port is not None:
        env["STALWART_GRPC_PORT"] = str(grpc_port)
    if settings.project is not None:
        env["STALWART_PROJECT"] = str(settings.project)
    return env


@contextlib.contextmanager
def _metrics_dir() -> Iterator[Path]:
    """A private directory for the workers' metrics files, locked while this supervisor
    lives and removed at exit; those of supervisors that died first are removed now."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{_METRICS_PREFIX}*"):
        _remove_if_abandoned(stale)
    directory = Path(tempfile.mkdtemp(prefix=_METRICS_PREFIX))  # 0700
    lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


def _remove_if_abandoned(directory: Path) -> None:
    """Remove a metrics directory of this user whose supervisor is gone (its lock is free)."""
    try:
        if not directory.is_dir() or directory.is_symlink() or directory.stat().st_uid != os.getuid():
            return
        lock = os.open(directory / ".lock", os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return  # a live supervisor's
    shutil.rmtree(directory, ignore_errors=True)
    os.close(lock)


def _mark_dead(metrics: Path, pid: int) -> None:
    """Drop a dead worker's gauges from the merged metrics (its counters stay in the totals)."""
    from prometheus_client.multiprocess import mark_process_dead

    with contextlib.suppress(OSError):
        mark_process_dead(pid, str(metrics))  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
