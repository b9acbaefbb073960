"""`stalwart log query|tail`: the prediction log from a terminal, filtered, as a table or
JSON lines; `tail --follow` prints records as they arrive and stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.durations import NS
from stalwart.monitoring.records import Chain, PredictionRecord, decode_record, encode_record
from stalwart.monitoring.sinks.sql import SqlSink
from tests.cli.test_cli import STALWART, _env
from tests.monitoring.records_factory import full_record
from tests.servers import free_port


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # the commands log to the runner's stderr, closed after each


def _store(settings: Settings, records: list[PredictionRecord]) -> None:
    sink = SqlSink.from_settings(settings)
    try:
        sink.write(records, [encode_record(r) for r in records])
    finally:
        sink.close()


@pytest.fixture
def log_env(any_db_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI's environment pointing at the test's database (SQLite, then PostgreSQL)."""
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(any_db_settings.home))
    if any_db_settings.db_url is not None:
        monkeypatch.setenv("STALWART_DB_URL", any_db_settings.db_url.get_secret_value())
    return any_db_settings


def _records(now: int) -> list[PredictionRecord]:
    chain = Chain("replica-a")
    return [
        chain.link(full_record(0, time_ns=now - 3_600 * NS)),
        chain.link(full_record(1, time_ns=now - 600 * NS, status=422, error="ValidationFailed")),
        chain.link(full_record(2, time_ns=now - 60 * NS, deployment="churn", model="churn-lr", version=7, degraded="fallback_model", degraded_reason="timeout")),
        chain.link(full_record(3, time_ns=now - 1 * NS, status=503, error="Overloaded")),
    ]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner(env={"COLUMNS": "220"}).invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_query_prints_a_table_newest_first(log_env: Settings) -> None:
    """The default output is a table: time, id, deployment, model:version, status, latency."""
    _store(log_env, _records(time.time_ns()))
    code, out, _ = _invoke("log", "query")
    assert code == 0, out
    lines = [line for line in out.splitlines() if "req-" in line]
    assert [line.split("│")[2].strip() for line in lines] == ["req-000003", "req-000002", "req-000001", "req-000000"]
    assert "churn-lr:7" in lines[1]
    assert "fallback_model" in lines[1]
    assert "ValidationFailed" in lines[2]
    assert "fraud-gbm:3" in lines[0]


def test_query_filters_and_json_lines(log_env: Settings) -> None:
    """Each filter narrows the result; --json prints the stored records, one JSON a line."""
    records = _records(time.time_ns())
    _store(log_env, records)

    def ids(*args: str) -> list[str]:
        code, out, err = _invoke("log", "query", "--json", *args)
        assert code == 0, (out, err)
        return [json.loads(line)["request_id"][-1] for line in out.splitlines()]

    assert ids() == ["3", "2", "1", "0"]
    assert ids("--errors") == ["3", "1"]
    assert ids("--status", "422") == ["1"]
    assert ids("--degraded") == ["2"]
    assert ids("--no-degraded", "--limit", "2") == ["3", "1"]
    assert ids("--deployment", "churn") == ["2"]
    assert ids("--model", "churn-lr", "--version", "7") == ["2"]
    assert ids("--since", "30m") == ["3", "2", "1"]
    assert ids("--since", "30m", "--until", "5m") == ["1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(records[1].time_ns // NS))
    assert ids("--since", iso, "--until", "30s") == ["2", "1"]
    code, out, _ = _invoke("log", "query", "--json", "--limit", "1")
    assert code == 0
    assert decode_record(out.strip()) == records[3]


def test_tail_prints_the_newest_oldest_first(log_env: Settings) -> None:
    """tail -n N: the N newest records, in the order they happened, one line each."""
    _store(log_env, _records(time.time_ns()))
    code, out, _ = _invoke("log", "tail", "-n", "2")
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 2
    assert "req-000002" in lines[0]
    assert "degraded: fallback_model" in lines[0]
    assert "req-000003" in lines[1]
    assert "503" in lines[1]
    assert "Overloaded" in lines[1]
    code, out, _ = _invoke("log", "tail", "--json", "--errors")
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["req-000001", "req-000003"]


def test_clear_errors_when_the_log_cannot_be_read(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log off, a bad --since, and an unreachable database are one-line errors that say
    what to do, and never print the database's URL."""
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(home))
    monkeypatch.setenv("STALWART_PREDICTION_LOG", "off")
    code, _, err = _invoke("log", "query")
    assert code == 1
    assert "the prediction log is off" in err
    monkeypatch.setenv("STALWART_PREDICTION_LOG", "auto")
    code, _, err = _invoke("log", "query", "--since", "yesterday")
    assert code == 2
    assert "neither a duration nor an ISO time" in err
    port = free_port()
    monkeypatch.setenv("STALWART_DB_URL", f"postgresql://who:s3cret@127.0.0.1:{port}/db?connect_timeout=2")
    code, out, err = _invoke("log", "tail", "--json")
    assert code == 1
    assert out == ""  # the failure's log line goes to stderr, with the password hidden
    assert "s3cret" not in err
    message = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "cannot query the prediction log's database" in message
    assert str(port) not in message


def test_tail_follow_prints_new_records_until_ctrl_c(home: Path) -> None:
    """`stalwart log tail --follow` prints the newest, then each record stored later (also
    one that arrived earlier but was stored late), once; SIGINT ends it with status 0."""
    settings = Settings(home=home)
    now = time.time_ns()
    _store(settings, [full_record(i, time_ns=now - (10 - i) * NS) for i in range(3)])
    proc = subprocess.Popen(
        [str(STALWART), "log", "tail", "-n", "1", "--follow", "--json"],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["request_id"] == "req-000002"
        time.sleep(1.0)
        late = [full_record(10, time_ns=time.time_ns()), full_record(11, time_ns=now - 5 * NS)]  # 11: slow, stored late
        _store(settings, late)
        got = {json.loads(proc.stdout.readline())["request_id"] for _ in late}
        assert got == {"req-000010", "req-000011"}
        _store(settings, [full_record(12, time_ns=time.time_ns())])
        assert json.loads(proc.stdout.readline())["request_id"] == "req-000012"
        time.sleep(1.2)  # two more polls: nothing printed twice
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert rest == ""
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
