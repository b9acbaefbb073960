"""The Spark engine: a feature list compiled to DataFrame operations, run on a cluster (or
``local[N]``).

Per feature set, the events and the source's rows are put in one ``unionByName`` and
partitioned by entity key, then:

- ``Latest``: ordered by (time, source rows before events, source order), the last source
  row so far (``last(..., ignorenulls)`` of a struct that only source rows have) is each
  event's latest row, with its time for ``max_age``: ties resolve by source order, as in
  the numpy engine;
- ``Window``: ordered by the int64-nanosecond time, each aggregate over
  ``rangeBetween(-(w - 1), currentRow)``: exactly ``(t - w, t]``, rows at the event's own
  time included (they are its peers).

Times are int64 nanoseconds throughout (Spark's own timestamps hold microseconds): Parquet
nanosecond timestamps are read as longs (``spark.sql.legacy.parquet.nanosAsLong``), others
converted; in-memory events and SQL or CSV sources arrive as Arrow with their times
converted by ``to_ns``, as the numpy engine converts them. Transforms, names and order run
in the executors (``mapInArrow`` with :class:`~stalwart.offline.batches.Finish`), and the
profile is one profile per partition, merged on the driver.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stalwart._optional import require
from stalwart.errors import ConfigError
from stalwart.features.readers import dataset_files
from stalwart.monitoring.profiles import Profile
from stalwart.offline.batches import Finish
from stalwart.offline.engine import Computed, Job
from stalwart.offline.outputs import batch_profile, collect, merge_profiles, prepare_output
from stalwart.offline.plan import ColumnKind, SetPlan
from stalwart.offline.sources import (
    ORDER,
    ROW,
    TS,
    csv_batches,
    events_table,
    sql_batches,
    with_event_columns,
)
from stalwart.project import CallableSource, FileSource, Source, SqlSource, Window
from stalwart.storage import DatabasePool

__all__ = ["SparkEngine", "spark_session"]

_FILE_STRIDE = 1 << 40
_NUMBER_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double", "boolean")


def spark_session(master: str = "local[2]", *, shuffle_partitions: int = 4, app: str = "stalwart", conf: dict[str, str] | None = None) -> Any:
    """A SparkSession set up as the engine needs it (UTC, nanosecond Parquet times as
    longs, partition values as strings, this Python for the workers); the active one is
    reused. ``master``: ``local[N]`` or a cluster URL."""
    require("pyspark", extra="spark", purpose="the Spark engine")
    from pyspark.sql import SparkSession

    # Workers must run this interpreter (it has stalwart, numpy and pyarrow), not the first
    # python3 on the PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master).appName(app)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")  # no _SUCCESS files among the partitions
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _kind(spark_type: str) -> ColumnKind | None:
    if spark_type in _NUMBER_TYPES or spark_type.startswith("decimal"):
        return "number"
    if spark_type in ("string", "void"):  # void: a column of nothing but nulls (objects in numpy)
        return "string"
    return None


@dataclass
class SparkEngine:
    """Run plans on Spark (see the module docstring). ``session``: a SparkSession (default:
    :func:`spark_session`, ``local[2]``)."""

    session: Any = None
    name: str = field(default="spark", init=False)

    def spark(self) -> Any:
        if self.session is None:
            self.session = spark_session()
        return self.session

    def compute(self, job: Job) -> Computed:
        """The job's rows (see :class:`~stalwart.offline.engine.OfflineEngine`)."""
        plan = job.plan
        in_memory = not isinstance(job.events, str | Path)
        job.report(f"computing features on {self.name}")
        pool = DatabasePool(job.settings)
        try:
            frame = self.dataframe(job, pool)
            partition = job.partition if job.output is not None else None
            if partition is not None:
                from pyspark.sql import functions as F

                micros = F.floor(F.col(TS) / F.lit(1000)).cast("bigint")
                frame = frame.withColumn(partition, F.date_format(F.timestamp_micros(micros), "yyyy-MM-dd"))
            columns = plan.features if in_memory else plan.output_columns()
            carry = [*([ROW] if in_memory else []), *([partition] if partition else [])]
            finish = Finish(plan, columns=columns, carry=carry)
            finish.schema = finish.output_schema(_arrow_schema(frame))
            finished = frame.mapInArrow(finish.batches, _spark_schema(finish.schema))
            if job.output is None:
                ordered = finished.orderBy(ROW) if in_memory else finished
                batches = ordered.toArrow().to_batches()
                table, profile = collect(batches, plan.features, (lambda n: job.report("rows", n)) if job.progress else None)
                return Computed(table=table, path=None, rows=table.num_rows, profile=profile)
            if in_memory:
                # The events' own keys, time and label are in the driver's memory: taken there.
                batches = with_event_columns(finished.toArrow().to_batches(), job.events, plan, partition)
                from stalwart.offline.outputs import write_parquet

                rows, profile = write_parquet(batches, job.output, job.partition, plan.features)
                return Computed(table=None, path=job.output, rows=rows, profile=profile)
            prepare_output(job.output)
            finished.write.mode("overwrite").partitionBy(job.partition).option("compression", "zstd").parquet(str(job.output))
            rows, profile = self.profile(str(job.output), plan.features)
            return Computed(table=None, path=job.output, rows=rows, profile=profile)
        finally:
            pool.dispose()

    def profile(self, path: str, features: list[str]) -> tuple[int, Profile]:
        """Rows and the merged profile of ``features`` in a Parquet dataset: one profile
        per Spark partition, made in the executors, merged here."""
        frame = self.spark().read.parquet(path).select(*features)

        def profiles(batches: Iterator[Any]) -> Iterator[Any]:
            pa = require("pyarrow", extra="spark", purpose="the Spark engine")
            merged = Profile({}, 0)
            for batch in batches:
                merged = merged.merge(batch_profile(batch, features))
            yield pa.RecordBatch.from_pylist([{"profile": json.dumps(merged.to_dict())}])

        rows = frame.mapInArrow(profiles, "profile string").collect()
        parts = [Profile.from_dict(json.loads(row["profile"])) for row in rows]
        merged = merge_profiles(parts, features)
        return merged.rows, merged

    # -- the plan as DataFrames ----------------------------------------------------------------

    def dataframe(self, job: Job, pool: DatabasePool) -> Any:
        """The plan's result before the last step: event columns, then each feature set's
        columns under their internal names."""
        plan = job.plan
        events = self._events(job)
        event_types = dict(events.dtypes)
        for set_plan in plan.sets:
            source, kinds = self._source(set_plan, job.root, pool)
            set_plan.check_kinds(kinds, "spark")
            events, source = _keyed(events, source, set_plan, event_types)
            events = _features(events, source, set_plan).drop(*set_plan.join_keys)
        return events

    def _events(self, job: Job) -> Any:
        from pyspark.sql import functions as F

        spark = self.spark()
        plan = job.plan
        if not isinstance(job.events, str | Path):
            table = events_table(job.events, [c for c in plan.event_columns() if c != plan.timestamp], plan.timestamp)
            return spark.createDataFrame(table)
        path = Path(job.events)
        files = [f.path for f in dataset_files(path, "events")] if path.is_dir() else [path]
        if not all(f.exists() for f in files):
            raise ConfigError(f"events: {path} does not exist; give a DataFrame, a Parquet file or a directory of them")
        frame = spark.read.option("basePath", str(path)).parquet(*map(str, files)) if path.is_dir() else spark.read.parquet(str(path))
        missing = [c for c in plan.event_columns() if c not in frame.columns]
        if missing:
            raise ConfigError(f"events have no column {', '.join(repr(m) for m in missing)}; they need {plan.event_columns()}")
        stamp = _ts_column(frame, plan.timestamp)
        return frame.select(*[F.col(_q(c)) for c in plan.event_columns()], stamp.alias(TS))

    def _source(self, set_plan: SetPlan, root: Path | None, pool: DatabasePool) -> tuple[Any, dict[str, ColumnKind]]:
        from pyspark.sql import functions as F

        spark = self.spark()
        source = _offline(set_plan.feature_set.source)
        if isinstance(source, SqlSource):
            raw = spark.createDataFrame(sql_batches(source, pool(source.url), set_plan.columns).read_all())
            stamp, order = F.col(TS), F.col(ORDER)
        elif isinstance(source, FileSource):
            path = Path(source.path) if Path(source.path).is_absolute() or root is None else root / source.path
            if source.is_dataset or path.suffix != ".csv":
                files = [f.path for f in dataset_files(path, source.name)] if source.is_dataset else [path]
                if not files[0].exists():
                    raise ConfigError(f"source '{source.name}': {path} does not exist")
                reader = spark.read.option("basePath", str(path)) if source.is_dataset else spark.read
                raw = reader.parquet(*map(str, files)).select("*", "_metadata.file_path", "_metadata.row_index")
                raw = _nulls_as_strings(raw, files[0])
                uris = F.array(*[F.lit("file:" + str(f.resolve())) for f in files])
                order = (F.array_position(uris, F.col("file_path")) - 1) * F.lit(_FILE_STRIDE) + F.col("row_index")
            else:
                raw = spark.createDataFrame(csv_batches(path, source.name).read_all())
                order = F.col(ORDER)
            stamp = None
        else:
            raise ConfigError(f"source '{source.name}' ({type(source).__name__}) has no rows to read")
        types = dict(raw.dtypes)
        kinds = set_plan.column_kinds(types, _kind, timestamp=source.timestamp if stamp is None else None)
        values = []
        for column, kind in kinds.items():
            col = F.col(_q(column))
            if kind == "number":
                number = col.cast("double")
                col = F.when(F.isnan(number), F.lit(None)).otherwise(number)
            values.append(col.alias(set_plan.value_column(column)))
        time_col = stamp if stamp is not None else _ts_column(raw, source.timestamp)
        frame = raw.select(*[F.col(_q(k)) for k in set_plan.keys], time_col.alias(TS), order.alias(ORDER), *values)
        return frame, kinds


