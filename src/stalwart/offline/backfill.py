"""Log analytics: profiles, drift and realised accuracy recomputed from the prediction log.

>>> report = backfill(settings, "fraud", since, until, engine="duckdb")  # doctest: +SKIP
>>> report.versions[0].drift.share  # doctest: +SKIP

The prediction log's Parquet segments (:mod:`stalwart.monitoring.sinks.parquet`,
hive-partitioned by date and hour) are scanned in place by DuckDB or Spark: partitions
pruned to the period, records of the deployment answered by a model (status below 400,
not a degraded default or last good answer), joined with their labels from the
``feedback`` table by request id. Each batch (DuckDB) or partition (Spark) becomes one
profile per model version and hour, with the columns live profiles name
(``feature:<name>``, ``input:<name>``, ``output:<name>[<j>]``), and counts of labelled and
correctly classified rows; the driver merges them (profiles are mergeable sketches) and
scores each version's profile against its training profile, as ``stalwart monitor
report`` does with live profiles. So a period live profiles never saw (an outage, a
metric added later) can be looked at after the fact, from the log itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import select

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.drift import DatasetDrift, dataset_drift
from stalwart.monitoring.feedback import LoggedPrediction
from stalwart.monitoring.monitor import baseline_profile, training_profile
from stalwart.monitoring.profiles import Profile
from stalwart.monitoring.quality import OutputReading, classified_rows
from stalwart.offline.engine import OfflineEngine
from stalwart.offline.engines import resolve_engine
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["Backfill", "VersionWindow", "backfill", "summarize_records"]

HOUR_NS = 3_600_000_000_000
_COLUMNS = ["request_id", "time", "variant", "model", "version", "rows", "features", "inputs", "outputs", "label"]


@dataclass
class VersionWindow:
    """One model version's share of the period: rows answered, the merged profile, its
    drift against the version's training profile (None without one), labelled rows and
    how many of them it classified right."""

    variant: str
    model: str
    version: int
    rows: int
    profile: Profile
    drift: DatasetDrift | None = None
    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "drift": self.drift.to_dict() if self.drift is not None else None,
            "missing_rate": {name: p.missing_fraction for name, p in self.profile.items()},
        }


@dataclass
class Backfill:
    """What the log says of one deployment over ``[since, until)``: each version's window,
    and the profile of each (variant, model, version, hour) for whoever stores them."""

    deployment: str
    since: datetime
    until: datetime
    engine: str
    records: int = 0
    versions: list[VersionWindow] = field(default_factory=list)
    hours: dict[tuple[str, str, int, int], Profile] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "since": self.since.astimezone(UTC).isoformat(),
            "until": self.until.astimezone(UTC).isoformat(),
            "engine": self.engine,
            "records": self.records,
            "versions": [v.to_dict() for v in self.versions],
            "hours": [
                {"variant": v, "model": m, "version": ver, "hour": datetime.fromtimestamp(h * 3600, UTC).isoformat(), "rows": p.rows}
                for (v, m, ver, h), p in sorted(self.hours.items(), key=lambda kv: (kv[0][3], kv[0][:3]))
            ],
        }


def backfill(
    settings: Settings,
    deployment: str,
    since: datetime,
    until: datetime,
    *,
    engine: str | OfflineEngine = "duckdb",
    log_dir: Path | None = None,
    reading: OutputReading | None = None,
) -> Backfill:
    """Profiles, drift and accuracy of ``deployment`` over ``[since, until)`` from the
    prediction log's Parquet segments under ``log_dir`` (default: the settings' log
    directory) and the labels in the registry's database (see the module docstring)."""
    directory = log_dir or settings.prediction_log_dir or settings.home.resolve() / "predictions"
    if not directory.is_dir():
        raise ConfigError(f"no prediction log segments at {directory}; set STALWART_PREDICTION_LOG_DIR or --log-dir")
    chosen = resolve_engine(engine)
    since_ns, until_ns = _ns(since), _ns(until)
    database = Database(settings.resolved_db_url())
    try:
        labels = _labels(database, deployment)
        reading = reading or OutputReading()
        if chosen.name == "duckdb":
            parts = _duckdb(directory, deployment, since_ns, until_ns, labels, reading)
        elif chosen.name == "spark":
            parts = _spark(chosen, directory, deployment, since_ns, until_ns, labels, reading)
        else:
            raise ConfigError(f"the backfill runs on duckdb or spark, not {chosen.name}")
        report = Backfill(deployment, since, until, chosen.name)
        totals: dict[tuple[str, str, int], list[Any]] = {}
        for part in parts:
            key = (part["variant"], part["model"], int(part["version"]))
            hour = (*key, int(part["hour"]))
            profile = Profile.from_dict(json.loads(part["profile"]))
            report.hours[hour] = report.hours[hour].merge(profile) if hour in report.hours else profile
            total = totals.setdefault(key, [Profile(), 0, 0, 0])
            total[0] = total[0].merge(profile)
            total[1] += int(part["records"])
            total[2] += int(part["labelled"])
            total[3] += int(part["correct"])
        for (variant, model, version), (profile, records, labelled, correct) in sorted(totals.items(), key=lambda kv: -kv[1][0].rows):
            report.records += records
            window = VersionWindow(variant, model, version, profile.rows, profile, labelled=labelled, correct=correct)
            training = training_profile(database, model, version)
            if training is not None:
                baseline = baseline_profile(training, profile)
                names = [n for n in baseline if n in profile]
                if names:
                    window.drift = dataset_drift(
                        Profile({n: baseline[n] for n in names}, rows=baseline.rows),
                        Profile({n: profile[n] for n in names}, rows=profile.rows),
                    )
            report.versions.append(window)
        return report
    finally:
        database.dispose()


