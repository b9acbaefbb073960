"""`stalwart.read_predictions`: the log as an Arrow table (and a DataFrame), filtered the
way operators ask ("errors of the fraud deployment in the last hour")."""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pytest

import stalwart
from stalwart.config import Settings
from stalwart.durations import NS
from stalwart.errors import ConfigError, PredictionLogError
from stalwart.monitoring.prediction_reads import build_query, parse_time, records_table
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record
from stalwart.monitoring.sinks.sql import SqlSink
from tests.monitoring.records_factory import full_record

NOW = 1_796_000_000 * 1_000_000_000  # parse_time's cases pass it as now_ns: any fixed instant does (the same in every process collecting them)


@pytest.fixture
def logged(any_db_settings: Settings) -> tuple[Settings, list[PredictionRecord]]:
    """Six records over the last three hours, one every 30 minutes (newest last)."""
    chain = Chain("replica-a")
    now = time.time_ns()  # the test's own now, not the collection's: a long suite runs minutes before it
    records = [
        chain.link(full_record(i, time_ns=now - (5 - i) * 1_800 * NS, status=200 if i % 2 else 500, error=None if i % 2 else "ModelError"))
        for i in range(6)
    ]
    records[3] = Chain("replica-b").link(full_record(3, time_ns=records[3].time_ns, deployment="churn", degraded="default", degraded_reason="timeout"))
    sink = SqlSink.from_settings(any_db_settings)
    try:
        sink.write(records, [encode_record(r) for r in records])
    finally:
        sink.close()
    return any_db_settings, records


def test_read_predictions_returns_a_typed_arrow_table(logged: tuple[Settings, list[PredictionRecord]]) -> None:
    """Newest first; scalar fields are typed columns (time is timestamp[ns, UTC]), nested
    fields are structs and lists with the values as recorded."""
    settings, records = logged
    table = stalwart.read_predictions(settings=settings)
    assert isinstance(table, pa.Table)
    assert table.num_rows == 6
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("status").type == pa.int64()
    assert table.schema.field("latency_ms").type == pa.float64()
    assert table.column("request_id").to_pylist() == [r.request_id for r in reversed(records)]
    assert table.column("time").cast(pa.int64()).to_pylist() == [r.time_ns for r in reversed(records)]
    newest = table.slice(0, 1).to_pylist()[0]
    last = records[-1]
    assert newest["latency_ms"] == last.latency_ms
    assert newest["features"] == last.features
    assert newest["outputs"] == last.outputs
    assert newest["validation"] == {"imputed": {"merchant": [1]}, "flagged": {}}
    assert newest["timings"] == last.timings
    assert newest["entities"] == last.entities
    assert (newest["chain"], newest["seq"], newest["hash"]) == ("replica-a", 5, last.hash)
    assert {"features", "inputs", "outputs", "validation", "timings", "cache", "trace_id", "degraded"} <= set(table.column_names)


def test_to_pandas_gives_a_dataframe(logged: tuple[Settings, list[PredictionRecord]]) -> None:
    """``.to_pandas()`` is a DataFrame with UTC timestamps, ready for analysis."""
    import pandas as pd

    settings, records = logged
    frame = stalwart.read_predictions(settings=settings, errors_only=True).to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["request_id"]) == ["req-000004", "req-000002", "req-000000"]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert frame["time"].iloc[0] == pd.Timestamp(records[4].time_ns, tz="UTC")
    assert set(frame["error"]) == {"ModelError"}


def test_filters_and_times(logged: tuple[Settings, list[PredictionRecord]]) -> None:
    """Deployment, degradation, status, limit, and since/until as durations, datetimes and
    nanoseconds select the same records the store's query does."""
    settings, records = logged

    def ids(**filters: object) -> list[str]:
        table = stalwart.read_predictions(settings=settings, **filters)  # type: ignore[arg-type]
        return [rid[-1] for rid in table.column("request_id").to_pylist()]

    assert ids(deployment="churn") == ["3"]
    assert ids(degraded=True) == ["3"]
    assert ids(degraded=False, limit=2) == ["5", "4"]
    assert ids(status=500) == ["4", "2", "0"]
    assert ids(since="65m") == ["5", "4", "3"]  # 0, 30 and 60 minutes ago
    assert ids(since=dt.timedelta(minutes=65), until="15m") == ["4", "3"]
    assert ids(since=records[1].time_ns, until=records[3].time_ns) == ["2", "1"]
    since = dt.datetime.fromtimestamp(records[4].time_ns // NS, tz=dt.UTC)  # second precision: records[4] after it
    assert ids(since=since) == ["5", "4"]
    assert ids(model="fraud-gbm", version=3, deployment="fraud", errors_only=True, since="2h") == ["4", "2"]


def test_an_empty_result_still_has_every_column(settings: Settings) -> None:
    """No records: a table with no rows and the same columns, so code that selects them works."""
    table = stalwart.read_predictions(settings=settings)
    assert table.num_rows == 0
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert "features" in table.column_names
    assert len(table.to_pandas().columns) == len(table.column_names)


def test_a_log_that_cannot_be_read_says_why(home: object) -> None:
    """With the log off, or going to NATS, read_predictions says so and what to change."""
    with pytest.raises(PredictionLogError, match="STALWART_PREDICTION_LOG=off"):
        stalwart.read_predictions(settings=Settings(home=home, prediction_log="off"))  # type: ignore[arg-type]
    with pytest.raises(PredictionLogError, match="nats, which cannot be read back"):
        stalwart.read_predictions(settings=Settings(home=home, prediction_log="nats"))  # type: ignore[arg-type]


def test_nested_values_arrow_cannot_type_are_kept_as_json() -> None:
    """A feature that is a number in one record and a string in another still reads: that
    column holds each value's JSON text."""
    records = [
        full_record(0, features={"x": [1.5]}),
        full_record(1, features={"x": ["n/a"]}),
        full_record(2, features=None),
    ]
    table = records_table(records)
    assert table.column("features").to_pylist() == ['{"x": [1.5]}', '{"x": ["n/a"]}', None]
    assert table.column("outputs").type != pa.string()  # the others stay structs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15m", NOW - 900 * NS),
        ("1h30m", NOW - 5_400 * NS),
        ("0", NOW),
        (dt.timedelta(seconds=2), NOW - 2 * NS),
        (1_234, 1_234),
        ("2024-05-01T12:00:00Z", 1_714_564_800 * NS),
        ("2024-05-01T14:00:00.000001+02:00", 1_714_564_800 * NS + 1_000),
        (dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), 1_714_564_800 * NS),
        (None, None),
    ],
)
def test_parse_time(value: object, expected: int | None) -> None:
    """Durations count back from now; ISO times and datetimes are exact to the microsecond."""
    assert parse_time(value, "since", now_ns=NOW) == expected  # type: ignore[arg-type]


def test_a_naive_datetime_is_local_time() -> None:
    """As in ``datetime.timestamp``: a naive datetime means the machine's local time."""
    naive = dt.datetime(2024, 5, 1, 12, 30)
    assert parse_time(naive, "since") == int(naive.timestamp()) * NS


@pytest.mark.parametrize("value", ["yesterday", "-5m", True, 1.5, "2024-13-01"])
def test_bad_times_and_limits_are_config_errors(value: object) -> None:
    """A time that is neither a duration nor an ISO time names the option and the grammar."""
    with pytest.raises(ConfigError, match=r"^since: .*duration"):
        parse_time(value, "since")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit"):
        build_query(limit=0)
