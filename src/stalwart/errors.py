"""Every error Stalwart raises, in one tree.

Domain code raises these; the HTTP edge (``stalwart.serving.errors``) maps each class to a
status code in one table, so no module below ``serving`` knows about HTTP. Every message
says what went wrong *and* what to do next.

::

    StalwartError
    ├── ConfigError                 settings or project definitions are wrong
    ├── MissingExtraError           an optional dependency is not installed (also ImportError)
    ├── StorageError                the database cannot be used as it is
    │   └── SchemaVersionError      the database was written by a newer Stalwart
    ├── RegistryError
    │   ├── ModelNotFound           no model of that name
    │   ├── VersionNotFound         the model has no such version
    │   ├── DeploymentNotFound      no deployment of that name
    │   ├── SchemaNotFound          the model version has no such schema revision
    │   ├── ArtifactIntegrityError  the artifact's sha256 differs from the registered one
    │   ├── ArtifactWriteError      an artifact cannot be stored: disk full, quota, size limit
    │   └── UntrustedArtifactError  loading would run code the server does not allow (pickle,
    │                               unknown types, a class outside STALWART_PYTHON_MODULES)
    ├── FlavorError                 a model cannot be saved, loaded or described by its flavor
    ├── RequestError                the client sent something we cannot serve (HTTP 4xx)
    │   ├── PayloadTooLarge         the body is over the configured limit
    │   ├── BodyTimeout             the body did not arrive within the configured time
    │   ├── UnknownEntity           an entity key has no features and no default
    │   ├── ValidationFailed        request values broke the model's schema (reject policy)
    │   ├── InvalidFeedback         a label item is malformed (``field`` names it: items[3].label)
    │   └── ModelInputError         the model refused this request's rows (it scores others)
    ├── NotFound                    a source or feature set the request names is not in the project
    ├── AuthError                   a control-plane call without a valid bearer token
    ├── NotReady                    the server or a model is still loading
    │   └── MemoryBudgetExceeded    a model version does not fit in STALWART_MODEL_MEMORY
    ├── FeatureError                a feature source or transform failed
    ├── CacheUnavailable            a shared cache tier (Redis) cannot be used; the cache falls
    │                               through to the next tier, so this never reaches a client
    ├── PredictionLogError          the prediction log cannot take or store a record
    │   └── SinkUnavailable         a sink (database, files, broker) failed; records spool
    ├── ModelError                  the model itself raised while predicting
    └── ResilienceError             a guard refused or gave up on a call
        ├── CallNotPermitted        the circuit breaker is open
        ├── BulkheadFull            too many calls in flight
        ├── CallTimeout             the call ran past its timeout or the request's deadline
        ├── Overloaded              load shedding turned the request away
        └── IllegalStateTransition  an operator asked a breaker for a transition it forbids
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactWriteError",
    "AuthError",
    "BodyTimeout",
    "BulkheadFull",
    "CacheUnavailable",
    "CallNotPermitted",
    "CallTimeout",
    "ConfigError",
    "DeploymentNotFound",
    "FeatureError",
    "FlavorError",
    "IllegalStateTransition",
    "InvalidFeedback",
    "MemoryBudgetExceeded",
    "MissingExtraError",
    "ModelError",
    "ModelInputError",
    "ModelNotFound",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PredictionLogError",
    "RegistryError",
    "RequestError",
    "ResilienceError",
    "RolloutConflict",
    "SchemaNotFound",
    "SchemaVersionError",
    "SinkUnavailable",
    "StalwartError",
    "StorageError",
    "UnknownEntity",
    "UntrustedArtifactError",
    "ValidationFailed",
    "VersionNotFound",
]


class StalwartError(Exception):
    """Root of every error Stalwart raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(StalwartError):
    """Settings or project definitions are invalid."""


class MissingExtraError(StalwartError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'stalwart[{extra}]'"
        )
        self.package = package
        self.extra = extra


class StorageError(StalwartError):
    """The database cannot be reached or used."""


class SchemaVersionError(StorageError):
    """The database schema is newer than this release understands."""


class RegistryError(StalwartError):
    """Base for registry lookups and artifact problems."""


class ModelNotFound(RegistryError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"model '{name}' is not registered; list models with 'stalwart models list'"
        )
        self.name = name


class VersionNotFound(RegistryError):
    def __init__(self, name: str, version: int | str) -> None:
        super().__init__(
            f"model '{name}' has no version {version}; "
            f"see its versions with 'stalwart models show {name}'"
        )
        self.name = name
        self.version = version


class DeploymentNotFound(RegistryError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"deployment '{name}' does not exist; the project file declares them (GET /v1/deployments lists a server's)"
        )
        self.name = name


class SchemaNotFound(RegistryError):
    """The model version has no input schema, or no revision of that number."""

    def __init__(self, ref: str, revision: int | None = None) -> None:
        if revision is None:
            message = (
                f"model {ref} has no input schema; infer one from training data with "
                f"'stalwart schema infer DATA -o schema.yaml' and attach it with "
                f"'stalwart schema attach {ref} schema.yaml'"
            )
        else:
            message = (
                f"model {ref} has no schema revision {revision}; list its revisions with "
                f"'stalwart schema list {ref}'"
            )
        super().__init__(message)
        self.ref = ref
        self.revision = revision


