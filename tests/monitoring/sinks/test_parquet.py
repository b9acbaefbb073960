"""The Parquet prediction sink: exact round trips through files pandas and pyarrow read,
rotation, the writer's durability contract, replays, crashes and retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads
import pytest

from stalwart.config import Settings
from stalwart.errors import SinkUnavailable
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record, verify_chain
from stalwart.monitoring.sinks import PredictionStore, Query, open_sink, open_store
from stalwart.monitoring.sinks.parquet import HOUR_NS, ParquetSink

SRC = Path(__file__).resolve().parents[3] / "src"
T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(chain: Chain, n: int, *, start: int = 0, time_ns: int = T0, step_ns: int = 1_000_000, **fields: Any) -> list[PredictionRecord]:
    records = []
    for i in range(start, start + n):
        record = PredictionRecord(
            request_id=f"{chain.name}-{i}",
            time_ns=time_ns + (i - start) * step_ns,
            entrypoint="/v1",
            status=500 if i % 10 == 9 else 200,
            latency_ms=1.25 + i,
            deployment="fraud" if i % 2 else "churn",
            model="m",
            version=1 + i % 3,
            rows=1,
            degraded="fallback" if i % 7 == 0 else None,
            entities=[{"user_id": i}],
            features={"amount": [float(i) / 3], "country": ["SE"], "flags": [[1, 2]]},
            outputs={"score": [0.5 + i / 1e6]},
            validation={"flagged": []} if i % 3 == 0 else None,
            cache={"user": {"memory": 1}},
            timings={"features": 0.5, "model": 1.0},
            **fields,
        )
        records.append(chain.link(record))
    return records


def write(sink: ParquetSink, records: list[PredictionRecord]) -> None:
    sink.write(records, [encode_record(r) for r in records])


def files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("part-*.parquet"))


def test_records_round_trip_exactly(tmp_path: Path) -> None:
    """What goes in comes back equal, through the store, pandas and pyarrow.dataset."""
    chain = Chain("replica-a")
    records = make(chain, 50)
    sink = ParquetSink(tmp_path)
    write(sink, records)
    sink.flush()
    assert list(sink.chain("replica-a")) == records
    assert verify_chain(sink.chain("replica-a")) is None
    assert sink.get("replica-a-7") == records[7]
    assert isinstance(sink, PredictionStore)

    frame = pd.read_parquet(tmp_path).sort_values("seq")
    assert list(frame["request_id"]) == [r.request_id for r in records]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert [t.value for t in frame["time"]] == [r.time_ns for r in records]
    assert set(frame["date"].astype(str)) == {"2025-01-01"}
    assert set(frame["hour"].astype(int)) == {0}
    table = pads.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 50
    assert table.schema.field("time").type.tz == "UTC"
    assert "features" in table.schema.names
    assert str(table.schema.field("features").type) == "string"


def test_nested_parts_of_varying_shape_are_json(tmp_path: Path) -> None:
    """Features of different shapes in one segment are kept, each row its own JSON."""
    chain = Chain("c")
    a = chain.link(PredictionRecord(request_id="a", time_ns=T0, entrypoint="/v2", status=200, latency_ms=1.0, inputs={"x": [[1.0, 2.0]]}))
    b = chain.link(PredictionRecord(request_id="b", time_ns=T0 + 1, entrypoint="/v2", status=200, latency_ms=1.0, inputs={"y": "text", "z": {"deep": [None]}}))
    sink = ParquetSink(tmp_path)
    write(sink, [a, b])
    sink.close()
    assert list(sink.chain("c")) == [a, b]


def test_rotation_by_size(tmp_path: Path) -> None:
    """Segments close near segment_mb, so one hour of traffic is several files."""
    sink = ParquetSink(tmp_path, segment_mb=0.05)
    chain = Chain("a")
    for start in range(0, 2_000, 200):
        write(sink, make(chain, 200, start=start, time_ns=T0 + start * 1_000_000))
    sink.flush()
    written = files(tmp_path)
    assert len(written) >= 3
    assert max(p.stat().st_size for p in written) < 0.05 * 1024 * 1024 * 2
    assert [r.seq for r in sink.chain("a")] == list(range(2_000))


def test_rotation_by_hour_and_age(tmp_path: Path) -> None:
    """A record of the next hour closes the segment; so does age, at the next write."""
    clock = Clock()
    sink = ParquetSink(tmp_path, clock=clock, max_age_s=60)
    chain = Chain("a")
    write(sink, make(chain, 3, time_ns=T0 + HOUR_NS - 10, step_ns=1))
    assert files(tmp_path) == []
    write(sink, make(chain, 3, start=3, time_ns=T0 + HOUR_NS))  # 01:00: hour 00 closes
    assert [p.relative_to(tmp_path).as_posix() for p in files(tmp_path)] == ["date=2025-01-01/hour=00/part-a-0-2.parquet"]
    clock.now = 61
    write(sink, make(chain, 1, start=6, time_ns=T0 + HOUR_NS + 5))
    assert len(files(tmp_path)) == 2
    assert sink.pending() == 1
    sink.flush()
    assert [p.name for p in files(tmp_path)] == ["part-a-0-2.parquet", "part-a-3-5.parquet", "part-a-6-6.parquet"]


def test_pending_counts_what_is_not_durable(tmp_path: Path) -> None:
    """pending() is the tail of what write() was given that no closed file holds yet."""
    sink = ParquetSink(tmp_path)
    chain = Chain("a")
    records = make(chain, 10)
    write(sink, records[:4])
    assert sink.pending() == 4
    write(sink, records[2:7])  # two duplicates: counted, not stored twice
    assert sink.pending() == 9
    sink.flush()
    assert sink.pending() == 0
    write(sink, records[:7])  # all durable already: nothing held
    assert sink.pending() == 0
    write(sink, records[8:9] + make(Chain("b"), 2))  # another chain closes the segment
    assert sink.pending() == 2
    sink.close()
    assert sink.pending() == 0
    assert sink.chains() == ["a", "b"]
    assert [r.seq for r in sink.chain("a")] == [0, 1, 2, 3, 4, 5, 6, 8]


def test_a_replayed_batch_after_a_restart_is_stored_once(tmp_path: Path) -> None:
    """A new sink over the same directory drops what its files already hold."""
    chain = Chain("replica-a")
    records = make(chain, 30)
    first = ParquetSink(tmp_path)
    write(first, records[:20])
    first.flush()
    write(first, records[20:])  # held, never closed: the process "dies"
    second = ParquetSink(tmp_path)
    write(second, records)  # the writer replays its whole spool
    assert second.pending() == 10
    second.close()
    assert [r.request_id for r in second.chain("replica-a")] == [r.request_id for r in records]
    assert verify_chain(second.chain("replica-a")) is None


def test_a_killed_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    """SIGKILL while a segment is being written: readers see only whole files, and the next
    sink removes the dead process's temporary file."""
    script = textwrap.dedent(
        f"""
        import sys
        import pyarrow.parquet as pq
        from stalwart.monitoring.records import Chain, PredictionRecord, encode_record
        from stalwart.monitoring.sinks.parquet import ParquetSink

        def slow(table, where, **kw):
            with open(where, "wb") as f:
                f.write(b"PAR1 half a file")
            print("writing", flush=True)
            import time; time.sleep(60)
        sink = ParquetSink(sys.argv[1])
        chain = Chain("k")
        records = [chain.link(PredictionRecord(request_id=str(i), time_ns={T0} + i, entrypoint="/v1", status=200, latency_ms=1.0)) for i in range(100)]
        sink.write(records[:50], [encode_record(r) for r in records[:50]])
        sink.flush()
        pq.write_table = slow
        sink.write(records[50:], [encode_record(r) for r in records[50:]])
        sink.flush()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"writing"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            process.kill()
    leftovers = list(tmp_path.rglob(".*.tmp"))
    assert len(leftovers) == 1
    assert len(pd.read_parquet(tmp_path)) == 50  # the temporary file is invisible
    assert pads.dataset(tmp_path, format="parquet", partitioning="hive").count_rows() == 50
    sink = ParquetSink(tmp_path)
    assert list(tmp_path.rglob(".*.tmp")) == []
    assert len(list(sink.chain("k"))) == 50


def test_a_live_writers_temporary_file_is_left_alone(tmp_path: Path) -> None:
    """Only a dead process's temporary files are cleaned, never a running writer's."""
    partition = tmp_path / "date=2025-01-01" / "hour=00"
    partition.mkdir(parents=True)
    import socket

    host = socket.gethostname().replace(".", "_")
    live = partition / f".{host}.{os.getpid()}.abc.parquet.tmp"
    live.write_bytes(b"in progress")
    ParquetSink(tmp_path)
    assert live.exists()


def test_query_filters_newest_first(tmp_path: Path) -> None:
    """Every Query filter holds, newest first, across hours, up to the limit."""
    sink = ParquetSink(tmp_path)
    chain = Chain("a")
    records = make(chain, 40, step_ns=HOUR_NS // 8)  # five hours
    write(sink, records)
    sink.flush()
    by = {r.request_id: r for r in records}

    def ids(query: Query) -> list[str]:
        return [r.request_id for r in sink.query(query)]

    newest = sorted(records, key=lambda r: r.time_ns, reverse=True)
    assert ids(Query(limit=5)) == [r.request_id for r in newest[:5]]
    assert ids(Query(limit=100)) == [r.request_id for r in newest]
    assert all(by[i].deployment == "fraud" for i in ids(Query(deployment="fraud", limit=100)))
    assert len(ids(Query(deployment="fraud", limit=100))) == 20
    assert {by[i].status for i in ids(Query(errors_only=True, limit=100))} == {500}
    assert len(ids(Query(status=500, limit=100))) == 4
    assert len(ids(Query(version=2, model="m", limit=100))) == len([r for r in records if r.version == 2])
    assert set(ids(Query(degraded=True, limit=100))) == {r.request_id for r in records if r.degraded}
    assert set(ids(Query(degraded=False, limit=100))) == {r.request_id for r in records if not r.degraded}
    assert set(ids(Query(variant="primary", limit=100))) == {r.request_id for r in records if r.variant == "primary"}
    assert ids(Query(variant="nobody", limit=100)) == []
    since, until = records[10].time_ns, records[20].time_ns
    assert ids(Query(since_ns=since, until_ns=until, limit=100)) == [r.request_id for r in reversed(records[10:20])]
    assert sink.query(Query(deployment="nobody")) == []
    assert sink.get("missing") is None


def test_chain_is_ordered_by_position(tmp_path: Path) -> None:
    """chain(name) yields one chain's records by seq, across segments and hours."""
    sink = ParquetSink(tmp_path)
    a, b = Chain("a"), Chain("b")
    write(sink, make(a, 5, time_ns=T0 + 2 * HOUR_NS))
    write(sink, make(b, 5))
    write(sink, make(a, 5, start=5, time_ns=T0 + 3 * HOUR_NS))
    sink.flush()
    assert [r.seq for r in sink.chain("a")] == list(range(10))
    assert [r.chain for r in sink.chain("b")] == ["b"] * 5
    assert verify_chain(sink.chain("a")) is None
    assert list(sink.chain("nobody")) == []


def test_delete_older_removes_whole_old_segments(tmp_path: Path) -> None:
    """Retention deletes segment files wholly older than the cutoff, and empty partitions."""
    sink = ParquetSink(tmp_path)
    chain = Chain("a")
    write(sink, make(chain, 10, step_ns=HOUR_NS // 2))  # hours 00..04, two per hour
    sink.flush()
    assert len(files(tmp_path)) == 5
    cutoff = T0 + 2 * HOUR_NS + HOUR_NS // 4  # inside hour 02, after its first record
    assert sink.delete_older(cutoff) == 4
    assert [r.seq for r in sink.chain("a")] == [4, 5, 6, 7, 8, 9]
    assert not (tmp_path / "date=2025-01-01" / "hour=00").exists()
    assert sink.delete_older(T0 + 10 * HOUR_NS) == 6
    assert files(tmp_path) == []
    assert sink.chains() == []


def test_an_unwritable_directory_is_sink_unavailable(tmp_path: Path) -> None:
    """A segment that cannot be written raises SinkUnavailable and stays held for a retry."""
    if os.geteuid() == 0:
        blocker = tmp_path / "date=2025-01-01"
        blocker.write_text("a file where the partition directory goes")
    else:  # pragma: no cover - root ignores permissions
        tmp_path.chmod(0o500)
    sink = ParquetSink(tmp_path)
    records = make(Chain("a"), 3)
    write(sink, records)
    with pytest.raises(SinkUnavailable, match="cannot write the prediction segment"):
        sink.flush()
    assert sink.pending() == 3
    if os.geteuid() == 0:
        (tmp_path / "date=2025-01-01").unlink()
    sink.flush()
    assert len(list(sink.chain("a"))) == 3


def test_open_sink_and_store_by_settings(tmp_path: Path) -> None:
    """STALWART_PREDICTION_LOG=parquet opens segments under <home>/predictions."""
    settings = Settings(home=tmp_path, prediction_log="parquet")
    sink = open_sink(settings)
    assert isinstance(sink, ParquetSink)
    assert sink.directory == tmp_path.resolve() / "predictions"
    assert isinstance(open_store(settings), ParquetSink)
    other = Settings(home=tmp_path, prediction_log="parquet", prediction_log_dir=tmp_path / "elsewhere", prediction_log_segment_mb=2)
    opened = ParquetSink.from_settings(other)
    assert opened.directory == tmp_path / "elsewhere"
    assert opened.segment_bytes == 2 * 1024 * 1024
