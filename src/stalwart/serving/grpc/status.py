"""Stalwart's errors as gRPC status codes: the REST edge's table, read through HTTP's
standard mapping to gRPC codes, so each error means the same on both protocols.

=====================  ==========================================================
HTTP (REST)            gRPC
=====================  ==========================================================
400, 422               INVALID_ARGUMENT (bad field, rejected by validation, or the
                       model refused the rows)
401                    UNAUTHENTICATED
404                    NOT_FOUND (model or version)
408, 504               DEADLINE_EXCEEDED (the client's deadline, or a time limit)
409                    ABORTED
413, 507               RESOURCE_EXHAUSTED (size limits)
500                    INTERNAL (the model raised; its message is in the log)
502, 503               UNAVAILABLE (not ready, overloaded, breaker open, a source
                       failed), with ``retry-after`` (seconds) and
                       ``grpc-retry-pushback-ms`` in the trailing metadata when a
                       retry has a time
=====================  ==========================================================

The trailing metadata also carries ``stalwart-field`` (the field at fault, as REST's
``field``) and ``stalwart-violations-bin`` (JSON: the schema's violations, REST's
``violations``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import msgspec

from stalwart.serving.errors import error_parts

__all__ = ["CODE_BY_STATUS", "GrpcError", "grpc_error"]

CODE_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class GrpcError:
    """The status a failed RPC ends with, and the HTTP status REST would have answered."""

    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str | bytes], ...]
    http_status: int


def grpc_error(exc: BaseException, request_id: str) -> GrpcError:
    """How an RPC that raised ``exc`` ends (the message as REST's ``error``)."""
    parts = error_parts(exc, request_id)
    trailing: list[tuple[str, str | bytes]] = []
    field = parts.extra.get("field")
    if isinstance(field, str) and field.isascii() and field.isprintable():
        trailing.append(("stalwart-field", field))
    if "violations" in parts.extra:
        trailing.append(("stalwart-violations-bin", msgspec.json.encode(parts.extra["violations"])))
    if parts.retry_after is not None:
        trailing.append(("retry-after", str(parts.retry_after)))
        # gRPC's own retry policy reads this (gRFC A6): no retry before it.
        trailing.append(("grpc-retry-pushback-ms", str(parts.retry_after * 1000)))
    code = CODE_BY_STATUS.get(parts.status, grpc.StatusCode.INTERNAL)
    return GrpcError(code, parts.message, tuple(trailing), parts.status)