class ArtifactIntegrityError(RegistryError):
    """The artifact on disk is not the one that was registered."""


class ArtifactWriteError(RegistryError):
    """An artifact file cannot be written (no space, quota or file-size limit reached)."""


class UntrustedArtifactError(RegistryError):
    """Loading the artifact would execute code the user has not trusted."""


class FlavorError(StalwartError):
    """A model cannot be saved, loaded or described by the chosen flavor."""


class RequestError(StalwartError):
    """The client's request cannot be served as sent.

    ``field`` names the part of the request at fault (``inputs[0].shape``), so a client
    can point at it without parsing the message.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request body is over the limit of {limit} bytes; send fewer rows per request "
            f"or raise STALWART_MAX_BODY_BYTES",
            field="body",
        )
        self.limit = limit


class BodyTimeout(RequestError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"request body did not arrive within {seconds:g} s; send it at once, or raise "
            f"STALWART_BODY_TIMEOUT_SECONDS",
            field="body",
        )
        self.seconds = seconds


class UnknownEntity(RequestError):
    """An entity has no stored features and the feature declares no default."""


class ValidationFailed(RequestError):
    """Request values broke the model's schema under a ``reject`` policy.

    ``violations`` is the machine-readable list (row, feature, rule, value, expected).
    """

    def __init__(self, message: str, violations: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.violations = violations


class InvalidFeedback(RequestError):
    """A feedback (label) item cannot be stored as sent; ``field`` names the item and its
    field (``items[3].label``), so a client can fix that one and send the batch again."""


class NotFound(StalwartError):
    """A source or feature set named in the request's path is not in the project."""


class AuthError(StalwartError):
    """A control-plane call lacks a valid bearer token."""


class RolloutConflict(StalwartError):
    """A rollout or route change that the deployment's current state forbids (starting a
    second rollout, pausing one that is not running); the message says what state it is in
    and what would work (HTTP 409)."""


class NotReady(StalwartError):
    """The server or the model is not ready to serve yet; ``retry_after`` (seconds), when
    known, is how long a retry had best wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MemoryBudgetExceeded(NotReady):
    """Loading a model version would take the loaded versions past the memory budget
    (``STALWART_MODEL_MEMORY``), even after unloading every idle one. ``retry_after`` is
    None when the version is larger than the whole budget (no retry can help: raise the
    budget), else seconds after which versions busy now may have become idle."""


class FeatureError(StalwartError):
    """A feature source or a feature transform failed."""


class CacheUnavailable(StalwartError):
    """A shared cache tier cannot be reached or used.

    The feature cache catches it and serves from the next tier or the source; it is
    counted and logged, and never fails a request.
    """


class PredictionLogError(StalwartError):
    """The prediction log cannot take a record (in ``sync`` mode: the request fails rather
    than go unrecorded) or a sink is misconfigured."""


class SinkUnavailable(PredictionLogError):
    """A prediction sink failed to store a batch (its database is down, its disk full, its
    broker unreachable). The log keeps the batch in its spool and retries."""


class ModelError(StalwartError):
    """The model raised while predicting.

    ``message`` names the model and the exception's class, never its text: a model's
    message can hold anything (paths, values, secrets), so it travels as ``detail``, for
    the server log only.
    """

    def __init__(self, message: str, *, detail: str = "", error_type: str = "") -> None:
        super().__init__(message)
        self.detail = detail
        self.error_type = error_type  # the class name of what the model raised


class ModelInputError(RequestError):
    """The model raised on this request's rows while it scores other rows fine: the
    inputs, not the model, are at fault (HTTP 422). ``detail`` is the model's own message,
    for the server log only."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message, field="inputs")
        self.detail = detail


class ResilienceError(StalwartError):
    """A guard (breaker, bulkhead, timeout, shedder) refused or abandoned a call."""


class CallNotPermitted(ResilienceError):
    """The circuit breaker is open (or forced open) and refused the call.

    ``retry_after`` is how many seconds remain before the breaker lets trial calls through
    (None when it cannot tell, e.g. forced open or half-open with every trial taken).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BulkheadFull(ResilienceError):
    """The bulkhead's concurrent-call limit was reached and the wait, if any, ran out."""


class CallTimeout(ResilienceError):
    """The call ran past its timeout or past the request's deadline.

    ``by_deadline`` is True when the request's own deadline (not the guard's timeout) cut
    the call short; ``limit`` is the time budget in seconds the call had when it started.
    """

    def __init__(self, message: str, *, by_deadline: bool = False, limit: float | None = None) -> None:
        super().__init__(message)
        self.by_deadline = by_deadline
        self.limit = limit


class Overloaded(ResilienceError):
    """Load shedding turned the request away; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IllegalStateTransition(ResilienceError):
    """A manual circuit-breaker transition that the state machine forbids (e.g. CLOSED to
    HALF_OPEN, or METRICS_ONLY to OPEN)."""
