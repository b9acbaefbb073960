"""Prediction records as rotated Parquet segments that pandas, DuckDB and Spark read directly.

Layout, hive-partitioned by the hour of each record's own ``time_ns`` (UTC)::

    <dir>/date=2025-01-31/hour=09/part-<chain>-<first seq>-<last seq>.parquet

so ``pandas.read_parquet(dir)``, ``duckdb.read_parquet('dir/**/*.parquet',
hive_partitioning=true)`` and ``spark.read.parquet(dir)`` see every closed segment, with
``date`` and ``hour`` as partition columns. Each file is zstd-compressed; its columns are the
record's scalar fields, typed (``time`` as ``timestamp[ns, UTC]``), and its nested parts
(``entities``, ``features``, ``feature_sets``, ``inputs``, ``outputs``, ``validation``, ``cache``,
``timings``) as JSON strings: their shapes vary from row to row and deployment to
deployment, which a Parquet struct column cannot hold without a schema per shape.

**Segments.** The sink holds one open segment, in memory, for one chain and one hour. It is
closed, written whole to a hidden temporary name (``.<host>.<pid>.<token>.parquet.tmp``,
which every reader above ignores), fsynced, and renamed into place when its estimated file
size reaches ``segment_mb``, when a record of another hour or chain arrives, when it is
``max_age_s`` (60 s) old at the next ``write``, or at :meth:`ParquetSink.flush`. A reader
never sees a partial file; a crash leaves at most a temporary file, removed by the next sink
that opens the directory once its process is gone. Memory: the open segment, as Arrow data
(several times ``segment_mb``, as zstd compresses JSON well), or ``max_age_s`` of traffic.

**Durability and replays.** Records in the open segment are not durable: :meth:`pending`
counts them, and the prediction log forgets spooled records only once they are not pending.
A file's name carries its chain and seq range; at start the sink reads the names and drops
incoming records at or below the highest seq already in a file for their chain, and records
whose request id is already in the open segment, so a replayed spool stores nothing twice.

Reads (:class:`~stalwart.monitoring.sinks.PredictionStore`) see closed segments only.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import msgspec

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import PredictionLogError, SinkUnavailable
from stalwart.monitoring.records import PredictionRecord

if TYPE_CHECKING:  # the package imports this module: at run time, only by annotation
    from stalwart.monitoring.sinks.base import Query

__all__ = ["ParquetSink"]

HOUR_NS = 3_600_000_000_000
MAX_AGE_S = 60.0  # an open segment older than this is closed at the next write
_STALE_TMP_S = 3600.0  # another host's temporary file untouched this long is a crash's leftover
_FIRST_RATIO = 0.25  # file bytes per Arrow byte, until the first closed segment measures it
_PART = re.compile(r"^part-(?P<chain>.+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_TMP_SUFFIX = ".parquet.tmp"
_NESTED = ("entities", "features", "feature_sets", "inputs", "outputs", "validation", "cache", "timings")
_DICTIONARY = ["entrypoint", "deployment", "variant", "model", "error", "degraded", "degraded_reason", "chain"]
_STATISTICS = ["time", "status", "version", "seq", "deployment", "model", "chain"]


class _Row(msgspec.Struct, kw_only=True):
    """A record as decoded from its JSON for the columns: nested parts stay raw JSON, so the
    writer's encoding is reused rather than encoding each part again."""

    request_id: str
    time_ns: int
    entrypoint: str
    status: int
    latency_ms: float
    trace_id: str | None = None
    deployment: str | None = None
    variant: str | None = None
    model: str | None = None
    version: int | None = None
    error: str | None = None
    rows: int | None = None
    entities: msgspec.Raw = msgspec.Raw(b"")
    features: msgspec.Raw = msgspec.Raw(b"")
    feature_sets: msgspec.Raw = msgspec.Raw(b"")
    features_as_of_ns: int | None = None
    inputs: msgspec.Raw = msgspec.Raw(b"")
    inputs_hash: str | None = None
    outputs: msgspec.Raw = msgspec.Raw(b"")
    validation: msgspec.Raw = msgspec.Raw(b"")
    degraded: str | None = None
    degraded_reason: str | None = None
    cache: msgspec.Raw = msgspec.Raw(b"")
    timings: msgspec.Raw = msgspec.Raw(b"")
    chain: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


