"""How ``stalwart serve`` runs granian (``STALWART_SERVER=granian``, the ``granian`` extra).

granian is an HTTP server written in Rust (hyper on tokio): it parses HTTP/1.1 on a thread
of its own and hands each request to the ASGI app on this process's event loop. It runs
here embedded, one worker in this process, the app object passed in (no import string, no
child process), so whoever runs :class:`GranianServer` (through
:func:`~stalwart.serving.server.run_server`) owns the process, its signals and its workers.

The settings, as granian takes them:

- ``STALWART_HEADER_TIMEOUT_SECONDS`` and ``STALWART_KEEP_ALIVE_SECONDS``: hyper has one
  timer, ``header_read_timeout``, started whenever a connection waits for a request's head:
  from the connection's start, and again after each response. It closes (without an
  answer) a connection whose next request's headers are not complete by then, so it bounds
  both a slowloris and an idle keep-alive connection; it is set to the smaller of the two.
- ``STALWART_BODY_TIMEOUT_SECONDS``: granian has no body deadline. The app's
  :class:`~stalwart.serving.middleware.BodyLimit` answers 408 (``connection: close``) when
  a body it reads is late; a body the app never reads is dropped with the connection once
  the response is sent (hyper does not wait for it).
- ``STALWART_MAX_CONNECTIONS``: granian's ``backpressure``, connections this worker serves
  at once. Beyond it new connections are not accepted: they wait in the kernel's listen
  backlog (``backlog``, 2048 as uvicorn's) until one closes, instead of getting uvicorn's
  503. Either way no descriptor is spent on them.
- Graceful shutdown (SIGTERM or SIGINT): no new connections; idle ones are closed and busy
  ones after their response; requests still running after
  ``STALWART_GRACEFUL_SHUTDOWN_SECONDS`` are cancelled (as uvicorn's
  ``timeout_graceful_shutdown`` does); then the app's lifespan shutdown, and the signal is
  raised again once done (as uvicorn does, so a supervisor sees it). A second signal
  cancels the requests at once. Given the app's drain, the first SIGTERM begins it and the
  shutdown waits ``STALWART_DRAIN_SECONDS`` (:mod:`stalwart.serving.drain`).
- HTTP/1.1 only (no h2c), as uvicorn; no websockets (the app has none); headers up to
  granian's buffer (about 400 KiB), beyond which hyper answers 431.

>>> GranianServer(app, settings).run()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import threading
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.config import Settings
from stalwart.monitoring.logs import get_logger
from stalwart.serving.drain import Drain

__all__ = ["GranianServer"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG = 2048  # uvicorn's default, so both servers queue as many unaccepted connections
_log = get_logger("stalwart.serving")


class GranianServer:
    """One embedded granian worker serving ``app`` on this thread's own event loop (uvloop
    when installed, as uvicorn picks). :meth:`run` blocks until :meth:`stop` (any thread)
    or, on the main thread, SIGTERM/SIGINT; ``started`` tells whether the app's lifespan
    startup completed. ``host`` and ``port`` override the settings'; ``drain`` is the
    app's, begun by a signal (a first SIGTERM then waits ``settings.drain_seconds``)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.settings = settings
        self.drain = drain
        self._drain_timer: asyncio.TimerHandle | None = None
        self.host = settings.host if host is None else host
        self.port = settings.port if port is None else port
        self.started = False
        self._app = _Tracked(app, self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._stopping = False
        self._stop_requested = threading.Event()
        self._signals: list[int] = []

    def run(self) -> None:
        """Serve until stopped; returns once in-flight requests and the lifespan are done.
        Stopped by a signal, it raises that signal again on the way out (with the handler
        there was before), as uvicorn does."""
        main_thread = threading.current_thread() is threading.main_thread()
        before: dict[int, Any] = {}
        if main_thread:
            before = {signum: signal.signal(signum, self._on_signal) for signum in _SIGNALS}
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main())
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)
        for signum in reversed(self._signals):
            signal.raise_signal(signum)

    def stop(self) -> None:
        """Begin a graceful shutdown (thread-safe); a second call cancels what still runs."""
        self._stop_requested.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: nothing to stop
                loop.call_soon_threadsafe(self._begin_stop)

    async def _main(self) -> None:
        from granian.constants import HTTPModes, Interfaces
        from granian.errors import ConfigurationError, FatalError
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
        from granian.server.embed import Server

        self._loop = asyncio.get_running_loop()
        settings = self.settings
        # hyper's one timer for "the next request's head": see the module's docstring.
        head_seconds = min(settings.header_timeout_seconds, settings.keep_alive_seconds)
        self._server = Server(
            self._app,
            address=self.host,
            port=self.port,
            interface=Interfaces.ASGI,
            http=HTTPModes.http1,
            websockets=False,
            backlog=BACKLOG,
            backpressure=settings.max_connections,
            http1_settings=HTTP1Settings(header_read_timeout=max(1, round(head_seconds * 1000)), keep_alive=True),
            log_level=LogLevels.warning,
            log_dictconfig=copy.deepcopy(_LOGGING),  # granian writes into the one it is given
            log_access=False,
        )
        if self._stop_requested.is_set():
            return
        try:
            await self._server.serve()
        except (FatalError, ConfigurationError, OSError) as exc:
            # The lifespan failed (its own error is logged by the app).
            _log.error("granian could not serve", host=self.host, port=self.port, error=_first_line(exc))
        except RuntimeError as exc:
            if self.started:
                raise
            # A socket that cannot be bound (the port taken): granian's RuntimeError, with a
            # Rust backtrace after its first line when RUST_BACKTRACE is set.
            _log.error("granian could not listen", host=self.host, port=self.port, error=_first_line(exc))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)
        drain = self.drain
        if drain is not None:
            first = not drain.draining
            drain.begin()
            loop = self._loop
            if first and signum == signal.SIGTERM and self.settings.drain_seconds > 0 and loop is not None:
                # A signal handler may interrupt the loop anywhere: schedule through the
                # thread-safe door, as stop() does.
                with contextlib.suppress(RuntimeError):  # the loop closed in between: nothing to drain
                    loop.call_soon_threadsafe(self._stop_after_drain)
                    return
        self.stop()

    def _stop_after_drain(self) -> None:
        if self._loop is not None and not self._stopping:
            self._drain_timer = self._loop.call_later(self.settings.drain_seconds, self.stop)

    def _begin_stop(self) -> None:
        if self._drain_timer is not None:  # stopped before the drain was over
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._server is None or self._loop is None:
            return
        if self._stopping:
            self._app.cancel_requests()
            return
        self._stopping = True
        self._server.stop()
        self._loop.call_later(self.settings.graceful_shutdown_seconds, self._app.cancel_requests)


class _Tracked:
    """The app, with the requests in flight known (to cancel them when a graceful shutdown
    runs out of time) and the lifespan's startup noticed (``started``)."""

    def __init__(self, app: ASGIApp, server: GranianServer) -> None:
        self.app = app
        self.server = server
        self.requests: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        task = asyncio.current_task()
        if task is None:
            await self.app(scope, receive, send)
            return
        self.requests.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests.discard(task)

    def _lifespan_send(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.server.started = True
            await send(message)

        return watched

    def cancel_requests(self) -> None:
        if self.requests:
            _log.warning("cancelling requests still running at shutdown", requests=len(self.requests))
        for task in list(self.requests):
            task.cancel()


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class _QuietExperimental(logging.Filter):
    """granian calls its embedded mode experimental at every start; we chose it knowingly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "experimental" not in record.getMessage()


# granian's own log lines (warnings and worse) go where uvicorn's do: through the root
# logger (stderr), not to a handler of granian's on stdout beside our JSON lines.
_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"quiet": {"()": _QuietExperimental}},
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"level": "WARNING", "propagate": True, "filters": ["quiet"]},
        "granian.access": {"level": "WARNING", "propagate": True},
    },
}
