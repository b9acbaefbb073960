"""Pure ASGI middleware around every request: identity, limits, metrics and the access log.

Identity is a request id (``X-Request-ID``) and a W3C trace context: the client's
``traceparent`` when valid (its ``tracestate`` kept with it), else a new trace. The
response's ``traceparent`` names the request's own (server) span, so a client can find it.

Written against raw ASGI rather than ``BaseHTTPMiddleware``: that one adds a task and a
stream per request, which costs more than the model call for a small tabular model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.errors import BodyTimeout, PayloadTooLarge
from stalwart.monitoring.logs import get_logger, log_request
from stalwart.monitoring.metrics import ServingMetrics
from stalwart.monitoring.tracing import (
    TRACESTATE_LIMIT,
    format_traceparent,
    new_ids,
    new_span_id,
    parse_traceparent,
)
from stalwart.resilience.deadlines import Expired, run_until
from stalwart.serving.drain import Drain
from stalwart.serving.errors import error_response

__all__ = ["CLIENT_CLOSED", "BodyLimit", "Observe", "RequestInfo", "identify", "request_info"]

_log = get_logger("stalwart.serving")
_REQUEST_ID_HEADER = b"x-request-id"
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_IDENTITY_HEADERS = frozenset((_REQUEST_ID_HEADER, _TRACEPARENT, _TRACESTATE))
_CLOSE = (b"connection", b"close")
_MAX_REQUEST_ID = 128
CLIENT_CLOSED = 499
"""The status counted and logged for a client that went away before its answer (nginx's
499): its own doing, so never a 5xx anyone could inflate at will."""


@dataclass(slots=True)
class RequestInfo:
    """What the endpoint learned about a request, for its metrics and its log line.

    ``trace_id`` (32 hex digits) is the client's or a new one; ``span_id`` (16) is this
    request's server span, ``parent_span_id`` the client's span (None without a valid
    ``traceparent``), ``trace_flags`` its flags (``SAMPLED``), ``tracestate`` the client's,
    passed on as it came. ``started`` is the request's ``time.perf_counter()`` at arrival.
    ``on_done``, when set (by the tracing tap), is called with the HTTP status once the
    response is sent.
    """

    request_id: str
    endpoint: str = "other"
    model: str = ""
    version: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str | None = None
    trace_flags: int = 0
    tracestate: str | None = None
    started: float = 0.0  # time.perf_counter() at arrival
    arrived_ns: int = 0  # time.time_ns() at arrival
    on_done: Callable[[RequestInfo, int], None] | None = None


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo = scope["stalwart.info"]
    return info


class Observe:
    """Gives each request an id (``X-Request-ID``, taken from the client when sane),
    counts and times it, writes one access-log line, and turns a crash into a JSON 500.
    While ``drain`` is draining, every response closes its connection (``connection:
    close``), so a client's next request opens a new one, to another replica."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, *, access_log: bool = True, drain: Drain | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info = identify(scope["headers"], start)
        info.arrived_ns = time.time_ns()
        request_id = info.request_id
        scope["stalwart.info"] = info
        scope["stalwart.request_id"] = request_id
        header = (_REQUEST_ID_HEADER, request_id.encode())
        status = 500
        started = False
        drain = self.drain

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                # Built now, not at arrival: the tracing tap may have replaced the ids with
                # those of the span it exports.
                traceparent = format_traceparent(info.trace_id, info.span_id, info.trace_flags)
                message["headers"] = [*message.get("headers", ()), header, (_TRACEPARENT, traceparent)]
                if drain.draining:
                    message["headers"].append(_CLOSE)
            await send(message)

        self.metrics.in_flight_count += 1
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Starlette raises it from request.body() when the client closes mid-body.
            if not started:
                status = CLIENT_CLOSED
            _log.info("client disconnected", request_id=request_id, path=scope["path"])
        except Exception as exc:  # noqa: BLE001 - the last resort: whatever escaped every handler
            _log.error("unhandled error", request_id=request_id, exc_info=exc)
            if not started:
                await error_response(exc, request_id)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight_count -= 1
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(info.model, info.version, info.endpoint, status, elapsed)
            if self.access_log:
                log_request({
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "endpoint": info.endpoint,
                    "model": info.model or None,
                    "version": info.version or None,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "trace_id": info.trace_id,
                    **info.fields,
                })
            if info.on_done is not None:
                info.on_done(info, status)


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413, before reading them when the client
    declares the length, and as soon as the limit is crossed when it streams; and bodies
    that take longer than ``timeout`` seconds to arrive with 408 (a trickling client holds
    a connection and a task for as long as it likes otherwise)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.timeout is not None:
            receive = _with_deadline(receive, self.timeout)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break  # not a length: count what arrives, as for a streamed body
                if declared > self.limit:
                    await error_response(PayloadTooLarge(self.limit))(scope, receive, send)
                    return
                # The server reads exactly the declared length (HTTP/1.1 framing), so a body
                # within it needs no counting: the common case costs nothing more.
                await self.app(scope, receive, send)
                return
        received = 0
        limit = self.limit

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _with_deadline(receive: Receive, timeout: float) -> Receive:
    """``receive``, raising BodyTimeout when the body is not complete ``timeout`` seconds
    from now. Once it is, later calls (waiting for a disconnect) are not limited. The
    deadline is a coarse one (:mod:`~stalwart.resilience.deadlines`): no timer per request."""
    deadline = time.monotonic() + timeout
    complete = False

    async def timed_receive() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            message = await run_until(receive(), deadline)
        except Expired:
            raise BodyTimeout(timeout) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
        return message

    return timed_receive