def _ns(moment: datetime) -> int:
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def _labels(database: Database, deployment: str) -> Any:
    """The deployment's labels given by request id, as Arrow (request id, row, label JSON),
    the latest per (request, row)."""
    pa = require("pyarrow", extra="duckdb", purpose="the log backfill")
    fb = t.feedback
    statement = (
        select(fb.c.request_id, fb.c.row_index, fb.c.label, fb.c.received_at_ns)
        .where(fb.c.request_id.is_not(None), (fb.c.deployment == deployment) | fb.c.deployment.is_(None))
        .order_by(fb.c.received_at_ns)
    )
    with database.read() as conn:
        rows = conn.execute(statement).all()
    latest: dict[tuple[str, int], str] = {}
    for request_id, row_index, label, _received in rows:
        latest[(str(request_id), int(row_index or 0))] = json.dumps(label)
    return pa.table({
        "request_id": pa.array([k[0] for k in latest], type=pa.string()),
        "row_index": pa.array([k[1] for k in latest], type=pa.int64()),
        "label": pa.array(list(latest.values()), type=pa.string()),
    })


def _where(since_ns: int, until_ns: int) -> tuple[list[str], list[str]]:
    """The dates and (date, hour) partitions of the period: what the scan may read."""
    first, last = since_ns // HOUR_NS, (until_ns - 1) // HOUR_NS
    hours = [datetime.fromtimestamp(h * 3600, UTC) for h in range(first, last + 1)]
    return sorted({f"{h:%Y-%m-%d}" for h in hours}), [f"{h:%Y-%m-%d}/{h:%H}" for h in hours]


def _duckdb(directory: Path, deployment: str, since_ns: int, until_ns: int, labels: Any, reading: OutputReading) -> list[dict[str, Any]]:
    from stalwart.offline.duckdb_engine import DuckDBEngine

    duckdb = require("duckdb", extra="duckdb", purpose="the log backfill")
    conn = DuckDBEngine().connect()
    try:
        conn.register("labels_arrow", labels)
        dates, _ = _where(since_ns, until_ns)
        listed = ", ".join("'" + d + "'" for d in dates)
        pattern = str(directory / "date=*" / "hour=*" / "part-*.parquet").replace("'", "''")
        query = f"""
            WITH rows AS (
                SELECT request_id, epoch_ns(time) AS time, coalesce(variant, '') AS variant, model, version, rows,
                       features, inputs, outputs
                FROM read_parquet('{pattern}', hive_partitioning = true, hive_types_autocast = false, union_by_name = true)
                WHERE date IN ({listed}) AND deployment = $deployment AND status < 400 AND degraded IS NULL
                  AND epoch_ns(time) >= $since AND epoch_ns(time) < $until
            ),
            labelled AS (SELECT request_id, list(struct_pack(row_index, label)) AS label FROM labels_arrow GROUP BY request_id)
            SELECT rows.*, labelled.label FROM rows LEFT JOIN labelled USING (request_id)
        """  # noqa: S608 - the pattern and dates are ours, quoted; values are parameters
        try:
            reader = conn.sql(query, params={"deployment": deployment, "since": since_ns, "until": until_ns}).to_arrow_reader(65_536)
            return [part for batch in reader for part in summarize_records(batch, reading)]
        except duckdb.Error as exc:
            if "No files found" in str(exc):  # no segment at all yet
                return []
            raise ConfigError(f"reading the prediction log at {directory} failed: {exc}") from exc
    finally:
        conn.close()


