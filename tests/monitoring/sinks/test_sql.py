"""The SQL prediction sink on SQLite and PostgreSQL: records come back exactly as written,
once each however often they arrive, findable by the filters operators use, in their
chains' order, and a database that cannot be reached is SinkUnavailable, never its URL."""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec
import pytest
from sqlalchemy import func, select, text

from stalwart.config import Settings
from stalwart.errors import SinkUnavailable
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record, verify_chain
from stalwart.monitoring.sinks import PredictionStore, Query, open_sink, open_store
from stalwart.monitoring.sinks import sql as sql_module
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.storage.tables import predictions
from tests.monitoring.records_factory import T0, full_record
from tests.servers import free_port


@pytest.fixture
def sink(any_db_settings: Settings) -> Iterator[SqlSink]:
    opened = SqlSink.from_settings(any_db_settings)
    yield opened
    opened.close()


def _write(sink: SqlSink, records: list[PredictionRecord]) -> None:
    sink.write(records, [encode_record(r) for r in records])


def _count(sink: SqlSink) -> int:
    with sink._db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())


def test_open_sink_and_open_store_give_the_sql_sink_by_default(settings: Settings) -> None:
    """STALWART_PREDICTION_LOG=auto (the default) stores records in the registry's database."""
    sink = open_sink(settings)
    store = open_store(settings)
    try:
        assert isinstance(sink, SqlSink)
        assert isinstance(store, SqlSink)
        assert isinstance(store, PredictionStore)
        assert settings.home.resolve().as_posix() in sink.describe()
    finally:
        for opened in (sink, store):
            if isinstance(opened, SqlSink):
                opened.close()


def test_a_record_with_every_field_comes_back_exactly(sink: SqlSink) -> None:
    """Every field, floats to the last bit, unicode and big integers, round-trips; the stored
    JSON is the writer's bytes."""
    record = Chain("replica-a").link(full_record(1))
    encoded = encode_record(record)
    sink.write([record], [encoded])
    back = sink.get(record.request_id)
    assert back == record
    assert back is not None
    assert back.latency_ms == 0.1 + 0.2 + 1
    assert back.features is not None
    assert back.features["amount_sum_1h"] == [1 / 3, 2.5e-300]
    assert back.inputs == {"amount": [12.75, 1e308]}
    with sink._db.read() as conn:
        stored = conn.execute(select(predictions.c.record, predictions.c.seq, predictions.c.hash)).one()
    assert stored.record.encode() == encoded
    assert (stored.seq, stored.hash) == (0, record.hash)
    assert sink.get("no-such-request") is None


def test_a_minimal_record_round_trips(sink: SqlSink) -> None:
    """A record with only its required fields (a /v2 call shed before any model) is stored too."""
    record = PredictionRecord(request_id="shed-1", time_ns=T0, entrypoint="/v2", status=503, latency_ms=0.0)
    sink.write([record], [encode_record(record)])
    assert sink.get("shed-1") == record


def test_the_same_request_id_is_stored_once(sink: SqlSink) -> None:
    """A record written twice, a batch replayed after a crash, and a duplicate inside one
    batch each leave one row; the first version written is the one kept."""
    first = full_record(1)
    _write(sink, [first])
    _write(sink, [msgspec.structs.replace(first, status=500)])
    batch = [full_record(i) for i in range(2, 50)]
    _write(sink, batch)
    _write(sink, batch)  # the spool replayed after a crash
    _write(sink, [full_record(60), full_record(60), *batch[:5]])
    assert _count(sink) == 1 + 48 + 1
    assert sink.get(first.request_id) == first


