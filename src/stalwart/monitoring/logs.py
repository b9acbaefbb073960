"""Structured logs: one JSON object per line, or a readable line when on a terminal.

``configure_logging`` is called by the server and the CLI, never at import, so embedding
Stalwart in an application leaves that application's logging alone. A redaction step
drops the value of any key that looks like a credential, as a last line of defence: no
code path is meant to log one in the first place.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import io
import logging
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import msgspec
import structlog

__all__ = ["configure_logging", "get_logger", "log_request"]

_SECRET_KEY = re.compile(r"token|password|passwd|secret|authorization|api_key|db_url|redis_url", re.I)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def log_request(fields: dict[str, Any]) -> None:
    """Write one request's access line: the busiest log of a server, so in JSON mode it is
    encoded and written directly (same fields, order and redaction as every other line,
    about a fifth of the cost of the general processor chain)."""
    _access_writer(fields)


def _structlog_access(fields: dict[str, Any]) -> None:
    get_logger("stalwart.access").info("request", **fields)


_access_writer: Any = _structlog_access


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``logger=name``."""
    return structlog.get_logger(name)


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
    stream: Any = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Send structured logs to ``stream`` (stdout by default) as JSON or console lines.
    ``fields`` are on every line (a worker process's ``worker``: which one wrote it)."""
    global _access_writer
    extra = dict(fields or {})
    if _flush_access is not None:
        _flush_access()  # the previous configuration's access lines, to its stream
    out: Any = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    _access_writer = _structlog_access
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        factory: Any = structlog.PrintLoggerFactory(out)
    else:
        encoder = msgspec.json.Encoder(enc_hook=str)
        binary: Any = getattr(out, "buffer", None)
        text_only = binary is None and isinstance(out, io.TextIOBase)
        if text_only:
            # A text stream without a byte buffer underneath (io.StringIO): write str lines.
            renderer = structlog.processors.JSONRenderer(
                serializer=lambda obj, **_: encoder.encode(obj).decode()
            )
            factory = structlog.PrintLoggerFactory(out)
        else:
            renderer = structlog.processors.JSONRenderer(serializer=lambda obj, **_: encoder.encode(obj))
            target = binary if binary is not None else out
            factory = structlog.BytesLoggerFactory(target)
            if _LEVELS[level] <= logging.INFO:
                _access_writer = _direct_access(target, encoder, extra)
    structlog.configure(
        processors=[
            *([_with_fields(extra)] if extra else []),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        # Not cached: module-level loggers would keep the first configuration forever, so a
        # second call (an embedding application, a test) would silently not take effect.
        # Assembling the logger per call costs about 1.5 us.
        cache_logger_on_first_use=False,
    )


# Keys come from code, so there are few of them: remember the verdict for each rather
# than running the pattern over every key of every line (it was a third of an access line).
_secret_keys: dict[str, bool] = {}
_MAX_REMEMBERED_KEYS = 4096


def _with_fields(fields: dict[str, Any]) -> Any:
    """A processor putting ``fields`` on every line (the line's own keys win)."""

    def add(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


# Access lines are gathered and written together, at most this long after their request:
# one write (a system call, microseconds in a sandboxed kernel) per line was as much as the
# rest of the line. Other lines are written at once, so an access line may follow a later
# one by up to this much; a crash loses at most this much of the access log (the prediction
# log is the durable record of requests).
ACCESS_FLUSH_SECONDS = 0.05
_ACCESS_BUFFER_BYTES = 64 * 1024


def _direct_access(target: Any, encoder: msgspec.json.Encoder, extra: dict[str, Any]) -> Any:
    write = target.write
    flush = getattr(target, "flush", None)
    pending = bytearray()
    timer: list[asyncio.TimerHandle | None] = [None]
    lock = threading.Lock()  # servers on several threads' loops (tests, embedding) share it

    def flush_now() -> None:
        with lock:
            timer[0] = None
            if not pending:
                return
            data = bytes(pending)
            pending.clear()
        write(data)
        if flush is not None:
            flush()

    def access(fields: dict[str, Any]) -> None:
        line = {
            "event": "request",
            "logger": "stalwart.access",
            "level": "info",
            "timestamp": dt.datetime.now(tz=dt.UTC).isoformat().replace("+00:00", "Z"),
            **extra,
            **fields,
        }
        _redact_secrets(None, "info", line)
        encoded = encoder.encode(line)
        with lock:
            pending.extend(encoded)
            pending.extend(b"\n")
            full = len(pending) >= _ACCESS_BUFFER_BYTES
            schedule = not full and timer[0] is None
            if schedule:
                try:
                    timer[0] = asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, flush_now)
                except RuntimeError:  # not on a loop (a direct call): nothing would flush later
                    full = True
        if full:
            flush_now()

    global _flush_access
    _flush_access = flush_now
    return access


_flush_access: Any = None


@atexit.register
def _flush_at_exit() -> None:
    """What a stopping process gathered of its access log is written too."""
    if _flush_access is not None:
        _flush_access()


def _redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    known = _secret_keys
    for key in event:
        secret = known.get(key)
        if secret is None:
            # Where a secret is kept (admin_token_file) is not the secret: operators need it.
            secret = _SECRET_KEY.search(key) is not None and not key.endswith(("_file", "_path"))
            if len(known) < _MAX_REMEMBERED_KEYS:
                known[key] = secret
        if secret:
            event[key] = "[redacted]"
    return event