_row_decoder = msgspec.json.Decoder(_Row)
_ROW_FIELDS = _Row.__struct_fields__  # the columns, in the schema's order
_COLUMN = {"time_ns": "time"}  # a row field whose column is named otherwise


# pyarrow is untyped: its objects are Any here, loaded only when a Parquet sink is used.
def _pa() -> Any:
    return require("pyarrow", extra="features", purpose="the parquet prediction sink")


def _schema() -> Any:
    pa = _pa()
    string, int64 = pa.string(), pa.int64()
    types = {
        "request_id": string, "time": pa.timestamp("ns", tz="UTC"), "entrypoint": string,
        "status": pa.int32(), "latency_ms": pa.float64(), "trace_id": string,
        "deployment": string, "variant": string, "model": string, "version": int64,
        "error": string, "rows": int64, "entities": string, "features": string,
        "feature_sets": string, "features_as_of_ns": int64, "inputs": string, "inputs_hash": string, "outputs": string, "validation": string,
        "degraded": string, "degraded_reason": string, "cache": string, "timings": string,
        "chain": string, "seq": int64, "prev_hash": string, "hash": string,
    }  # fmt: skip
    return pa.schema([pa.field(name, kind, nullable=name not in ("request_id", "time")) for name, kind in types.items()])


@dataclass(frozen=True, slots=True)
class _Segment:
    """A closed segment file, as its path and name tell."""

    path: Path
    chain: str
    first: int
    last: int
    hour: int  # hours since the epoch, from the partition directories

    @staticmethod
    def parse(path: Path) -> _Segment | None:
        match = _PART.match(path.name)
        if match is None:
            return None
        try:
            day = datetime.strptime(path.parent.parent.name, "date=%Y-%m-%d").replace(tzinfo=UTC)
            hour = int(path.parent.name.removeprefix("hour="))
        except ValueError:
            return None
        hours = int(day.timestamp()) // 3600 + hour
        return _Segment(path, unquote(match["chain"]), int(match["first"]), int(match["last"]), hours)


@dataclass(slots=True)
class _Open:
    """The segment being filled: one chain, one hour, in memory until it is closed."""

    chain: str
    hour: int
    opened: float  # the clock's reading
    batches: list[Any] = field(default_factory=list)  # pyarrow.RecordBatch
    ids: set[str] = field(default_factory=set)
    first: int = -1
    last: int = -1
    nbytes: int = 0
    rows: int = 0