def identify(headers: list[tuple[bytes, bytes]], start: float) -> RequestInfo:
    """The request's identity from one scan of its headers (HTTP's, or gRPC metadata as the
    same lowercase pairs): its request id and its trace context (the client's, when its
    ``traceparent`` is valid, else a new trace)."""
    request_id: str | None = None
    traceparent: bytes | None = None
    tracestate: bytes | None = None
    seen_request_id = False
    for name, value in headers:
        # Header names are lowercase in ASGI. Most headers are none of these three: one set
        # lookup each (measured a quarter cheaper than three comparisons).
        if name not in _IDENTITY_HEADERS:
            continue
        if name == _REQUEST_ID_HEADER:
            if not seen_request_id:
                seen_request_id = True
                request_id = _request_id(value)
        elif name == _TRACEPARENT:
            # Two traceparent headers contradict each other: neither is trusted.
            traceparent = value if traceparent is None else b""
        else:
            # The specification allows tracestate split over several headers.
            tracestate = value if tracestate is None else tracestate + b"," + value
    parsed = parse_traceparent(traceparent) if traceparent else None
    if parsed is None:
        # A tracestate without a valid traceparent is ignored, as specified.
        trace_id, span_id = new_ids()
        return RequestInfo(request_id or _new_request_id(), trace_id=trace_id, span_id=span_id, started=start)
    info = RequestInfo(request_id or _new_request_id(), trace_id=parsed[0], span_id=new_span_id(), started=start)
    info.parent_span_id, info.trace_flags = parsed[1], parsed[2]
    if tracestate is not None and len(tracestate) <= TRACESTATE_LIMIT and tracestate.isascii():
        info.tracestate = tracestate.decode()
    return info


def _request_id(value: bytes) -> str | None:
    """The client's ``X-Request-ID`` when it is sane (short, printable ASCII, no spaces)."""
    if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii():
        text: str = value.decode()
        if text.isprintable() and " " not in text:
            return text
    return None


def _new_request_id() -> str:
    """A random UUID4 as 32 hex digits, built without ``uuid.UUID`` (three times faster),
    from a batch of ids made by one ``os.urandom`` call (a system call costs microseconds,
    more in a sandboxed kernel: as much as the rest of this middleware)."""
    global _request_ids
    found = next(_request_ids, None)
    if found is None:
        # Another thread may refill at the same moment: each refill is fresh random bytes.
        _request_ids = _refill_request_ids()
        found = next(_request_ids)
    return found


def _refill_request_ids(count: int = 256) -> Iterator[str]:
    raw = bytearray(os.urandom(16 * count))
    for at in range(0, len(raw), 16):
        raw[at + 6] = (raw[at + 6] & 0x0F) | 0x40  # version 4
        raw[at + 8] = (raw[at + 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return iter([text[i : i + 32] for i in range(0, len(text), 32)])


_request_ids: Iterator[str] = iter(())
