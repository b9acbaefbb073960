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
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from stalwart.errors import ConfigError

__all__ = ["Settings", "load_settings"]

_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name, not a secret


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
    max_connections: int = Field(
        default=2048, ge=1, description="open connections (and requests in flight) beyond which requests get 503"
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
    batching: bool = Field(default=True, description="batch concurrent requests per model version")
    max_batch_size: int = Field(default=64, ge=1, le=1_000_000, description="rows per batched model call")
    max_batch_wait_ms: float = Field(
        default=2.0, ge=0, le=10_000, description="longest a request waits for batch mates"
    )
    batch_adaptive: bool = Field(
        default=True, description="send a batch as soon as no more requests are arriving"
    )

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
        path = self.home.resolve() / _TOKEN_FILE
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write a private temp file, then link it into place: link fails if another process
        # or thread got there first, and then its token (complete, never half-written) is the
        # token. The temp name is unique per call (mkstemp, mode 0600), not per process, so
        # two threads never write or remove each other's file.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{_TOKEN_FILE}.", suffix=".tmp", dir=path.parent)
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

    def admin_token_file(self) -> Path:
        return self.home.resolve() / _TOKEN_FILE


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
