"""One worker process of ``stalwart serve --workers N``: a whole server of its own.

The supervisor (:mod:`stalwart.serving.workers`) starts each worker as ``python -m
stalwart.serving.worker INDEX FD``, with the settings it resolved in ``STALWART_*``
variables and ``FD`` one end of a socket pair, its link to the supervisor. The worker
builds its app (its own event loop, models, batchers, caches, prediction log and
metrics file) and serves on the shared port (``SO_REUSEPORT``, see
:func:`~stalwart.serving.transport.run_server`) once its models have loaded: until then the
kernel sends its share of connections to the others, where one listening but loading
would answer 503. Over the link it says ``ready`` once it listens; the supervisor sees it die as the link's end of file. The other way round, the
link's end of file means the supervisor is gone: the worker then drains and stops as on
SIGTERM, so that no worker outlives its supervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from stalwart.config import load_settings
from stalwart.errors import StalwartError
from stalwart.monitoring.logs import configure_logging, get_logger
from stalwart.serving.app import create_app
from stalwart.serving.transport import run_server
from stalwart.serving.workers import READY

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run worker ``argv[0]`` (its index) linked by the inherited descriptor ``argv[1]``;
    the exit status: 0 after a drain, 1 for a configuration or project error, 3 when
    the server could not start (as ``stalwart serve``)."""
    index, fd = int(argv[0]), int(argv[1])
    link = socket.socket(fileno=fd)
    _watch_supervisor(link)
    settings = load_settings()  # the supervisor's own, through STALWART_* (a bad one failed there)
    configure_logging(settings.log_format, settings.log_level, fields={"worker": index})
    log = get_logger("stalwart.workers")
    try:
        app = create_app(settings, ready_before_serving=True)
    except StalwartError as exc:
        log.error("worker cannot start", error=exc.message)
        return 1

    def ready() -> None:
        log.info("worker ready", pid=os.getpid())
        link.sendall(READY)

    return 0 if run_server(app, settings, reuse_port=True, on_ready=ready) else 3


def _watch_supervisor(link: socket.socket) -> None:
    """Drain and stop (SIGTERM to this process) once the supervisor's end of ``link`` closes."""

    def watch() -> None:
        try:
            while link.recv(64):
                pass  # the supervisor sends nothing today; anything it does is not an exit
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stalwart-supervisor-link", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