def _spark(engine: Any, directory: Path, deployment: str, since_ns: int, until_ns: int, labels: Any, reading: OutputReading) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    spark = engine.spark()
    _, hours = _where(since_ns, until_ns)
    paths = [str(directory / f"date={h.split('/')[0]}" / f"hour={h.split('/')[1]}") for h in hours]
    paths = [p for p in paths if Path(p).is_dir()]
    if not paths:
        return []
    log = spark.read.option("basePath", str(directory)).parquet(*paths)
    stamp = F.col("time").cast("long") if dict(log.dtypes)["time"] == "bigint" else F.unix_micros(F.col("time")) * F.lit(1000)
    rows = log.where(
        (F.col("deployment") == deployment) & (F.col("status") < 400) & F.col("degraded").isNull()
    ).select(
        "request_id", stamp.alias("time"), F.coalesce(F.col("variant"), F.lit("")).alias("variant"), "model", "version", "rows",
        "features", "inputs", "outputs",
    ).where((F.col("time") >= F.lit(since_ns)) & (F.col("time") < F.lit(until_ns)))
    given = spark.createDataFrame(labels).groupBy("request_id").agg(
        F.collect_list(F.struct("row_index", "label")).alias("label")
    )
    joined = rows.join(given, on="request_id", how="left")

    def parts(batches: Iterator[Any]) -> Iterator[Any]:
        pa = require("pyarrow", extra="spark", purpose="the log backfill")
        found = [part for batch in batches for part in summarize_records(batch, reading)]
        yield pa.RecordBatch.from_pylist(found, schema=_PART_SCHEMA())

    collected = joined.mapInArrow(parts, "variant string, model string, version long, hour long, records long, labelled long, correct long, profile string").collect()
    return [row.asDict() for row in collected]


def _PART_SCHEMA() -> Any:
    pa = require("pyarrow", extra="duckdb", purpose="the log backfill")
    return pa.schema([
        ("variant", pa.string()), ("model", pa.string()), ("version", pa.int64()), ("hour", pa.int64()),
        ("records", pa.int64()), ("labelled", pa.int64()), ("correct", pa.int64()), ("profile", pa.string()),
    ])


def summarize_records(batch: Any, reading: OutputReading) -> list[dict[str, Any]]:
    """One batch of log rows (see the module docstring) as partial results, one per
    (variant, model, version, hour): the profile of its columns (JSON), records, labelled
    rows and rows classified right."""
    groups: dict[tuple[str, str, int, int], _Group] = {}
    for row in batch.to_pylist():
        key = (row["variant"] or "", row["model"] or "", int(row["version"] or 0), int(row["time"]) // HOUR_NS)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(row)
    out = []
    for (variant, model, version, hour), group in groups.items():
        profile = Profile()
        profile.update(group.columns())
        labelled, correct = group.accuracy(reading)
        out.append({
            "variant": variant, "model": model, "version": version, "hour": hour, "records": group.records,
            "labelled": labelled, "correct": correct, "profile": json.dumps(profile.to_dict()),
        })
    return out


class _Group:
    """The records of one (variant, model, version, hour) in one batch."""

    def __init__(self) -> None:
        self.records = 0
        self.values: dict[str, list[Any]] = {}
        self.rows = 0
        self.logged: list[LoggedPrediction] = []
        self.labels: dict[tuple[str, int], Any] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        n = int(row["rows"] or 0)
        self.records += 1
        features = _decode(row["features"])
        inputs = _decode(row["inputs"])
        outputs = _decode(row["outputs"])
        for prefix, part in (("feature:", features), ("input:", inputs), ("output:", outputs)):
            for name, values in part.items():
                self._column(prefix + name, values, n)
        self.rows += n
        for column in self.values.values():  # a column this record lacks is missing in its rows
            column.extend([None] * (self.rows - len(column)))
        for item in row.get("label") or ():
            self.labels[(row["request_id"], int(item["row_index"]))] = json.loads(item["label"])
        if row.get("label"):
            self.logged.append(LoggedPrediction(request_id=row["request_id"], time_ns=int(row["time"]), rows=n, outputs=outputs))

    def _column(self, name: str, values: Any, n: int) -> None:
        if not isinstance(values, list) or len(values) != n:
            return  # a summary of a large tensor, or a hash: nothing to profile
        if values and isinstance(values[0], list):
            width = len(values[0])
            if width > 256 or not all(isinstance(v, list) and len(v) == width for v in values):
                return
            for j in range(width):
                self._extend(f"{name}[{j}]", [v[j] for v in values])
            return
        self._extend(name, values)

    def _extend(self, name: str, values: list[Any]) -> None:
        column = self.values.get(name)
        if column is None:
            # A column first seen now was absent from the earlier rows (another version's
            # features): they are missing, as they would be in a live profile.
            column = self.values[name] = [None] * (self.rows)
        column.extend(values)

    def columns(self) -> dict[str, Any]:
        return {name: _typed(values) for name, values in self.values.items()}

    def accuracy(self, reading: OutputReading) -> tuple[int, int]:
        if not self.logged:
            return 0, 0
        found = classified_rows(self.logged, self.labels, reading)
        if found is None:
            return 0, 0
        _records, right = found
        return len(right), int(np.count_nonzero(right))


def _decode(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = msgspec.json.decode(text)
    return value if isinstance(value, dict) else {}



def _typed(values: Sequence[Any]) -> Any:
    """A column of JSON values as a profile reads it (numbers typed, nulls kept as nulls:
    the log wrote a missing number, NaN, as null)."""
    from stalwart.monitoring.profiles import column_array

    return column_array(list(values))
