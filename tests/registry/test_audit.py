"""The audit log: who did what, in a hash chain that shows any hand edit (on SQLite and on
PostgreSQL), `stalwart audit log|verify`, and the settings recorded without secrets."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record
from stalwart.monitoring.sinks import open_sink
from stalwart.registry import Registry
from stalwart.registry.audit import (
    CONFIG_ACTION,
    check_audit,
    process_actor,
    record_settings,
    settings_view,
    verify_audit,
)
from stalwart.storage import Database

runner = CliRunner()


def _sql(registry: Registry, *statements: str) -> None:
    """Statements run as someone with database access would: plain SQL, one transaction."""
    with registry.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


@pytest.fixture
def cli_settings(any_db_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The environment `stalwart` reads points at the test's database, prediction log off."""
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(any_db_settings.home))
    monkeypatch.setenv("STALWART_PREDICTION_LOG", "off")
    if any_db_settings.db_url is not None:
        monkeypatch.setenv("STALWART_DB_URL", any_db_settings.db_url.get_secret_value())
    return any_db_settings


@pytest.fixture
def logged(cli_settings: Settings) -> Iterator[Registry]:
    """A registry with six events in its log (ids 1-6)."""
    registry = Registry.open(cli_settings)
    for n in range(6):
        registry.audit("alice" if n % 2 else "bob", "rollout.weight", f"fraud-{n}", {"canary": n / 10})
    yield registry
    registry.db.dispose()


def test_registration_and_schema_changes_name_who_made_them(any_registry: Registry, cancer: dict[str, Any]) -> None:
    """A script's registration (and the schema inferred with it) is by user@host of the
    process; attach and activate record the actor given, else user@host too."""
    import pandas as pd
    from sklearn.dummy import DummyClassifier

    frame = pd.DataFrame(cancer["x_train"][:, :3], columns=["a", "b", "c"])
    model = DummyClassifier().fit(frame, cancer["y_train"])
    mv = any_registry.register("cancer", model, sample=frame)
    schema = any_registry.schemas.active("cancer", mv.version)
    assert schema is not None
    any_registry.schemas.attach("cancer", mv.version, schema.schema, note="same", actor="alice")
    any_registry.schemas.activate("cancer", mv.version, 1)
    me = process_actor()
    assert me.endswith(f"@{os.uname().nodename}")
    got = [(e["actor"], e["action"]) for e in reversed(any_registry.events("cancer"))]
    assert got == [(me, "register"), (me, "schema.infer"), ("alice", "schema.attach"), (me, "schema.activate")]
    assert verify_audit(any_registry.db) is None


def test_numbers_in_details_are_kept_exactly_and_the_chain_verifies(any_registry: Registry) -> None:
    """registry.audit (the call rollout decisions will use) keeps floats bit for bit, so
    the hash computed at write time matches the one recomputed from what is read back."""
    detail = {"weight": 0.1, "third": 1 / 3, "tiny": 5e-324, "huge": 1.7976931348623157e308, "n": 2**53 + 1, "neg": -0.0, "list": [1.5, 2]}
    event = any_registry.audit("alice", "rollout.weight", "fraud", detail)
    (stored,) = any_registry.events("fraud")
    assert stored["detail"] == detail
    assert stored["hash"] == event.hash
    assert [float(stored["detail"]["third"]).hex()] == [(1 / 3).hex()]
    assert check_audit(any_registry.db).events == 1
    assert verify_audit(any_registry.db) is None


def test_log_filters_and_json(logged: Registry) -> None:
    """`audit log` lists newest first, filtered by action, subject, actor and time; --json
    gives the events with their hashes."""
    result = runner.invoke(app, ["audit", "log", "--actor", "alice", "--json"])
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert [e["id"] for e in events] == [6, 4, 2]
    assert all(len(e["hash"]) == 64 for e in events)
    assert events[0]["detail"] == {"canary": 0.5}
    result = runner.invoke(app, ["audit", "log", "--subject", "fraud-3", "--since", "1h", "--json"])
    assert [e["id"] for e in json.loads(result.stdout)] == [4]
    result = runner.invoke(app, ["audit", "log", "--since", "2999-01-01", "--action", "rollout.weight"])
    assert result.exit_code == 0
    assert "no audit events match" in result.stdout
    result = runner.invoke(app, ["audit", "log", "--since", "last tuesday"])
    assert result.exit_code == 1
    assert "--since 'last tuesday'" in result.output


