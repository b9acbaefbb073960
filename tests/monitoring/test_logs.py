"""Structured logs: one JSON line per request with the fields an operator searches by,
readable lines on a terminal, and credentials never written."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import structlog

from stalwart.config import Settings
from stalwart.monitoring.logs import configure_logging, get_logger
from stalwart.registry import Registry
from tests.models import Linear
from tests.servers import LiveServer, start_server


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _lines(stream: io.BytesIO | io.StringIO) -> list[str]:
    value = stream.getvalue()
    text = value.decode() if isinstance(value, bytes) else value
    return [line for line in text.splitlines() if line]


def _access_lines(stream: io.BytesIO, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access-log records of one request (written just after its response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in _lines(stream)]
        found = [r for r in records if r.get("event") == "request" and r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@pytest.fixture
def server(settings: Settings, registry: Registry) -> Iterator[LiveServer]:
    registry.register("lin", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
    with start_server(settings, registry) as live:
        yield live


def test_one_json_line_per_request_with_the_searchable_fields(server: LiveServer) -> None:
    """Every request writes exactly one JSON access-log line: timestamp, level, request_id,
    model, version, status and latency_ms (and the route, method and rows)."""
    stream = io.BytesIO()
    configure_logging("json", "info", stream=stream)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}]}
    assert server.post("/v2/models/lin/infer", json=body, headers={"X-Request-ID": "req-ok"}).status_code == 200
    assert server.post("/v2/models/lin/infer", json={"inputs": 1}, headers={"X-Request-ID": "req-bad"}).status_code == 400
    assert server.get("/nowhere", headers={"X-Request-ID": "req-404"}).status_code == 404

    (ok,) = _access_lines(stream, "req-ok")
    assert ok["level"] == "info"
    assert ok["timestamp"].endswith("Z")
    assert (ok["model"], ok["version"], ok["status"]) == ("lin", "1", 200)
    assert (ok["method"], ok["path"], ok["endpoint"], ok["rows"]) == ("POST", "/v2/models/lin/infer", "/v2/models/{model}/infer", 3)
    assert isinstance(ok["latency_ms"], float)
    assert ok["latency_ms"] >= 0
    (bad,) = _access_lines(stream, "req-bad")
    assert (bad["model"], bad["status"]) == ("lin", 400)
    (missing,) = _access_lines(stream, "req-404")
    assert (missing["model"], missing["version"], missing["status"]) == (None, None, 404)
    requests = [json.loads(line) for line in _lines(stream) if json.loads(line).get("event") == "request"]
    assert len(requests) == 3


def test_json_logs_to_a_text_stream(server: LiveServer) -> None:
    """A text stream (io.StringIO) gets the same JSON lines as a byte stream."""
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    server.get("/v2/health/live", headers={"X-Request-ID": "text-stream"})
    deadline = time.monotonic() + 5
    while "text-stream" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = [json.loads(x) for x in _lines(stream) if "text-stream" in x]
    assert (line["event"], line["status"]) == ("request", 200)


def test_reconfiguring_takes_effect(server: LiveServer) -> None:
    """Configuring logging again sends the next lines to the new stream (loggers used
    before are not stuck with the old configuration)."""
    first, second = io.BytesIO(), io.BytesIO()
    configure_logging("json", "info", stream=first)
    server.get("/v2/health/live", headers={"X-Request-ID": "to-first"})
    assert _access_lines(first, "to-first")
    configure_logging("json", "info", stream=second)
    server.get("/v2/health/live", headers={"X-Request-ID": "to-second"})
    assert _access_lines(second, "to-second")
    assert not _access_lines(first, "to-second", timeout=0.2)


def test_console_format_is_readable(server: LiveServer) -> None:
    """format=console writes one readable line per event (key=value), not JSON."""
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    server.get("/v2/health/live", headers={"X-Request-ID": "console-1"})
    deadline = time.monotonic() + 5
    while "console-1" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = [x for x in _lines(stream) if "console-1" in x]
    assert "request" in line
    assert "request_id=console-1" in line
    assert "status=200" in line
    assert "\x1b[" not in line  # no colour codes when not on a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_auto_format_is_json_in_a_pipe_and_readable_on_a_terminal() -> None:
    """format=auto picks JSON for a file or pipe and the console format on a real terminal."""
    pipe = io.BytesIO()
    configure_logging("auto", "info", stream=pipe)
    get_logger("t").info("hello", n=1)
    assert json.loads(_lines(pipe)[0])["event"] == "hello"

    main, replica = os.openpty()
    terminal = os.fdopen(replica, "w", buffering=1)
    try:
        configure_logging("auto", "info", stream=terminal)
        get_logger("t").info("hello", n=2)
        terminal.flush()
        written = os.read(main, 4096).decode()
    finally:
        terminal.close()
        os.close(main)
    assert "hello" in written
    assert "n" in written
    assert not written.lstrip().startswith("{")


def test_fields_given_at_configuration_are_on_every_line(server: LiveServer) -> None:
    """A worker's logs say which worker wrote them: ``fields`` are on every line, access
    lines (written by the direct writer) included; a line's own value wins."""
    stream = io.BytesIO()
    configure_logging("json", "info", stream=stream, fields={"worker": 3})
    get_logger("t").info("hello")
    get_logger("t").info("mine", worker=7)
    assert server.get("/v2/health/live", headers={"X-Request-ID": "req-w"}).status_code == 200
    (access,) = _access_lines(stream, "req-w")
    lines = [json.loads(line) for line in _lines(stream)]
    assert [(line["event"], line["worker"]) for line in lines if line["event"] != "request"] == [("hello", 3), ("mine", 7)]
    assert access["worker"] == 3


def test_level_filters_lines() -> None:
    """level=warning drops info lines."""
    stream = io.BytesIO()
    configure_logging("json", "warning", stream=stream)
    get_logger("t").info("quiet")
    get_logger("t").warning("loud")
    assert [json.loads(line)["event"] for line in _lines(stream)] == ["loud"]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_credentials_are_redacted(fmt: str) -> None:
    """A value logged under a credential-like key (token, password, db_url, ...) never
    reaches the log, in either format; where a secret is kept (a *_file path) still shows."""
    stream = io.StringIO()
    configure_logging(fmt, "info", stream=stream)  # type: ignore[arg-type]
    secrets = {
        "token": "tok-123",
        "admin_token": "adm-456",
        "password": "pw-789",
        "db_url": "postgresql://app:hunter2@db/x",
        "redis_url": "redis://:hunter3@cache",
        "Authorization": "Bearer abc-999",
        "api_key": "key-000",
    }
    get_logger("t").info("connecting", admin_token_file="/srv/stalwart/admin_token", **secrets)
    text = stream.getvalue()
    for value in secrets.values():
        assert value not in text
    assert "hunter" not in text
    assert text.count("[redacted]") == len(secrets)
    assert "/srv/stalwart/admin_token" in text