def test_query_filters_and_orders_newest_first(sink: SqlSink) -> None:
    """Each filter keeps exactly the matching records; results are newest first, limited;
    ``since`` is inclusive and ``until`` exclusive."""
    records = [
        full_record(0, deployment="fraud", model="gbm", version=1),
        full_record(1, deployment="fraud", model="gbm", version=2, status=422, error="ValidationFailed"),
        full_record(2, deployment="churn", model="lr", version=1, degraded="fallback_model", degraded_reason="timeout"),
        full_record(3, deployment=None, entrypoint="/v2", model="lr", version=1, status=503, error="Overloaded"),
        full_record(4, deployment="fraud", model="gbm", version=2, degraded="last_good", variant="canary"),
        full_record(5, deployment="churn", model="lr", version=2, status=500, error="ModelError"),
    ]
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    _write(sink, shuffled)

    def ids(**filters: object) -> list[int]:
        return [int(r.request_id.split("-")[1]) for r in sink.query(Query(**filters))]  # type: ignore[arg-type]

    assert ids() == [5, 4, 3, 2, 1, 0]
    assert ids(limit=2) == [5, 4]
    assert ids(deployment="fraud") == [4, 1, 0]
    assert ids(model="lr") == [5, 3, 2]
    assert ids(model="gbm", version=2) == [4, 1]
    assert ids(status=422) == [1]
    assert ids(errors_only=True) == [5, 3, 1]
    assert ids(degraded=True) == [4, 2]
    assert ids(degraded=False) == [5, 3, 1, 0]
    assert ids(since_ns=records[2].time_ns) == [5, 4, 3, 2]
    assert ids(until_ns=records[2].time_ns) == [1, 0]
    assert ids(since_ns=records[1].time_ns, until_ns=records[4].time_ns, deployment="fraud") == [1]
    assert ids(deployment="nope") == []
    assert ids(variant="canary") == [4]
    assert ids(deployment="fraud", variant="primary") == [1, 0]
    assert sink.query(Query(deployment="churn"))[0] == records[5]


