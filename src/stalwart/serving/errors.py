"""The one table that turns Stalwart's errors into HTTP responses.

Domain code never names a status code; this module does, once. Anything not in the table
is a bug on our side: a 500 whose body gives the request id to find in the logs, never a
traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from stalwart import errors as e
from stalwart.monitoring.logs import get_logger
from stalwart.serving.codec import encode_error

__all__ = [
    "STATUS_BY_ERROR",
    "ErrorParts",
    "error_parts",
    "error_response",
    "exception_handlers",
    "log_error",
    "logged_error_response",
    "status_for",
]

_log = get_logger("stalwart.serving")

# Most specific first: the first class the error is an instance of decides.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (e.PayloadTooLarge, 413),
    (e.BodyTimeout, 408),
    (e.ValidationFailed, 422),
    (e.ModelInputError, 422),
    (e.InvalidFeedback, 422),
    (e.UnknownEntity, 404),
    (e.RequestError, 400),
    (e.ModelNotFound, 404),
    (e.VersionNotFound, 404),
    (e.DeploymentNotFound, 404),
    (e.SchemaNotFound, 404),
    (e.NotFound, 404),
    (e.AuthError, 401),
    (e.IllegalStateTransition, 409),
    (e.RolloutConflict, 409),
    (e.NotReady, 503),
    (e.Overloaded, 503),
    (e.CallNotPermitted, 503),
    (e.BulkheadFull, 503),
    (e.CallTimeout, 504),
    (e.ArtifactIntegrityError, 503),
    (e.UntrustedArtifactError, 503),
    (e.ArtifactWriteError, 507),
    # The rest of a failed load: the artifact file is missing (RegistryError), the flavor
    # cannot deserialise it, or its library is not installed. The model is not ready.
    (e.RegistryError, 503),
    (e.FlavorError, 503),
    (e.MissingExtraError, 503),
    (e.ConfigError, 400),
    (e.ModelError, 500),
    (e.FeatureError, 502),
    (e.StorageError, 503),
    # The prediction log cannot take (sync mode) or read back a record: its store is down.
    (e.PredictionLogError, 503),
)

JSON = "application/json"


def status_for(exc: BaseException) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


@dataclass(frozen=True, slots=True)
class ErrorParts:
    """What a client is told of an error, whatever the protocol: the HTTP status, the
    message, machine-readable extras (``field``, ``violations``, ``request_id``), the
    seconds after which a retry may succeed, and protocol headers."""

    status: int
    message: str
    extra: dict[str, Any]
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_parts(exc: BaseException, request_id: str | None = None) -> ErrorParts:
    """The parts of the answer to ``exc`` (the REST body and headers; gRPC's status)."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    retry: int | None = None
    if isinstance(exc, e.StorageError):
        # Its message names the database (host, port, user, name): for the log, which has
        # it (see _stalwart_error), not for an unauthenticated client.
        message = f"the registry database is unavailable; retry shortly (request {request_id})"
        extra["request_id"] = request_id
    elif isinstance(exc, e.StalwartError):
        message = exc.message
        if isinstance(exc, e.RequestError) and exc.field:
            extra["field"] = exc.field
        if isinstance(exc, e.ValidationFailed):
            extra["violations"] = exc.violations
        if isinstance(exc, e.ModelError | e.ModelInputError) and request_id:
            message = f"{message}; the model's own message is in the server log under request {request_id}"
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, e.Overloaded | e.CallNotPermitted | e.NotReady) and retry_after is not None:
            # Whole seconds, rounded up: an early retry would only be turned away again.
            retry = max(1, math.ceil(retry_after))
            headers["Retry-After"] = str(retry)
        if isinstance(exc, e.AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, e.BodyTimeout):
            # The rest of the body may still trickle in: nothing more on this connection.
            headers["Connection"] = "close"
    else:
        message = f"internal error; find request {request_id} in the server log"
    return ErrorParts(status, message, extra, retry, headers)


def error_response(exc: BaseException, request_id: str | None = None) -> Response:
    """The JSON response for ``exc``: ``{"error": ...}`` plus machine-readable extras."""
    parts = error_parts(exc, request_id)
    return Response(
        encode_error(parts.message, **parts.extra), status_code=parts.status, headers=parts.headers, media_type=JSON
    )


async def _stalwart_error(request: Request, exc: Exception) -> Response:
    return logged_error_response(exc, request.scope.get("stalwart.request_id"))


def logged_error_response(exc: Exception, request_id: str | None) -> Response:
    """:func:`error_response` for a :class:`~stalwart.errors.StalwartError`, logged as the
    exception handlers log it (see :func:`log_error`)."""
    log_error(exc, request_id)
    return error_response(exc, request_id)


def log_error(exc: BaseException, request_id: str | None) -> None:
    """Log a :class:`~stalwart.errors.StalwartError` a client is answered with: 5xx as
    warnings; a model's own message (never sent to the client) at info."""
    status = status_for(exc)
    # A model's own message stays in the log, with the request id the client was given.
    detail = getattr(exc, "detail", None) or None
    if status >= 500:
        _log.warning("request failed", request_id=request_id, error=str(exc), error_type=type(exc).__name__, detail=detail)
    elif detail is not None:
        _log.info("model refused the request's inputs", request_id=request_id, error=str(exc), detail=detail)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    message = exc.detail if exc.status_code != 404 else f"no route {request.url.path}; see /openapi.json"
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see /openapi.json"
    return Response(encode_error(message), status_code=exc.status_code, headers=exc.headers, media_type=JSON)


def exception_handlers() -> dict[Any, Any]:
    # Anything else is caught by the Observe middleware, which logs it and answers a JSON 500.
    return {e.StalwartError: _stalwart_error, HTTPException: _http_error}
