"""How ``stalwart serve`` runs uvicorn: no socket is held open on a client's terms.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) and answers 503
beyond ``limit_concurrency``, but it waits forever for a request's headers, and for a body
the app never reads: one socket (a file descriptor) per slow or silent client, as many as
they like. :class:`DeadlineProtocol` wraps uvicorn's own HTTP/1.1 protocol and closes a
connection whose request headers do not arrive within ``header_timeout`` of the request's
first byte (of the connection, for its first request), or whose body does not arrive
within ``body_timeout`` (plus a grace: the app's :class:`~stalwart.serving.middleware.BodyLimit`
answers 408 at ``body_timeout`` when it is reading). httptools sets no limit on a request's
head, so uvicorn would buffer as many header bytes as a client sends until the header
deadline: beyond :data:`MAX_HEAD_BYTES` the answer is 431 and the connection is closed
(h11 has its own 16 KiB limit; granian, about 400 KiB).

It also makes one write of a response: uvicorn writes a response's head when the app
starts it and its body when the app sends it, two ``send`` system calls where one would
do (:class:`_OneWrite`). On a sandboxed kernel a system call costs microseconds; the two
were a fifth of the server's samples at 64 connections.

:func:`bind_sockets` binds the sockets of ``stalwart serve --workers N``
(:mod:`stalwart.serving.workers`): with ``SO_REUSEPORT``, N processes each own a listening
socket on the same port; :class:`ListeningServer` says when it listens.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import uvicorn

from stalwart.config import Settings

__all__ = ["MAX_HEAD_BYTES", "DeadlineProtocol", "ListeningServer", "bind_sockets", "deadline_protocol", "server_config"]

MAX_HEAD_BYTES = 64 * 1024
"""The request line and headers of one request, at most (nginx allows 32 KiB by default)."""

# After the app's own 408 (BodyLimit) has had its chance: the connection goes regardless.
_BODY_GRACE_SECONDS = 1.0
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 27\r\nconnection: close\r\n\r\nrequest headers too slow.\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 28\r\nconnection: close\r\n\r\nrequest headers too large.\r\n"
)


class DeadlineProtocol(asyncio.Protocol):
    """uvicorn's HTTP/1.1 protocol (httptools or h11, as uvicorn picks) with deadlines for
    a request's headers and body. Built by :func:`deadline_protocol` with its timeouts."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        self.inner: Any = AutoHTTPProtocol(  # type: ignore[call-arg]
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        # When the awaited headers or body are due (loop time), checked by the loop's
        # sweep: a timer per request cost more than the rest of this class.
        self._due: float | None = None
        self._waiting_for = "headers"  # or "body" of self._cycle
        self._cycle: Any = None  # the request whose body is awaited, once its headers are in
        self._head_bytes = 0  # received while waiting for the current request's headers

    # asyncio.Protocol, forwarded to uvicorn's protocol around the deadline bookkeeping.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = _OneWrite(transport, self.loop)  # type: ignore[arg-type]
        self.transport = coalescing  # type: ignore[assignment]
        self.inner.connection_made(coalescing)
        # A response is complete: what it wrote goes out now, in one write, before uvicorn
        # turns to the next request (a pipelined one, or the keep-alive wait).
        complete = self.inner.on_response_complete

        def on_response_complete() -> None:
            coalescing.flush()
            complete()

        self.inner.on_response_complete = on_response_complete
        _sweep_of(self.loop).add(self)
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._due is None:
            self._arm("headers", self.header_timeout)  # a next request's first bytes
        if self._waiting_for == "headers":
            self._head_bytes += len(data)
        self.inner.data_received(data)
        self._advance()
        if self._waiting_for == "headers" and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        _sweep_of(self.loop).discard(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _advance(self) -> None:
        cycle = self.inner.cycle
        if self._waiting_for == "headers":
            if cycle is not None and cycle is not self._cycle:  # this request's headers are in
                self._cycle = cycle
                if cycle.more_body:
                    self._arm("body", self.body_timeout + _BODY_GRACE_SECONDS)
                else:
                    self._disarm()
        elif cycle is self._cycle and not cycle.more_body:
            self._disarm()

    def _arm(self, waiting_for: str, seconds: float) -> None:
        self._waiting_for = waiting_for
        self._due = self.loop.time() + seconds
        self._head_bytes = 0

    def _disarm(self) -> None:
        self._due = None
        self._waiting_for = "headers"
        self._head_bytes = 0

    def _refuse_head(self) -> None:
        transport = self.transport
        self._disarm()
        if transport is None or transport.is_closing():
            return
        cycle = self.inner.cycle
        if cycle is None or cycle.response_complete:  # nothing of an earlier request's answer to cut
            transport.write(_TOO_LARGE)
        transport.close()

    def _expired(self) -> None:
        self._due = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.inner.cycle
        busy = cycle is not None and not cycle.response_complete
        if self._waiting_for == "headers":
            if busy:
                # An earlier request is still being answered (h11 reads a pipelined one only
                # after it): the server's time, not the client's. Look again later.
                self._arm("headers", self.header_timeout)
                return
            transport.write(_TIMED_OUT)
        transport.close()


class _OneWrite:
    """A transport that holds what is written until the response is complete (the protocol
    calls :meth:`flush`) or the loop's next turn, whichever comes first, then writes it
    with one call. Everything else is the real transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            # A streamed response never completes in one turn: its chunks go out at the
            # loop's next turn, not when it ends.
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Sweep:
    """A loop's open connections, checked against their deadlines every ``_SWEEP_SECONDS``
    (so a deadline is enforced up to that much late) while any is open."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: set[DeadlineProtocol] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, protocol: DeadlineProtocol) -> None:
        self.connections.add(protocol)
        if self.timer is None:
            self.timer = self.loop.call_later(_SWEEP_SECONDS, self.run)

    def discard(self, protocol: DeadlineProtocol) -> None:
        self.connections.discard(protocol)

    def run(self) -> None:
        now = self.loop.time()
        for protocol in [p for p in self.connections if p._due is not None and p._due <= now]:
            protocol._expired()
        self.timer = self.loop.call_later(_SWEEP_SECONDS, self.run) if self.connections else None


_SWEEP_SECONDS = 0.1
_sweeps: dict[asyncio.AbstractEventLoop, _Sweep] = {}


def _sweep_of(loop: asyncio.AbstractEventLoop) -> _Sweep:
    sweep = _sweeps.get(loop)
    if sweep is None:
        for stale in [other for other in _sweeps if other.is_closed()]:
            del _sweeps[stale]
        sweep = _sweeps[loop] = _Sweep(loop)
    return sweep


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineProtocol]:
    """A :class:`DeadlineProtocol` class with these timeouts, for ``uvicorn.Config(http=...)``."""
    return type(
        "DeadlineProtocol", (DeadlineProtocol,), {"header_timeout": header_timeout, "body_timeout": body_timeout}
    )


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` from ``settings``: address, keep-alive, header
    and body deadlines, the connection limit; ``overrides`` (uvicorn.Config's own
    arguments) win."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        # Nothing here reads the client's address (no decision, no log line), so rewriting it
        # from X-Forwarded-For on every request, as uvicorn does by default, is work for nothing.
        "proxy_headers": False,
        "http": deadline_protocol(settings.header_timeout_seconds, settings.body_timeout_seconds),
        "timeout_keep_alive": settings.keep_alive_seconds,
        # uvicorn counts open connections and requests in flight against it; beyond, 503.
        "limit_concurrency": settings.max_connections,
        # On SIGTERM, in-flight requests get this long; then the lifespan closes the
        # batchers, so a hung model call cannot keep the process from stopping.
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
    }
    return uvicorn.Config(app, **{**options, **overrides})


def bind_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Sockets bound (not listening) to every address ``host`` resolves to, with
    ``SO_REUSEADDR``; with ``reuse_port`` also ``SO_REUSEPORT``, so that any process of this
    user may bind the same port alike (without it, binding fails while any socket is bound
    there, with ``SO_REUSEPORT`` or not). Port 0 picks one free port, the same for every
    address."""
    sockets: list[socket.socket] = []
    try:
        for family, address in _addresses(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's own servers
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """The (family, address) pairs ``host`` resolves to for listening, without duplicates."""
    found: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        if family in (socket.AF_INET, socket.AF_INET6) and (family, address) not in found:
            found.append((family, address))
    if not found:
        raise OSError(f"{host!r} resolves to no IPv4 or IPv6 address")
    return found


class ListeningServer(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()