def test_chains_are_read_back_in_order_and_verify(sink: SqlSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers' chains, stored interleaved and out of order across batches, come back
    each in position order, a page at a time, and verify intact; a stored record changed
    afterwards is found."""
    monkeypatch.setattr(sql_module, "_PAGE", 7)  # many pages from a few records
    a, b = Chain("replica-a"), Chain("replica-b")
    linked = [(a if i % 3 else b).link(full_record(i)) for i in range(40)]
    batches = [linked[i : i + 9] for i in range(0, 40, 9)]
    random.Random(5).shuffle(batches)
    for batch in batches:
        _write(sink, batch)
    unchained = full_record(99)
    _write(sink, [unchained])

    assert sink.chains() == ["replica-a", "replica-b"]
    for chain in (a, b):
        stored = list(sink.chain(chain.name))
        assert [r.seq for r in stored] == list(range(chain.seq))
        assert stored == [r for r in linked if r.chain == chain.name]
        assert verify_chain(stored) is None
    assert list(sink.chain("nobody")) == []

    victim = next(r for r in linked if r.chain == "replica-a" and r.seq == 10)
    tampered = encode_record(msgspec.structs.replace(victim, status=500)).decode()
    with sink._db.write() as conn:
        conn.execute(predictions.update().where(predictions.c.request_id == victim.request_id).values(record=tampered))
    found = verify_chain(sink.chain("replica-a"))
    assert found is not None
    assert (found.seq, found.request_id, found.problem) == (10, victim.request_id, "changed")


def test_delete_older_removes_old_records_and_keeps_chains_verifiable(sink: SqlSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deletes records older than the cutoff and returns how many; in a chain it
    removes a prefix only, so a slow old request linked after a newer one waits, and what
    remains still verifies."""
    monkeypatch.setattr(sql_module, "_DELETE_BATCH", 4)  # several delete transactions
    chain = Chain("replica-a")
    # Arrival times by position: position 6 was a slow request that arrived early.
    times = [0, 1, 2, 3, 4, 5, 20, 6, 7, 8, 30, 31]
    linked = [chain.link(full_record(i, time_ns=T0 + t)) for i, t in enumerate(times)]
    loose = [full_record(100 + i, time_ns=T0 + i * 10) for i in range(4)]  # 0, 10, 20, 30
    _write(sink, linked + loose)

    assert sink.delete_older(T0 + 10) == 6 + 1  # positions 0-5, and the loose record at 0
    remaining = list(sink.chain("replica-a"))
    assert [r.seq for r in remaining] == list(range(6, 12))  # positions 7-9 wait behind 6
    assert verify_chain(remaining) is None
    assert {r.request_id for r in sink.query(Query(limit=100)) if r.chain is None} == {r.request_id for r in loose[1:]}

    assert sink.delete_older(T0 + 25) == 4 + 2  # 6 (t=20) and 7-9 go now; loose at 10, 20
    assert [r.seq for r in sink.chain("replica-a")] == [10, 11]
    assert verify_chain(sink.chain("replica-a")) is None
    assert sink.delete_older(T0 + 25) == 0
    assert sink.delete_older(T0 + 1_000) == 3
    assert _count(sink) == 0


@pytest.mark.postgres
def test_copy_stores_20000_records_once(pg_url: str, home: object) -> None:
    """On PostgreSQL a batch goes through COPY: 20,000 records in one write are all there,
    exact, and replaying the batch adds none."""
    sink = SqlSink.from_settings(Settings(home=home, db_url=pg_url))  # type: ignore[arg-type]
    try:
        chain = Chain("bulk")
        records = [chain.link(full_record(i)) for i in range(20_000)]
        _write(sink, records)
        _write(sink, records[5_000:15_000])
        assert _count(sink) == 20_000
        assert sink.get(records[12_345].request_id) == records[12_345]
        assert verify_chain(sink.chain("bulk")) is None
        # The session's incoming table is emptied at commit: nothing lingers in it.
        with sink._db.read() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM pg_tables WHERE tablename = 'predictions'").scalar_one()
        assert rows == 1
    finally:
        sink.close()


@pytest.mark.postgres
def test_an_unreachable_database_is_sink_unavailable_without_its_url(home: object) -> None:
    """Writing to and reading from a PostgreSQL nobody listens on raises SinkUnavailable
    (the driver's error as its cause); the message names neither the host, the port nor the
    password."""
    port = free_port()
    url = f"postgresql://stalwart:hunter2@127.0.0.1:{port}/predictions?connect_timeout=2"
    sink = SqlSink.from_settings(Settings(home=home, db_url=url))  # type: ignore[arg-type]
    try:
        calls = [
            lambda: _write(sink, [full_record(1)]),
            lambda: sink.get("req-1"),
            lambda: sink.query(Query()),
            lambda: sink.chains(),
            lambda: list(sink.chain("a")),
            lambda: sink.delete_older(T0),
        ]
        for call in calls:
            with pytest.raises(SinkUnavailable) as info:
                call()
            message = info.value.message
            assert info.value.__cause__ is not None
            for secret in ("hunter2", str(port), "127.0.0.1", "postgresql://", "stalwart:"):
                assert secret not in message
            assert "STALWART_DB_URL" in message
    finally:
        sink.close()


def test_a_locked_sqlite_database_is_retried_then_stored(settings: Settings) -> None:
    """Another connection holding SQLite's write lock briefly delays a batch; it is not an
    error (Database.transact retries while the database is busy)."""
    import sqlite3
    import threading

    sink = SqlSink.from_settings(settings)
    try:
        _write(sink, [full_record(0)])  # migrated
        holder = sqlite3.connect(settings.home / "registry.db", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: (holder.execute("COMMIT"), holder.close()))
        release.start()
        _write(sink, [full_record(1)])
        release.join()
        assert _count(sink) == 2
    finally:
        sink.close()


def test_schema_is_created_on_first_use(settings: Settings) -> None:
    """Making the sink touches nothing; its first use migrates the database (migration 3
    creates the predictions table with its indexes)."""
    sink = SqlSink.from_settings(settings)
    try:
        assert sink.query(Query()) == []
        with sink._db.read() as conn:
            indexes = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE tbl_name = 'predictions' AND type = 'index'"))}
        assert {"ix_predictions_time", "ix_predictions_deployment_time", "ix_predictions_model_version_time"} <= indexes
    finally:
        sink.close()