def _features(events: Any, source: Any, set_plan: SetPlan) -> Any:
    """``events`` with the set's ``Latest`` and ``Window`` columns."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    i = set_plan.index
    keys = set_plan.join_keys
    kind, one = f"__kind{i}", f"__one{i}"
    union = events.withColumn(kind, F.lit(1)).unionByName(
        source.withColumn(kind, F.lit(0)).withColumn(one, F.lit(1)), allowMissingColumns=True
    )
    helpers = [kind, one, ORDER, *(set_plan.value_column(c) for c in set_plan.columns)]
    columns: list[Any] = []
    if set_plan.latest:
        picked = list(dict.fromkeys(f.column for f in set_plan.latest))
        row = F.when(F.col(kind) == 0, F.struct(F.col(TS).alias("ts"), *[F.col(set_plan.value_column(c)).alias(f"v{j}") for j, c in enumerate(picked)]))
        spec = W.partitionBy(*keys).orderBy(TS, kind, ORDER).rowsBetween(W.unboundedPreceding, W.currentRow)
        last = f"__last{i}"
        union = union.withColumn(last, F.last(row, ignorenulls=True).over(spec))
        helpers.append(last)
        for feature in set_plan.latest:
            value = F.col(f"{last}.v{picked.index(feature.column)}")
            if feature.max_age_ns is not None:
                value = F.when(F.col(TS) - F.col(f"{last}.ts") <= F.lit(feature.max_age_ns), value)
            columns.append(F.coalesce(value, F.lit(feature.default)).alias(set_plan.name(feature.name)))
    for width, aggregates in set_plan.windows.items():
        frame = W.partitionBy(*keys).orderBy(TS).rangeBetween(-(width - 1), W.currentRow)
        for aggregate in aggregates:
            columns.append(_aggregate(aggregate, set_plan, one, frame).alias(set_plan.name(aggregate.name)))
    kept = [F.col(_q(c)) for c in union.columns if c not in helpers]
    return union.select(*kept, *columns, F.col(kind)).where(F.col(kind) == 1).drop(kind)


def _aggregate(feature: Window, set_plan: SetPlan, one: str, spec: Any) -> Any:
    from pyspark.sql import functions as F

    if feature.column is None:
        return F.count(one).over(spec)
    value = F.col(set_plan.value_column(feature.column))
    count = F.count(value).over(spec)
    default = F.lit(feature.default)
    if feature.agg == "count":
        return count
    if feature.agg == "sum":
        return F.coalesce(F.sum(value).over(spec), F.lit(0.0))
    if feature.agg == "mean":
        return F.when(count == 0, default).otherwise(F.sum(value).over(spec) / count)
    extreme = F.min(value) if feature.agg == "min" else F.max(value)
    return F.coalesce(extreme.over(spec), default)


def _keyed(events: Any, source: Any, set_plan: SetPlan, event_types: dict[str, str]) -> tuple[Any, Any]:
    """Both sides with the set's join keys (:attr:`SetPlan.join_keys`); the source
    without its own key columns, which must not mix into the events' in the union."""
    from pyspark.sql import functions as F

    source_types = dict(source.dtypes)
    for key, name in zip(set_plan.keys, set_plan.join_keys, strict=True):
        text = _kind(event_types[key]) != _kind(source_types[key])
        events = events.withColumn(name, F.col(_q(key)).cast("string") if text else F.col(_q(key)))
        source = source.withColumn(name, F.col(_q(key)).cast("string") if text else F.col(_q(key)))
    return events, source.drop(*set_plan.keys)


