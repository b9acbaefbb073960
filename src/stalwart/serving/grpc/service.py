"""The RPCs of ``inference.GRPCInferenceService``: a thin adapter over the data plane.

``ModelInfer`` hands the request to :meth:`DataPlane.infer
<stalwart.serving.dataplane.DataPlane.infer>`, as ``POST /v2/models/{m}/infer`` does, so
validation, guards, batching, the prediction log, live profiles and metrics apply alike.
The client's deadline is the request's deadline (as ``X-Request-Timeout`` is over REST);
``x-stalwart-priority`` in the metadata is its priority, ``x-request-id`` and
``traceparent`` its identity. The other RPCs answer what their REST twins answer.

Every RPC is observed as :class:`~stalwart.serving.middleware.Observe` observes an HTTP
request: counted and timed in ``stalwart_requests`` and ``stalwart_request_duration_seconds``
(``endpoint`` the RPC's path, ``status`` the HTTP status REST would have answered, so one
error-rate query covers both protocols), one access-log line, and the request's id and
``traceparent`` in the trailing metadata.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from stalwart._version import __version__
from stalwart.errors import RequestError, StalwartError
from stalwart.monitoring.logs import get_logger, log_request
from stalwart.monitoring.metrics import ServingMetrics
from stalwart.monitoring.tracing import format_traceparent
from stalwart.resilience import Priority, parse_priority
from stalwart.serving.dataplane import DataPlane, InferCall
from stalwart.serving.drain import Drain
from stalwart.serving.errors import log_error
from stalwart.serving.grpc import messages as m
from stalwart.serving.grpc.status import grpc_error
from stalwart.serving.grpc.tensors import (
    GrpcRequest,
    grpc_request,
    infer_response,
    parse_infer_request,
)
from stalwart.serving.middleware import CLIENT_CLOSED, RequestInfo, identify
from stalwart.serving.oip import EXTENSIONS
from stalwart.serving.repository import ModelRepository, version_or_not_found

__all__ = ["DEADLINE_MARGIN_SECONDS", "MAX_DEADLINE_SECONDS", "InferenceService"]

_log = get_logger("stalwart.serving")

MAX_DEADLINE_SECONDS = 600.0
"""A client's deadline beyond this (as ``X-Request-Timeout`` beyond 600 s) counts as none."""
DEADLINE_MARGIN_SECONDS = 0.05
"""The data plane's deadline is before the client's by a tenth of the time left, at most
this: the server's own DEADLINE_EXCEEDED (its message, its 504 in the log, the metrics and
the prediction record) then reaches the client, rather than grpc cancelling the request
at the very instant (a cancelled request is recorded as the client's 499)."""

_IDENTITY_KEYS = frozenset(("x-request-id", "traceparent", "tracestate"))
_Request = TypeVar("_Request", bound=Message)
_Request_contra = TypeVar("_Request_contra", bound=Message, contravariant=True)
Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Sequence[tuple[str, str | bytes]]


class _Behaviour(Protocol[_Request_contra]):
    def __call__(self, request: _Request_contra, context: Context, info: RequestInfo, metadata: Metadata) -> Awaitable[Message]: ...