def test_verify_passes_on_an_intact_log(logged: Registry) -> None:
    """Exit 0 with a summary: the audit log's events and head; the prediction log off."""
    result = runner.invoke(app, ["audit", "verify"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    head = check_audit(logged.db).head
    assert head is not None
    assert "audit log" in result.stdout
    assert "intact" in result.stdout
    assert head in result.stdout
    assert "prediction log (off)" in result.stdout
    assert "not recorded" in result.stdout


SWAP = ("UPDATE audit_events SET id = -1 WHERE id = 3", "UPDATE audit_events SET id = 3 WHERE id = 4", "UPDATE audit_events SET id = 4 WHERE id = -1")

TAMPERING: list[tuple[str, tuple[str, ...], int, str, str]] = [
    ("edited detail", ("UPDATE audit_events SET detail = '{\"canary\": 0.9}' WHERE id = 3",), 3, "changed", "its content no longer matches its hash (rollout.weight fraud-2 by bob)"),
    ("edited actor", ("UPDATE audit_events SET actor = 'mallory' WHERE id = 5",), 5, "changed", "by mallory"),
    ("removed row", ("DELETE FROM audit_events WHERE id = 3",), 4, "removed", "the event before it, after event 2, is missing"),
    ("removed first row", ("DELETE FROM audit_events WHERE id = 1",), 2, "removed", "after the start of the log, is missing"),
    ("removed newest row", ("DELETE FROM audit_events WHERE id = 6",), 6, "removed", "it was the newest event, and it is gone"),
    ("swapped ids", SWAP, 3, "reordered", "it holds the event written as 4"),
    ("row added by hand", ("INSERT INTO audit_events (id, at, actor, action, subject, detail) VALUES (7, 0, 'x', 'y', 'z', '{}')",), 7, "changed", "it has no hash"),
]


@pytest.mark.parametrize(("statements", "event_id", "problem", "fragment"), [pytest.param(*case[1:], id=case[0]) for case in TAMPERING])
def test_verify_names_the_first_tampered_event(logged: Registry, statements: tuple[str, ...], event_id: int, problem: str, fragment: str) -> None:
    """An UPDATE, a DELETE or a swap made with SQL is found: exit 1, naming the event and
    what happened to it."""
    _sql(logged, *statements)
    broken = verify_audit(logged.db)
    assert broken is not None
    assert (broken.event_id, broken.problem) == (event_id, problem), broken
    assert fragment in broken.message
    result = runner.invoke(app, ["audit", "verify"], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    assert f"audit event {event_id} {problem}" in result.stderr.replace("\n", " ")


def test_an_append_after_tampering_does_not_hide_it(logged: Registry) -> None:
    """New events link to the head the log recorded, not to whatever row is last now: the
    newest event removed stays visible after more are appended."""
    _sql(logged, "DELETE FROM audit_events WHERE id = 6")
    logged.audit("alice", "rollout.weight", "fraud", {"canary": 1.0})
    broken = verify_audit(logged.db)
    assert broken is not None
    assert broken.problem == "removed"


def test_migration_4_chains_the_events_already_there(any_db_settings: Settings) -> None:
    """A database from before chaining (schema version 2, events without hashes) gets the
    columns and a chain over its old events, which then verifies; new events extend it."""
    db = Database(any_db_settings.resolved_db_url())
    try:
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events DROP COLUMN hash"))
            conn.execute(text("ALTER TABLE audit_events DROP COLUMN prev_hash"))
            conn.execute(text("UPDATE stalwart_meta SET value = '2' WHERE key = 'schema_version'"))
            for n in range(3):
                conn.execute(
                    text("INSERT INTO audit_events (at, actor, action, subject, detail) VALUES (:at, 'registry', 'register', :s, :d)"),
                    {"at": 1700000000.25 + n, "s": f"m:{n + 1}", "d": json.dumps({"sha256": "ab" * 32, "score": 0.1 * n})},
                )
        # 3: the prediction log's table, which it did not have either (later ones apply too).
        assert [v for v in db.migrate() if v <= 4] == [3, 4]
        with db.read() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM audit_events WHERE hash IS NULL")).scalar_one() == 0
        assert check_audit(db).events == 3
        assert verify_audit(db) is None
        registry = Registry(db, None)  # type: ignore[arg-type]  # the audit log needs no artifacts
        registry.audit("alice", "rollout.weight", "fraud", {"canary": 0.25})
        assert verify_audit(db) is None
        _sql(registry, "UPDATE audit_events SET subject = 'm:9' WHERE id = 2")
        broken = verify_audit(db)
        assert broken is not None
        assert (broken.event_id, broken.problem) == (2, "changed")
    finally:
        db.dispose()


def _append_many(url: str, home: str, worker: int, count: int, queue: Any) -> None:
    registry = Registry.open(Settings(home=Path(home), db_url=url))
    try:
        queue.put([registry.audit(f"worker-{worker}", "test.append", "chain", {"n": i}).id for i in range(count)])
    finally:
        registry.db.dispose()


def test_two_processes_appending_at_once_keep_one_chain(any_db_settings: Settings) -> None:
    """Concurrent writers serialise on the log's lock (SQLite's write lock, PostgreSQL's
    advisory lock): every event gets its own place and the chain never forks."""
    Registry.open(any_db_settings).db.dispose()  # migrated once, before the race
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    url, home = any_db_settings.resolved_db_url(), str(any_db_settings.home)
    workers = [ctx.Process(target=_append_many, args=(url, home, w, 40, queue)) for w in range(2)]
    for w in workers:
        w.start()
    got = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert len({i for batch in got for i in batch}) == 80
    db = Database(url)
    try:
        found = check_audit(db)
        assert (found.events, found.broken) == (80, None)
        with db.read() as conn:
            links = conn.execute(text("SELECT COUNT(DISTINCT prev_hash) FROM audit_events")).scalar_one()
        assert links == 80  # no two events follow the same one
    finally:
        db.dispose()


SECRETS = {
    "admin_token": "adm-s3cret-token",
    "db_url": "postgresql://stalwart:db-s3cret@127.0.0.1/x",
    "redis_url": "redis://:redis-s3cret@127.0.0.1:6379/0",
    "prediction_log_key": "hmac-s3cret-key",
}


def test_the_settings_are_recorded_without_secrets_and_only_when_they_change(any_registry: Registry, any_db_settings: Settings) -> None:
    """What a server starts with is recorded once per distinct configuration: a digest and
    every non-secret setting; no SecretStr value (nor a password inside a URL) appears."""
    settings = any_db_settings.model_copy(
        update={
            **{name: SecretStr(value) for name, value in SECRETS.items()},
            "admin_tokens": {"alice": SecretStr("alice-s3cret"), "ci": SecretStr("ci-s3cret")},
            "nats_url": "nats://bot:nats-s3cret@127.0.0.1:4222",
        }
    )
    event = record_settings(any_registry.db, settings)
    assert event is not None
    assert (event.action, event.actor) == (CONFIG_ACTION, process_actor())
    assert record_settings(any_registry.db, settings) is None  # the same: nothing new
    (stored,) = any_registry.events(action=CONFIG_ACTION)
    dumped = json.dumps(stored)
    assert "s3cret" not in dumped
    recorded = stored["detail"]["settings"]
    assert recorded["nats_url"] == "nats://bot:***@127.0.0.1:4222"
    assert recorded["admin_token_names"] == ["admin", "alice", "ci"]
    assert recorded["max_batch_size"] == settings.max_batch_size
    assert not set(SECRETS) & set(recorded)
    assert recorded == settings_view(settings)
    assert record_settings(any_registry.db, settings.model_copy(update={"max_batch_size": 7})) is not None
    assert [e["detail"]["settings"]["max_batch_size"] for e in any_registry.events(action=CONFIG_ACTION)] == [7, settings.max_batch_size]
    assert verify_audit(any_registry.db) is None


def test_every_secret_setting_is_left_out() -> None:
    """Whatever secret settings are added later, settings_view leaves each one out: the
    rule is the type (SecretStr anywhere in it), not a list to keep up to date."""
    view = settings_view(Settings())
    secret_fields = [name for name, field in Settings.model_fields.items() if "Secret" in str(field.annotation)]
    assert {"admin_token", "db_url", "redis_url", "prediction_log_key", "admin_tokens"} <= set(secret_fields)
    assert not set(secret_fields) & set(view)



def test_verify_checks_every_prediction_chain(logged: Registry, cli_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prediction records written through the real SQL sink verify; a record edited in the
    database afterwards fails verification (exit 1) naming its request."""
    monkeypatch.setenv("STALWART_PREDICTION_LOG", "sql")
    settings = cli_settings.model_copy(update={"prediction_log": "sql"})
    sink = open_sink(settings)
    assert sink is not None
    chain = Chain("replica-a")
    records = [
        chain.link(PredictionRecord(request_id=f"req-{i}", time_ns=1_700_000_000_000_000_000 + i, entrypoint="/v2", status=200, latency_ms=1.5, outputs={"predict": [i]}))
        for i in range(5)
    ]
    sink.write(records, [encode_record(r) for r in records])
    sink.close()
    intact = runner.invoke(app, ["audit", "verify"], env={"COLUMNS": "250"})
    assert intact.exit_code == 0, intact.output
    assert "replica-a" in intact.stdout
    _sql(logged, "UPDATE predictions SET record = REPLACE(record, '\"predict\":[3]', '\"predict\":[1]') WHERE request_id = 'req-3'")
    broken = runner.invoke(app, ["audit", "verify"], env={"COLUMNS": "250"})
    assert broken.exit_code == 1, broken.output
    assert "req-3" in broken.output