def _ts_column(frame: Any, column: str) -> Any:
    """A time column as int64 ns since the epoch (UTC), as ``to_ns`` reads it."""
    from pyspark.sql import functions as F

    kind = dict(frame.dtypes)[column]
    col = F.col(_q(column))
    if kind in ("timestamp", "timestamp_ntz"):
        return F.unix_micros(col.cast("timestamp")) * F.lit(1000)
    if kind == "date":
        return F.unix_micros(col.cast("timestamp")) * F.lit(1000)
    if kind in ("tinyint", "smallint", "int"):
        return col.cast("bigint") * F.lit(1_000_000_000)
    if kind == "bigint":
        # Parquet nanosecond timestamps arrive as longs (nanosAsLong); other longs are seconds.
        return col if _is_nanos(frame, column) else col * F.lit(1_000_000_000)
    if kind in ("float", "double") or kind.startswith("decimal"):
        return F.bround(col.cast("double") * F.lit(1e9), 0).cast("bigint")
    if kind == "string":
        return F.unix_micros(F.to_timestamp(col)) * F.lit(1000)
    raise ConfigError(f"cannot read timestamps of type {kind} in column '{column}'; use datetimes or epoch seconds")


def _nulls_as_strings(frame: Any, file: Path) -> Any:
    """Columns of nothing but nulls (Parquet's null type, which Spark reads as integers)
    as strings: numpy holds them as objects."""
    from pyspark.sql import functions as F

    pa = require("pyarrow", extra="spark", purpose="the Spark engine")
    pq = require("pyarrow.parquet", extra="spark", purpose="the Spark engine")
    schema = pq.read_schema(file)
    empty = [name for name in schema.names if pa.types.is_null(schema.field(name).type)]
    return frame.withColumns({name: F.col(_q(name)).cast("string") for name in empty}) if empty else frame


def _is_nanos(frame: Any, column: str) -> bool:
    """Whether a long column was a nanosecond timestamp in its Parquet files."""
    pq = require("pyarrow.parquet", extra="spark", purpose="the Spark engine")
    files = frame.inputFiles()
    if not files:
        return False
    schema = pq.read_schema(files[0].removeprefix("file:"))
    return column in schema.names and str(schema.field(column).type).startswith("timestamp")


def _offline(source: Source) -> Source:
    return source.offline if isinstance(source, CallableSource) else source


def _q(name: str) -> str:
    return f"`{name}`"


def _arrow_schema(frame: Any) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(frame.schema, timezone="UTC")


def _spark_schema(schema: Any) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)