class InferenceService:
    """The service's RPCs over ``plane``, observed into ``metrics`` and the access log."""

    def __init__(self, plane: DataPlane, metrics: ServingMetrics, *, access_log: bool = True, drain: Drain | None = None) -> None:
        self.plane = plane
        self.repository: ModelRepository = plane.repository
        self.metrics = metrics
        self.access_log = access_log
        self.drain = drain or Drain()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The service's method handlers, for ``grpc.aio.Server.add_generic_rpc_handlers``.
        Requests arrive as bytes and are parsed here, so a malformed message is the client's
        INVALID_ARGUMENT, not grpc's INTERNAL."""
        methods: dict[str, tuple[Callable[[bytes], Any], _Behaviour[Any]]] = {
            "ServerLive": (m.ServerLiveRequest.FromString, self.server_live),
            "ServerReady": (m.ServerReadyRequest.FromString, self.server_ready),
            "ModelReady": (m.ModelReadyRequest.FromString, self.model_ready),
            "ServerMetadata": (m.ServerMetadataRequest.FromString, self.server_metadata),
            "ModelMetadata": (m.ModelMetadataRequest.FromString, self.model_metadata),
            "ModelInfer": (parse_infer_request, self.model_infer),
        }
        return grpc.method_handlers_generic_handler(m.SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                self._observed(f"/{m.SERVICE}/{name}", parse, behaviour), response_serializer=_serialize
            )
            for name, (parse, behaviour) in methods.items()
        })

    # --- the RPCs ---------------------------------------------------------------------

    async def server_live(self, request: m.ServerLiveRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        return m.ServerLiveResponse(live=True)

    async def server_ready(self, request: m.ServerReadyRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        """Ready as ``/v2/health/ready`` is: models loaded, and not draining (SIGTERM,
        ``STALWART_DRAIN_SECONDS``), so a gRPC health check takes the replica out too."""
        return m.ServerReadyResponse(ready=not self.drain.draining and self.repository.not_ready_reason() is None)

    async def server_metadata(self, request: m.ServerMetadataRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        return m.ServerMetadataResponse(name="stalwart", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, request: m.ModelMetadataRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        mv = await self.repository.describe(request.name, _version(request.version, request.name))
        info.model, info.version = mv.name, str(mv.version)
        tensor = m.ModelMetadataResponse.TensorMetadata
        return m.ModelMetadataResponse(
            name=mv.name,
            versions=[str(mv.version)],
            platform=mv.flavor,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.signature.outputs],
        )

    async def model_ready(self, request: m.ModelReadyRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        """Whether the version is loaded; asking about one that is not starts its load (as
        ``GET /v2/models/{m}/ready``), and the answer is ``ready: false`` until it is."""
        mv = await self.repository.describe(request.name, _version(request.version, request.name))
        info.model, info.version = mv.name, str(mv.version)
        if self.repository.is_loaded(mv.name, mv.version):
            return m.ModelReadyResponse(ready=True)
        if self.repository.failure(mv.name, mv.version) is None:
            self.repository.warm(mv.name, mv.version)
        return m.ModelReadyResponse(ready=False)

    async def model_infer(self, request: m.ModelInferRequest, context: Context, info: RequestInfo, metadata: Metadata) -> Message:
        name = request.model_name
        version = _version(request.model_version, name)
        call = InferCall(
            name, version, b"", info, _deadline(context), _priority(metadata),
            # Sizes and counts are checked, and arrays made, in the data plane's decode stage.
            decode=lambda _: grpc_request(request),
        )
        inferred = await self.plane.infer(call)
        decoded = inferred.request
        validation = inferred.validation
        return infer_response(
            model_name=name,
            model_version=inferred.version.version,
            request_id=inferred.id,
            outputs=inferred.outputs,
            signature=inferred.version.signature,
            raw=isinstance(decoded, GrpcRequest) and decoded.raw,
            parameters={"stalwart_validation": validation.response} if validation is not None and validation.response else None,
        )

    # --- observing every RPC ----------------------------------------------------------

    def _observed(
        self, path: str, parse: Callable[[bytes], _Request], behaviour: _Behaviour[_Request]
    ) -> Callable[[bytes, Context], Awaitable[Message]]:
        async def rpc(payload: bytes, context: Context) -> Message:
            start = time.perf_counter()
            metadata: Metadata = tuple(context.invocation_metadata() or ())
            info = identify(_identity_pairs(metadata), start)
            info.arrived_ns = time.time_ns()
            info.endpoint = path
            status, code = 500, grpc.StatusCode.INTERNAL
            self.metrics.in_flight_count += 1
            try:
                request = _parse(parse, payload)
                response = await behaviour(request, context, info, metadata)
                status, code = 200, grpc.StatusCode.OK
                context.set_trailing_metadata(_identity(info))
                return response
            except asyncio.CancelledError:
                status = CLIENT_CLOSED  # the client went away, or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # every error ends the RPC with a status and a message, never a traceback
                if isinstance(exc, StalwartError):
                    log_error(exc, info.request_id)
                else:
                    _log.error("unhandled error", request_id=info.request_id, rpc=path, exc_info=exc)
                error = grpc_error(exc, info.request_id)
                status, code = error.http_status, error.code
                await context.abort(error.code, error.details, trailing_metadata=(*error.trailing, *_identity(info)))
                raise  # pragma: no cover - abort raises
            finally:
                self.metrics.in_flight_count -= 1
                elapsed = time.perf_counter() - start
                self.metrics.observe_request(info.model, info.version, path, status, elapsed)
                if self.access_log:
                    log_request({
                        "request_id": info.request_id,
                        "method": "GRPC",
                        "path": path,
                        "endpoint": path,
                        "model": info.model or None,
                        "version": info.version or None,
                        "status": status,
                        "grpc_status": code.name,
                        "latency_ms": round(elapsed * 1000, 3),
                        "trace_id": info.trace_id,
                        **info.fields,
                    })
                if info.on_done is not None:
                    info.on_done(info, status)

        return rpc


def _parse(parse: Callable[[bytes], _Request], payload: bytes) -> _Request:
    try:
        return parse(payload)
    except DecodeError as exc:
        raise RequestError(f"request: not a message of this RPC ({exc})", field="request") from None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _version(raw: str, name: str) -> int | None:
    return None if not raw else version_or_not_found(raw, name)


def _deadline(context: Context) -> float | None:
    """The client's deadline on the ``time.monotonic()`` clock (None: it set none)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > MAX_DEADLINE_SECONDS:
        return None
    return time.monotonic() + max(0.0, remaining - min(DEADLINE_MARGIN_SECONDS, remaining / 10))


def _priority(metadata: Metadata) -> Priority:
    for key, value in metadata:
        if key == "x-stalwart-priority" and isinstance(value, str):
            return parse_priority(value)
    return Priority.NORMAL


def _identity_pairs(metadata: Metadata) -> list[tuple[bytes, bytes]]:
    """The metadata that says who the request is, as the lowercase header pairs
    :func:`~stalwart.serving.middleware.identify` reads."""
    return [
        (key.encode(), value.encode() if isinstance(value, str) else value)
        for key, value in metadata
        if key in _IDENTITY_KEYS
    ]


def _identity(info: RequestInfo) -> tuple[tuple[str, str], ...]:
    # Built at the end: the tracing tap may have replaced the ids with its span's.
    return (("x-request-id", info.request_id), ("traceparent", format_traceparent(info.trace_id, info.span_id, info.trace_flags).decode()))
