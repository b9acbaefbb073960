"""One worker process of ``stalwart serve --workers N``: a whole server of its own.

The supervisor (:mod:`stalwart.serving.workers`) starts each worker as ``python -m
stalwart.serving.worker INDEX FD``, with the settings it resolved in ``STALWART_*``
variables and ``FD`` one end of a socket pair, its link to the supervisor. The worker
builds its app (its own event loop, models, batchers, caches, prediction log and
metrics file) and serves on the shared port (``SO_REUSEPORT``, see
:func:`~stalwart.serving.server.run_server`) once its models have loaded: until then the
kernel sends its share of connections to the others, where one listening but loading
would answer 503.

Over the link, messages of one tag byte and a body:

- ``READY``, worker to supervisor: it listens;
- ``INVALIDATION`` (without Redis only; with it, Redis's channel reaches every worker): a
  feature-cache invalidation made here, which the supervisor passes to the other workers,
  whose caches apply it (:attr:`~stalwart.cache.invalidation.Invalidator.peers`);
- the end of the link: the supervisor sees the worker die; the worker sees the supervisor
  gone, and drains and stops as on SIGTERM, so that no worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from stalwart.config import load_settings
from stalwart.errors import StalwartError
from stalwart.monitoring.logs import configure_logging, get_logger
from stalwart.serving.app import create_app
from stalwart.serving.server import run_server
from stalwart.serving.workers import INVALIDATION, LINK_MESSAGE_BYTES, READY

__all__ = ["main"]

_log = get_logger("stalwart.workers")


def main(argv: list[str]) -> int:
    """Run worker ``argv[0]`` (its index) linked by the inherited descriptor ``argv[1]``;
    the exit status: after a drain, SIGTERM's (the signal re-raised) or 130 (SIGINT); 1
    for a configuration or project error; 3 when the server could not start (as
    ``stalwart serve``)."""
    index, fd = int(argv[0]), int(argv[1])
    link = _Link(socket.socket(fileno=fd))
    link.watch()
    settings = load_settings()  # the supervisor's own, through STALWART_* (a bad one failed there)
    configure_logging(settings.log_format, settings.log_level, fields={"worker": index})
    try:
        app = create_app(settings, ready_before_serving=True)
    except StalwartError as exc:
        _log.error("worker cannot start", error=exc.message)
        return 1
    cache = app.state.cache
    if cache.redis is None:
        cache.invalidator.peers = link.relay
        link.receive = cache.invalidator.receive
    try:
        return 0 if run_server(app, settings, reuse_port=True, on_ready=link.ready, drain=app.state.drain) else 3
    except KeyboardInterrupt:
        # SIGINT, passed on by the supervisor: the server drained, then re-raised it.
        return 128 + signal.SIGINT


class _Link:
    """The worker's end of its socket pair (a SOCK_SEQPACKET: one message per send)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.receive: Callable[[bytes], None] | None = None  # applies another worker's invalidation
        self._loop: asyncio.AbstractEventLoop | None = None  # set once serving: nothing is cached before

    def ready(self) -> None:
        """Tell the supervisor this worker listens (called on the server's event loop)."""
        self._loop = asyncio.get_running_loop()
        _log.info("worker ready", pid=os.getpid())
        self.sock.sendall(READY)

    def relay(self, message: bytes) -> bool:
        """Pass an invalidation to the other workers; whether the supervisor took it (never
        blocks the event loop: a full link is a "no")."""
        if len(message) >= LINK_MESSAGE_BYTES:
            return False
        try:
            self.sock.send(INVALIDATION + message, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    def watch(self) -> None:
        """Read the link on a thread of its own: invalidations go to the event loop; its end
        (the supervisor gone) stops this worker as SIGTERM does."""

        def run() -> None:
            try:
                while data := self.sock.recv(LINK_MESSAGE_BYTES):
                    loop, receive = self._loop, self.receive
                    if data[:1] == INVALIDATION and loop is not None and receive is not None:
                        with contextlib.suppress(RuntimeError):  # the loop closed: this worker is stopping
                            loop.call_soon_threadsafe(receive, data[1:])
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=run, name="stalwart-supervisor-link", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
