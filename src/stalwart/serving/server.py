"""The HTTP server under the ASGI app, as ``STALWART_SERVER`` chooses: uvicorn (httptools,
the default; :mod:`~stalwart.serving.transport`) or granian (the ``granian`` extra;
:mod:`~stalwart.serving.granian_transport`), each given the same settings: address,
keep-alive, header and body deadlines, the connection limit, a 10 s graceful shutdown,
HTTP/1.1 only, one worker in this process. Given the app's
:class:`~stalwart.serving.drain.Drain`, SIGTERM drains first (readiness false for
``STALWART_DRAIN_SECONDS``, then the graceful shutdown; :mod:`stalwart.serving.drain`).

:func:`run_server` is one process's server, for ``stalwart serve`` (and for each worker
process of a server that starts several); :func:`build_server` gives a handle to run on a
thread and stop (the demo, the tests).

>>> run_server(create_app(settings), settings)  # doctest: +SKIP
True
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import ASGIApp

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.serving.drain import Drain

if TYPE_CHECKING:
    import uvicorn

    from stalwart.serving.transport import ListeningServer

__all__ = ["ServerHandle", "build_server", "run_server"]


class ServerHandle(Protocol):
    """A built server: :meth:`run` blocks until it is stopped (by :meth:`stop`, from any
    thread, or on the main thread by SIGTERM/SIGINT) and has shut down gracefully."""

    @property
    def started(self) -> bool:
        """Whether it listened and the app's lifespan startup completed."""
        ...

    def run(self) -> None: ...

    def stop(self) -> None: ...


def run_server(
    app: ASGIApp,
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
    drain: Drain | None = None,
) -> bool:
    """Serve ``app`` on ``settings.host:settings.port`` with ``settings.server`` until
    SIGTERM or SIGINT, then shut down gracefully (draining first, given the app's
    ``drain``). False if it never started (the port was taken, or the app's lifespan
    startup failed).

    ``reuse_port`` (uvicorn only): bind with ``SO_REUSEPORT``, so that the workers of one
    supervisor share the port, each with its own listening socket, the kernel spreading new
    connections across them. The socket is bound before the app starts and listens only
    once it has: a worker still loading its models is sent no connection. ``on_ready`` is
    called once it listens."""
    server = build_server(app, settings, reuse_port=reuse_port, on_ready=on_ready, drain=drain)
    server.run()
    return server.started


def build_server(
    app: ASGIApp,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
    drain: Drain | None = None,
) -> ServerHandle:
    """``settings.server`` ready to serve ``app``; ``host`` and ``port`` override the
    settings'. With ``drain`` (the app's, ``app.state.drain``), SIGTERM begins it and the
    server stops accepting ``settings.drain_seconds`` later. Raises MissingExtraError when
    granian is chosen but not installed, and ConfigError when granian is asked to share a
    port (workers are uvicorn's here)."""
    if settings.server == "granian":
        from stalwart._optional import require
        from stalwart.serving.granian_transport import GranianServer

        if reuse_port or on_ready is not None:
            raise ConfigError("STALWART_SERVER=granian runs one process: set STALWART_WORKERS=1, or use uvicorn for workers")
        require("granian", extra="granian", purpose="STALWART_SERVER=granian")
        return GranianServer(app, settings, host=host, port=port, drain=drain)
    return _Uvicorn(app, settings, host=host, port=port, reuse_port=reuse_port, on_ready=on_ready, drain=drain)


class _Uvicorn:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        *,
        host: str | None,
        port: int | None,
        reuse_port: bool,
        on_ready: Callable[[], None] | None,
        drain: Drain | None,
    ) -> None:
        from stalwart.serving.transport import server_config

        overrides: dict[str, Any] = {}
        if host is not None:
            overrides["host"] = host
        if port is not None:
            overrides["port"] = port
        self.server = _listening_server(server_config(app, settings, **overrides), on_ready, drain, settings.drain_seconds)
        self._reuse_port = reuse_port

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def run(self) -> None:
        import uvicorn.config

        from stalwart.serving.transport import bind_sockets

        config = self.server.config
        sockets = bind_sockets(config.host, config.port, reuse_port=True) if self._reuse_port else None
        try:
            self.server.run(sockets=sockets)
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind or the lifespan fails; here that
            # is a server that did not start, for the caller to act on.
            if self.server.started or exc.code != uvicorn.config.STARTUP_FAILURE:
                raise
        finally:
            for sock in sockets or ():
                sock.close()

    def stop(self) -> None:
        self.server.should_exit = True


def _listening_server(
    config: uvicorn.Config, on_ready: Callable[[], None] | None, drain: Drain | None, seconds: float
) -> ListeningServer:
    """uvicorn's server (telling ``on_ready`` once it listens) whose first SIGTERM begins
    ``drain`` and stops the server ``seconds`` later (checked on uvicorn's 0.1 s tick);
    SIGINT, or another SIGTERM, stops it at once. Without a drain, signals stop it at once."""
    from stalwart.serving.transport import ListeningServer

    if drain is None:
        return ListeningServer(config, on_ready)
    draining: Drain = drain  # narrowed, for the class below

    class DrainingServer(ListeningServer):
        deferred: tuple[int, FrameType | None] | None = None
        exit_at = 0.0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            first = not draining.draining
            draining.begin()  # readiness says no from now on, whatever stops the server
            if first and sig == signal.SIGTERM and seconds > 0:
                self.deferred, self.exit_at = (sig, frame), time.monotonic() + seconds
                return
            self.deferred = None
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.deferred is not None and time.monotonic() >= self.exit_at:
                sig, frame = self.deferred
                self.deferred = None
                super().handle_exit(sig, frame)  # recorded as uvicorn's, so it is raised again at exit
            return await super().on_tick(counter)

    return DrainingServer(config, on_ready)
