"""Settings, read once from ``STALWART_*`` environment variables.

The defaults need nothing installed: SQLite and artifacts under ``./.stalwart``, the
in-process cache only, a generated admin token kept in a private file.

>>> settings = Settings(home="/tmp/demo")
>>> settings.resolved_db_url()
'sqlite:////tmp/demo/registry.db'
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stalwart.errors import ConfigError
from stalwart.sizes import parse_bytes

__all__ = ["ModelLimits", "Settings", "is_module_path", "load_settings", "private_dir"]

_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name, not a secret
_PREDICTION_KEY_FILE = "prediction_log_key"


def _default_model_threads() -> int:
    return min(8, (os.cpu_count() or 1) + 2)


class ModelLimits(BaseModel):
    """One model's own thread and concurrency limits (``STALWART_MODEL_LIMITS``); a field
    left out takes the server-wide setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int | None = Field(default=None, ge=1, le=256, description="threads of each of its versions' model executor")
    omp_threads: int | None = Field(default=None, ge=1, le=256, description="OpenMP threads per model thread")
    max_calls: int | None = Field(default=None, ge=1, le=1_000_000, description="calls one version may have in flight")


class Settings(BaseSettings):
    """Process-wide configuration; every field is ``STALWART_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="STALWART_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".stalwart"), description="registry, artifacts, token")
    db_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; PostgreSQL when replicas share state"
    )
    redis_url: SecretStr | None = Field(default=None, description="Redis for the shared cache tier")
    cache_namespace: str = Field(
        default="stalwart", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="prefix of every cache key"
    )
    cache_max_entries: int = Field(default=100_000, ge=1, description="in-process cache entries")
    cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="in-process cache bytes")
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token for control-plane calls; generated if unset"
    )
    project: Path | None = Field(default=None, description="Python file with feature definitions")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="port of the Open Inference Protocol's gRPC service (the grpc extra); unset: no gRPC",
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_entities: int = Field(default=10_000, ge=1, description="entities in one /v1 predict request")
    # Connections: a socket costs a file descriptor however little it sends, so none is kept
    # open on a client's terms.
    keep_alive_seconds: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed after this")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request's headers must arrive within this of its first byte"
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a request's whole body must arrive within this of its headers (else 408)"
    )
    server: Literal["uvicorn", "granian"] = Field(
        default="uvicorn", description="the HTTP server under the app: uvicorn (httptools) or granian (the granian extra)"
    )
    max_connections: int = Field(
        default=2048, ge=1, description="open connections (and requests in flight) beyond which requests get 503"
    )
    workers: int = Field(
        default=1, ge=1, le=256,
        description="server processes sharing the port (SO_REUSEPORT) under one supervisor; 1: the server is this process",
    )
    graceful_shutdown_seconds: float = Field(
        default=10.0, gt=0, description="on SIGTERM, requests in flight get this long to finish; then they are cancelled"
    )
    drain_seconds: float = Field(
        default=0.0, ge=0, le=600,
        description=(
            "on SIGTERM, readiness answers 503 and responses close their connections for this long before the "
            "server stops accepting, so a load balancer stops sending first (0: stop accepting at once)"
        ),
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    registry_poll_seconds: float = Field(default=2.0, gt=0)
    preload: bool = Field(default=True, description="load the latest version of every model at start")
    model_timeout_seconds: float = Field(
        default=10.0, gt=0,
        description="time limit of a /v2 model call (504 past it); a request's X-Request-Timeout can shorten it",
    )
    model_timeouts: dict[str, float] = Field(
        default_factory=dict,
        description='per-model /v2 time limits in seconds, as JSON: {"big-model": 30}',
    )
    gc_freeze: bool = Field(
        default=True, description="keep objects loaded at start out of the garbage collector's scans"
    )
    # Resources (stalwart.serving.residency): memory, threads and calls per model version.
    model_memory: int | None = Field(
        default=None,
        description=(
            "memory the loaded model versions may use together, bytes or 2GiB-style; past it the least "
            "recently used idle version is unloaded (unset: no limit)"
        ),
    )
    model_threads: int = Field(
        default_factory=_default_model_threads, ge=1, le=256,
        description="threads of each loaded version's model executor (default: cores + 2, at most 8)",
    )
    model_omp_threads: int = Field(default=1, ge=1, le=256, description="OpenMP threads per model thread")
    model_max_calls: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="calls one model version may have in flight (queued for or in its model call); more get 503 (unset: no limit)",
    )
    model_limits: dict[str, ModelLimits] = Field(
        default_factory=dict,
        description='per-model threads, omp_threads and max_calls, as JSON: {"big-model": {"threads": 2, "max_calls": 32}}',
    )
    batching: bool = Field(default=True, description="batch concurrent requests per model version")
    max_batch_size: int = Field(default=64, ge=1, le=1_000_000, description="rows per batched model call")
    max_batch_wait_ms: float = Field(
        default=2.0, ge=0, le=10_000, description="longest a request waits for batch mates"
    )
    batch_adaptive: bool = Field(
        default=True, description="send a batch as soon as no more requests are arriving"
    )
    python_modules: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "comma-separated module prefixes a python-flavor artifact's class may come from; "
            "unset: the top-level package of the project file"
        ),
    )
    # The prediction log (stalwart.monitoring.prediction_log): one record per request.
    prediction_log: Literal["auto", "sql", "parquet", "nats", "off"] = Field(
        default="auto",
        description="where records go: auto and sql = the registry's database (SQLite or PostgreSQL)",
    )
    prediction_log_mode: Literal["async", "sync"] = Field(
        default="async",
        description="async: on disk within prediction_log_flush_ms of the answer; sync: before it",
    )
    prediction_log_flush_ms: float = Field(default=50.0, gt=0, le=10_000, description="longest a record waits for the spool")
    prediction_log_queue: int = Field(default=100_000, ge=1, description="records held in memory before new ones are dropped (counted)")
    prediction_log_inputs: Literal["all", "hash", "none"] = Field(
        default="all", description="what a record keeps of a request's inputs"
    )
    prediction_log_sample: float = Field(
        default=1.0, ge=0, le=1, description="share of answered (2xx) requests recorded; every other status is"
    )
    prediction_log_redact: dict[str, Literal["drop", "hash"]] = Field(
        default_factory=dict, description='sensitive fields, as JSON: {"email": "drop", "card_id": "hash"}'
    )
    prediction_log_retention_days: float | None = Field(default=30.0, gt=0, description="records older are deleted")
    prediction_log_dir: Path | None = Field(default=None, description="Parquet segments; default <home>/predictions")
    prediction_log_segment_mb: int = Field(default=16, ge=1, description="a Parquet segment is closed at this size (or the hour)")
    prediction_log_key: SecretStr | None = Field(
        default=None, description="HMAC key for hashed fields; generated into <home> if unset"
    )
    # Live profiles (stalwart.monitoring.live_profiles): per-minute sketches of what is served.
    live_profiles: Literal["on", "off"] = Field(
        default="on", description="profile answered requests per minute into the registry's database"
    )
    live_profiles_flush_seconds: float = Field(
        default=1.0, gt=0, le=60, description="how often queued requests are profiled and closed minutes written"
    )
    live_profiles_queue: int = Field(default=100_000, ge=1, description="requests held for profiling before new ones are dropped (counted)")
    live_profiles_minute_retention_hours: float | None = Field(default=48.0, gt=0, description="minute buckets older are deleted")
    live_profiles_hour_retention_days: float | None = Field(default=30.0, gt=0, description="hour buckets older are deleted")
    live_profiles_day_retention_days: float | None = Field(default=None, gt=0, description="day buckets older are deleted (unset: kept)")
    # Shadows (stalwart.serving.shadows): shadow answers paired with the clients', per minute.
    shadow_flush_seconds: float = Field(
        default=10.0, gt=0, le=300, description="how often paired shadow answers are written to the registry's database"
    )
    nats_url: str | None = Field(default=None, description="NATS server for the nats sink, e.g. nats://127.0.0.1:4222")
    nats_subject: str = Field(default="stalwart.predictions", description="subject (and stream STALWART_PREDICTIONS) of records")
    otel_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint; tracing is off without one")
    otel_service_name: str = Field(default="stalwart", description="service.name of exported spans")
    admin_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description='named control-plane tokens, as JSON: {"alice": "..."}; the audit log names who acted'
    )
    # Rollouts (stalwart.rollout): run-time routes and the canary controller.
    routes_poll_seconds: float = Field(
        default=0.5, gt=0, le=60, description="how often each replica reads the deployments' routes (a change is served within this)"
    )
    rollout_controller: bool = Field(
        default=True, description="run the canary rollout controller (one replica at a time leads it, by a database lock)"
    )
    rollout_lag_seconds: float = Field(
        default=15.0, ge=0, le=600,
        description="the controller judges records older than this: a slow request is logged late, and must not be missed",
    )
    # Alerts (stalwart.monitoring.alerts): evaluated when the project declares any.
    alert_interval_seconds: float = Field(default=60.0, gt=0, le=86_400, description="how often alert rules are evaluated")
    alert_webhooks: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), description="comma-separated http(s) URLs that receive Alertmanager-style alert posts"
    )
    alert_cooldown_seconds: float = Field(
        default=4 * 3600.0, ge=0, description="a firing alert already sent is sent again after this (a reminder)"
    )
    alert_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="time limit of one webhook post")
    # The web console (stalwart.serving.console) at /ui.
    ui: bool = Field(default=True, description="serve the web console at /ui (and keep its live per-deployment numbers)")
    ui_require_token: bool = Field(
        default=False,
        description="every console page needs a login with an admin token (default: only pages with request data and actions do)",
    )
    ui_session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="a console login lasts this long")
    ui_secure_cookie: bool = Field(
        default=True,
        description="mark the console's session cookie Secure (sent over HTTPS and to loopback only); false for plain HTTP elsewhere",
    )
    allow_pickle: bool = Field(
        default=True,
        description="load versions registered with trust_pickle=True; false refuses them",
    )
    # Labels (POST /v1/feedback, stalwart.monitoring.feedback).
    feedback_max_items: int = Field(default=10_000, ge=1, le=1_000_000, description="labels in one POST /v1/feedback batch")
    feedback_match_seconds: float = Field(
        default=300.0, gt=0, le=86_400 * 30,
        description="a label given by entity and time matches that entity's prediction nearest in time, at most this far",
    )

    @field_validator("python_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for name in value:
                if not isinstance(name, str) or not is_module_path(name):
                    raise ValueError(f"{name!r} is not a module name (like 'mypkg' or 'mypkg.models')")
        return value

    @field_validator("model_memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: object) -> object:
        if value is None or value == "":
            return None
        try:
            return parse_bytes(value, "size")
        except ConfigError as exc:
            raise ValueError(exc.message.removeprefix("size: ")) from None

    @field_validator("workers")
    @classmethod
    def _workers_need_uvicorn(cls, value: int, info: ValidationInfo) -> int:
        # Workers share one port through SO_REUSEPORT sockets that we bind and hand to
        # uvicorn; granian has worker processes of its own, which would not share our
        # supervisor, metrics directory or spool rules.
        if value > 1 and info.data.get("server", "uvicorn") != "uvicorn":
            raise ValueError("more than one worker needs STALWART_SERVER=uvicorn (granian serves in one process here)")
        return value

    def limits_for(self, model: str) -> ModelLimits:
        """The thread and call limits in effect for ``model``'s versions: its own
        ``STALWART_MODEL_LIMITS`` entry, the server-wide settings for what it leaves out."""
        own = self.model_limits.get(model)
        return ModelLimits(
            threads=own.threads if own is not None and own.threads is not None else self.model_threads,
            omp_threads=own.omp_threads if own is not None and own.omp_threads is not None else self.model_omp_threads,
            max_calls=own.max_calls if own is not None and own.max_calls is not None else self.model_max_calls,
        )

    @field_validator("alert_webhooks", mode="before")
    @classmethod
    def _split_webhooks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for i, url in enumerate(value):
                text = url.get_secret_value() if isinstance(url, SecretStr) else url
                # Never quote the URL back: it may hold a token.
                if not isinstance(text, str) or not text.startswith(("http://", "https://")):
                    raise ValueError(f"entry {i + 1} is not an http(s) URL; separate URLs with commas")
        return value

    def allowed_python_modules(self) -> tuple[str, ...]:
        """The module prefixes python-flavor classes may be imported from.

        ``python_modules`` when set; otherwise the project's own package: the outermost
        package (a chain of directories with ``__init__.py``) that holds the project file,
        e.g. ``examples`` for ``examples/fraud/project.py``. Without a project file, or one
        outside any package, nothing is allowed until ``STALWART_PYTHON_MODULES`` is set.
        """
        if self.python_modules:
            return self.python_modules
        if self.project is None:
            return ()
        package: str | None = None
        directory = self.project.resolve().parent
        while (directory / "__init__.py").is_file() and directory.name.isidentifier():
            package = directory.name
            directory = directory.parent
        return (package,) if package is not None else ()

    def resolved_db_url(self) -> str:
        """The database URL, defaulting to SQLite inside ``home``."""
        if self.db_url is not None:
            return self.db_url.get_secret_value()
        return f"sqlite:///{self.home.resolve() / 'registry.db'}"

    def artifact_root(self) -> Path:
        return self.home.resolve() / "artifacts"

    def resolved_admin_token(self) -> str:
        """The admin token: the configured one, else one generated once into ``home``.

        The generated token lives in a file readable by its owner only, so the CLI on the
        same machine can use it without the token ever being printed or logged.
        """
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        return _generated_secret(self.home.resolve() / _TOKEN_FILE)

    def resolved_prediction_log_key(self) -> bytes:
        """The key of hashed prediction-log fields: the configured one, else one generated
        once into ``home`` (0600), so hashes stay comparable across restarts."""
        if self.prediction_log_key is not None:
            return self.prediction_log_key.get_secret_value().encode()
        return _generated_secret(self.home.resolve() / _PREDICTION_KEY_FILE).encode()

    def admin_token_file(self) -> Path:
        return self.home.resolve() / _TOKEN_FILE


def _generated_secret(path: Path) -> str:
    """A random secret kept in ``path`` (0600), created by whichever caller comes first."""
    if path.exists():
        return path.read_text().strip()
    private_dir(path.parent)
    # Write a private temp file, then link it into place: link fails if another process
    # or thread got there first, and then its secret (complete, never half-written) is the
    # secret. The temp name is unique per call (mkstemp, mode 0600), not per process, so
    # two threads never write or remove each other's file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.write(fd, secrets.token_urlsafe(32).encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def is_module_path(name: str) -> bool:
    """Whether ``name`` is a dotted module path (``pkg`` or ``pkg.sub``), nothing else."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents readable by their owner only (0700).

    Directories that already exist keep their mode: one the user made (or shares) is
    theirs to decide. The files Stalwart writes in them are 0600 either way.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process created it first; its mode is its creator's
        # mkdir's mode is filtered by the umask; set it exactly so that no umask can matter.
        os.chmod(directory, stat.S_IRWXU)
    return path


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides winning.

    Raises :class:`ConfigError` naming each bad variable instead of pydantic's traceback.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"STALWART_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
