"""The ``grpc.aio`` server: on ``STALWART_GRPC_PORT``, in the HTTP server's process and
event loop (started and stopped by the app's lifespan), with the REST side's limits.

- Message size: a request over ``STALWART_MAX_BODY_BYTES`` is refused by grpc with
  RESOURCE_EXHAUSTED before it is read whole (REST's 413). Responses are not limited.
- Metadata: at most 64 KiB (REST's limit on a request's head).
- Concurrency: RPCs in flight beyond ``STALWART_MAX_CONNECTIONS`` get RESOURCE_EXHAUSTED
  (REST's 503 past ``limit_concurrency``); at most 256 streams per connection.
- Connections: the TLS-less HTTP/2 handshake within ``STALWART_HEADER_TIMEOUT_SECONDS``;
  an idle one closed after 5 minutes; every one closed (gracefully) after 30 minutes, so a
  load balancer can spread long-lived clients over new replicas. The server pings an idle
  client every minute and drops it after 20 s of silence; clients may ping every 10 s at
  most, and one that pings more often is disconnected (grpc's ``too_many_pings``).
- Shutdown: RPCs in flight get ``STALWART_GRACEFUL_SHUTDOWN_SECONDS``, then are cancelled.
- Workers (``STALWART_WORKERS``): each worker process serves the port (``SO_REUSEPORT``),
  the kernel spreading new connections (not RPCs: an HTTP/2 connection stays with its
  worker) across them.
"""

from __future__ import annotations

import grpc.aio

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.serving.grpc.service import InferenceService
from stalwart.serving.transport import MAX_HEAD_BYTES

__all__ = ["MAX_STREAMS_PER_CONNECTION", "GrpcServer", "server_options"]

MAX_STREAMS_PER_CONNECTION = 256

_MINUTE_MS = 60_000


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc's channel arguments for the server, from ``settings``."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_metadata_size", MAX_HEAD_BYTES),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_seconds * 1000)),
        ("grpc.keepalive_time_ms", _MINUTE_MS),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 5 * _MINUTE_MS),
        ("grpc.max_connection_age_ms", 30 * _MINUTE_MS),
        ("grpc.max_connection_age_grace_ms", int(settings.graceful_shutdown_seconds * 1000)),
        # One server: a port another process holds is an error at start, not a silent share
        # of its traffic. Workers (STALWART_WORKERS) share it, as they share the HTTP port;
        # their supervisor made sure no other program listens there.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


class GrpcServer:
    """The gRPC service on ``host:port`` (``port`` 0: any free port, then :attr:`port`)."""

    def __init__(self, service: InferenceService, settings: Settings, *, host: str, port: int) -> None:
        self.service = service
        self.settings = settings
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Listen and serve (on the running event loop). ConfigError when the port is taken."""
        server = grpc.aio.server(
            options=server_options(self.settings), maximum_concurrent_rpcs=self.settings.max_connections
        )
        server.add_generic_rpc_handlers((self.service.handler(),))
        address = f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on {address} ({exc}); free the port or set STALWART_GRPC_PORT to another"
            ) from exc
        await server.start()
        self.port = bound
        self._server = server

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; RPCs in flight get ``grace`` seconds (default: the settings')."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self.settings.graceful_shutdown_seconds if grace is None else grace)
