"""Draining: a server told to stop by SIGTERM first leaves its load balancer's rotation.

A load balancer stops sending a replica requests only once it notices that it should: a
Kubernetes Service when the readiness probe fails (or the pod is marked terminating), nginx
when a connection is refused. A server that stopped accepting at once would refuse the
requests already on their way. So on SIGTERM, ``stalwart serve``:

1. answers ``/v2/health/ready`` with 503 (``draining``) and puts ``connection: close`` on
   every response, so that clients and proxies open their next connection (to another
   replica) instead of reusing this one: when it stops accepting, no idle keep-alive
   connection is left for a proxy to send a request down as it closes;
2. keeps serving for ``STALWART_DRAIN_SECONDS`` (0 by default: nothing waits for a load
   balancer that is not there);
3. then stops accepting, gives the requests in flight ``STALWART_GRACEFUL_SHUTDOWN_SECONDS``,
   runs the lifespan's shutdown (which delivers the prediction log) and exits by the signal.

SIGINT (Ctrl-C) or a second SIGTERM skips what is left of step 2. The server
(:mod:`stalwart.serving.server`) sets the :class:`Drain`; readiness
(:mod:`stalwart.serving.oip`) and :class:`~stalwart.serving.middleware.Observe` read it.
"""

from __future__ import annotations

import time

__all__ = ["Drain"]


class Drain:
    """Whether this server is draining (see the module docstring): false until the server is
    told to stop, then true for good."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None  # time.monotonic() when draining began

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        """Start draining (idempotent; from the server's signal handling)."""
        if self.since is None:
            self.since = time.monotonic()