class ParquetSink:
    """Rotated, hive-partitioned Parquet segments under ``directory`` (see the module
    docstring); a :class:`~stalwart.monitoring.sinks.PredictionSink` and
    :class:`~stalwart.monitoring.sinks.PredictionStore`.

    ``clock`` (monotonic seconds) times a segment's age; tests inject one.
    """

    name = "parquet"

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_mb: float = 64,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = int(segment_mb * 1024 * 1024)
        self.max_age_s = max_age_s
        self._clock = clock
        self._schema = _schema()
        self._lock = threading.Lock()  # write, flush and close are the writer's; pending may be polled
        self._open: _Open | None = None
        self._pending = 0
        self._ratio = _FIRST_RATIO
        self._host = socket.gethostname().replace(".", "_")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            self._durable: dict[str, int] = {}
            for segment in self._segments():
                self._durable[segment.chain] = max(self._durable.get(segment.chain, -1), segment.last)
        except OSError as exc:
            raise SinkUnavailable(f"cannot use the prediction log directory {self.directory}: {exc}; check it exists and is writable") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> ParquetSink:
        """The sink at ``STALWART_PREDICTION_LOG_DIR`` (default ``<home>/predictions``),
        closing segments at ``STALWART_PREDICTION_LOG_SEGMENT_MB``."""
        directory = settings.prediction_log_dir or settings.home.resolve() / "predictions"
        return cls(directory, segment_mb=settings.prediction_log_segment_mb)

    # -- the sink ------------------------------------------------------------------------

    def write(self, records: Sequence[PredictionRecord], encoded: Sequence[bytes]) -> None:
        """Add ``records`` to the open segment, closing segments as they fill, change hour
        or chain, or age; duplicates (by chain and seq against closed files, by request id
        in the open segment) are dropped. Raises SinkUnavailable when a segment cannot be
        written; what was accepted stays held, so retrying the batch is safe."""
        if len(records) != len(encoded):
            raise PredictionLogError("write() needs one encoded record per record")
        with self._lock:
            opened = self._open
            if opened is not None and self._clock() - opened.opened >= self.max_age_s:
                self._close_open()
            rows = list(map(_row_decoder.decode, encoded))  # faster than one joined array
            run: list[_Row] = []
            for row in rows:
                chain, seq = row.chain, row.seq
                if chain is None or seq is None:
                    raise PredictionLogError(f"record {row.request_id} has no chain position: the prediction log links records before a sink stores them")
                current = self._open
                if seq <= self._durable.get(chain, -1):
                    if current is not None:
                        self._pending += 1  # counted until the open segment closes (see pending())
                    continue
                hour = row.time_ns // HOUR_NS
                if current is None or current.chain != chain or current.hour != hour:
                    self._add(run)
                    run = []
                    if current is not None:
                        self._close_open()
                    current = self._open = _Open(chain, hour, self._clock())
                self._pending += 1
                if row.request_id in current.ids:
                    continue
                current.ids.add(row.request_id)
                run.append(row)
                if len(run) >= 4096:  # bound the rows between size checks
                    self._add(run)
                    run = []
            self._add(run)

    def pending(self) -> int:
        """How many of the records last given to :meth:`write` are not yet durable: the
        last ``pending()`` records (in the order given, duplicates included) are held in
        the open segment; every record given before them is in a closed, fsynced file."""
        with self._lock:
            return self._pending

    def flush(self) -> None:
        """Close the open segment now, making every accepted record durable (the prediction
        log calls this at shutdown and when idle). Raises SinkUnavailable when it cannot."""
        with self._lock:
            if self._open is not None:
                self._close_open()

    def close(self) -> None:
        """Flush; the sink holds no other resource."""
        self.flush()

    # -- segments ------------------------------------------------------------------------

    def _add(self, run: list[_Row]) -> None:
        """Convert a run of rows (one chain, one hour) into the open segment; close it
        when its estimated file size reaches ``segment_mb``."""
        current = self._open
        if not run or current is None:
            return
        batch = self._batch(run)
        current.batches.append(batch)
        current.nbytes += batch.nbytes
        current.rows += len(run)
        seqs = [row.seq for row in run if row.seq is not None]
        current.first = min(seqs) if current.first < 0 else min(current.first, *seqs)
        current.last = max(current.last, *seqs)
        if current.nbytes * self._ratio >= self.segment_bytes:
            self._close_open()

    def _batch(self, run: list[_Row]) -> Any:
        """One Arrow batch from rows: transposed in C (``astuple``, ``zip``), the raw JSON
        of nested parts taken as it is (bytes, checked as UTF-8 by Arrow)."""
        pa = _pa()
        pc = require("pyarrow.compute", extra="features", purpose="the parquet prediction sink")
        columns = []
        for name, values in zip(_ROW_FIELDS, zip(*map(msgspec.structs.astuple, run), strict=True), strict=True):
            kind = self._schema.field(_COLUMN.get(name, name)).type
            if name in _NESTED:
                # An absent part decodes as empty raw JSON: empty strings become nulls in one
                # vectorised step rather than a test per value (the hottest loop here).
                texts = pa.array(list(map(bytes, values)), type=kind)
                columns.append(pc.if_else(pc.equal(pc.binary_length(texts), 0), pa.scalar(None, kind), texts))
            else:
                columns.append(pa.array(values, type=kind))
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)

    def _close_open(self) -> None:
        """Write the open segment whole to a temporary file, fsync it, rename it into its
        partition and fsync the directory. On failure the segment stays open (and pending),
        the temporary file is removed, and SinkUnavailable says why."""
        current = self._open
        if current is None:
            return
        if current.rows == 0:
            self._open = None
            self._pending = 0
            return
        pq = require("pyarrow.parquet", extra="features", purpose="the parquet prediction sink")
        pa = _pa()
        when = datetime.fromtimestamp(current.hour * 3600, tz=UTC)
        partition = self.directory / f"date={when:%Y-%m-%d}" / f"hour={when:%H}"
        final = partition / f"part-{quote(current.chain, safe='')}-{current.first}-{current.last}.parquet"
        tmp = partition / f".{self._host}.{os.getpid()}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        try:
            self._make_dirs(partition)
            table = pa.Table.from_batches(current.batches, schema=self._schema)
            pq.write_table(
                table, tmp, compression="zstd", compression_level=1, row_group_size=256 * 1024,
                # Dictionaries and statistics only where they pay: repeated names and the
                # columns readers filter on. Unique JSON and hashes gain nothing from either,
                # and building them halved the write rate.
                use_dictionary=_DICTIONARY, write_statistics=_STATISTICS,
            )
            _fsync(tmp)
            os.replace(tmp, final)
            _fsync(partition)
        except OSError as exc:
            with contextlib.suppress(OSError):  # the path may not even be creatable
                tmp.unlink(missing_ok=True)
            raise SinkUnavailable(f"cannot write the prediction segment {final}: {exc}; check the disk (space, permissions); the records stay held and are retried") from exc
        size = final.stat().st_size
        self._ratio = max(size / max(current.nbytes, 1), 0.01)
        self._durable[current.chain] = max(self._durable.get(current.chain, -1), current.last)
        self._open = None
        self._pending = 0

    def _make_dirs(self, partition: Path) -> None:
        if partition.is_dir():
            return
        partition.mkdir(parents=True, exist_ok=True)
        # A new directory's entry is durable only once its parent is fsynced.
        _fsync(partition.parent)
        _fsync(self.directory)

    def _remove_stale_temporaries(self) -> None:
        """Remove temporary files a crash left: this host's whose process is gone, and any
        untouched for an hour (another host's). A live writer's temporary file stays."""
        now = time.time()
        for tmp in self.directory.glob(f"date=*/hour=*/.*{_TMP_SUFFIX}"):
            parts = tmp.name[1 : -len(_TMP_SUFFIX)].rsplit(".", 2)
            try:
                stale = (len(parts) == 3 and parts[0] == self._host and not _alive(int(parts[1]))) or now - tmp.stat().st_mtime > _STALE_TMP_S
                if stale:
                    tmp.unlink()
            except (OSError, ValueError):
                continue  # removed meanwhile, or not a name of ours: leave it

    # -- the store -----------------------------------------------------------------------

    def _segments(self) -> list[_Segment]:
        found = (_Segment.parse(path) for path in self.directory.glob("date=*/hour=*/part-*.parquet"))
        return [segment for segment in found if segment is not None]

    def _dataset(self, segments: Sequence[_Segment]) -> Any:
        pads = require("pyarrow.dataset", extra="features", purpose="reading the parquet prediction log")
        return pads.dataset([str(s.path) for s in segments], schema=self._schema, format="parquet")

    def _by_hour_newest_first(self, since_ns: int | None = None, until_ns: int | None = None) -> list[list[_Segment]]:
        hours: dict[int, list[_Segment]] = {}
        for segment in self._segments():
            if since_ns is not None and (segment.hour + 1) * HOUR_NS <= since_ns:
                continue
            if until_ns is not None and segment.hour * HOUR_NS >= until_ns:
                continue
            hours.setdefault(segment.hour, []).append(segment)
        return [hours[hour] for hour in sorted(hours, reverse=True)]

    def get(self, request_id: str) -> PredictionRecord | None:
        """The stored record of ``request_id`` (the newest, were there several), or None."""
        pc = require("pyarrow.compute", extra="features", purpose="reading the parquet prediction log")
        for segments in self._by_hour_newest_first():
            table = self._dataset(segments).to_table(filter=pc.field("request_id") == request_id)
            if table.num_rows:
                return _records(table.sort_by([("time", "descending")]).slice(0, 1))[0]
        return None

    def query(self, query: Query) -> list[PredictionRecord]:
        """Matching records, newest first, at most ``query.limit`` (``since_ns`` inclusive,
        ``until_ns`` exclusive); reads hour partitions newest first and stops at the limit."""
        pa = _pa()
        pc = require("pyarrow.compute", extra="features", purpose="reading the parquet prediction log")
        conditions: list[Any] = []
        for name in ("deployment", "model", "version", "variant", "status"):
            value = getattr(query, name)
            if value is not None:
                conditions.append(pc.field(name) == value)
        if query.errors_only:
            conditions.append(pc.field("status") >= 400)
        if query.degraded is not None:
            degraded = pc.field("degraded").is_valid()
            conditions.append(degraded if query.degraded else ~degraded)
        stamp = pa.timestamp("ns", tz="UTC")
        if query.since_ns is not None:
            conditions.append(pc.field("time") >= pa.scalar(query.since_ns, type=stamp))
        if query.until_ns is not None:
            conditions.append(pc.field("time") < pa.scalar(query.until_ns, type=stamp))
        expression = None
        for condition in conditions:
            expression = condition if expression is None else expression & condition
        found: list[PredictionRecord] = []
        for segments in self._by_hour_newest_first(query.since_ns, query.until_ns):
            if len(found) >= query.limit:
                break
            table = self._dataset(segments).to_table(filter=expression)
            table = table.sort_by([("time", "descending")]).slice(0, query.limit - len(found))
            found.extend(_records(table))
        return found

    def chains(self) -> list[str]:
        """The chains with a closed segment here, sorted."""
        return sorted({segment.chain for segment in self._segments()})

    def chain(self, name: str) -> Iterator[PredictionRecord]:
        """One chain's records by position, one segment at a time."""
        segments = sorted((s for s in self._segments() if s.chain == name), key=lambda s: (s.first, s.last))
        for segment in segments:
            table = self._dataset([segment]).to_table().sort_by("seq")
            yield from _records(table)

    def delete_older(self, cutoff_ns: int) -> int:
        """Delete every segment file whose records are all older than ``cutoff_ns``; returns
        how many records went. A segment straddling the cutoff stays until it is wholly older."""
        pq = require("pyarrow.parquet", extra="features", purpose="the parquet prediction log's retention")
        deleted = 0
        for segment in self._segments():
            if segment.hour * HOUR_NS >= cutoff_ns:
                continue
            try:
                metadata = pq.read_metadata(segment.path)
                if (segment.hour + 1) * HOUR_NS > cutoff_ns and _newest_ns(segment.path) >= cutoff_ns:
                    continue
                segment.path.unlink()
            except FileNotFoundError:
                continue  # another process's retention got there first
            deleted += metadata.num_rows
            for directory in (segment.path.parent, segment.path.parent.parent):
                try:
                    directory.rmdir()
                except OSError:
                    break  # not empty: other segments (or a writer's temporary file) live there
        return deleted


def _newest_ns(path: Path) -> int:
    """The newest ``time`` in a segment file (one column read)."""
    pa = _pa()
    pq = require("pyarrow.parquet", extra="features", purpose="the parquet prediction log's retention")
    times = pq.read_table(path, columns=["time"])["time"].cast(pa.int64())
    newest = require("pyarrow.compute", extra="features", purpose="the parquet prediction log's retention").max(times).as_py()
    return -1 if newest is None else int(newest)


def _records(table: Any) -> list[PredictionRecord]:
    """Records from a table of this sink's schema (nested parts decoded from their JSON)."""
    pa = _pa()
    table = table.set_column(table.schema.get_field_index("time"), "time", table["time"].cast(pa.int64()))
    records = []
    for row in table.to_pylist():
        row["time_ns"] = row.pop("time")
        for name in _NESTED:
            if row[name] is not None:
                row[name] = msgspec.json.decode(row[name])
        records.append(msgspec.convert({k: v for k, v in row.items() if v is not None}, PredictionRecord))
    return records


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True
