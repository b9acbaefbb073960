"""Training sets on any engine: ``build_training_set(..., engine="numpy" | "duckdb" | "spark")``.

>>> ts = build_training_set("events/", [card_activity], label="is_fraud",
...                         engine="duckdb", output="training/")  # doctest: +SKIP
>>> ts.path, ts.rows, ts.profile["amount_mean_30d"].quantile(0.5)  # doctest: +SKIP

The same definitions give the same values on every engine (the conformance suite,
``tests/features/engines``, holds DuckDB and Spark to the numpy engine's values). Rows stay
in memory as a DataFrame (``output=None``, for sets that fit) or are written as Parquet
partitioned by the event's date (``output=DIR``, for sets that do not); either way the
:class:`~stalwart.features.TrainingSet` carries the features' profile, so
``register_model(..., training_set=ts)`` learns its schema without the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.features.readers import SourceReader
from stalwart.features.training import TrainingSet
from stalwart.features.training import build_training_set as build_in_memory
from stalwart.offline.batches import arrow_to_numpy
from stalwart.offline.engine import Job, OfflineEngine
from stalwart.offline.engines import resolve_engine
from stalwart.offline.numpy_engine import NumpyEngine
from stalwart.offline.plan import make_plan
from stalwart.project import feature_refs
from stalwart.project.feature_sets import FeatureLike, feature_sets_of

__all__ = ["build_training_set"]


def build_training_set(
    events: Any,
    features: Sequence[FeatureLike],
    *,
    timestamp: str = "ts",
    label: str | None = None,
    engine: str | OfflineEngine = "numpy",
    output: str | Path | None = None,
    partition: str = "event_date",
    settings: Settings | None = None,
    root: Path | None = None,
    readers: dict[str, SourceReader] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> TrainingSet:
    """A point-in-time correct training set for ``events``.

    ``events``: a pandas DataFrame, or the path of a Parquet file or directory of Parquet
    files (hive partitions included) with the entity keys, ``timestamp``, the label if
    any, and every request-time value the features use. Each feature of each event is
    computed from rows at or before that event's time only, on ``engine`` (a name, or a
    configured :class:`~stalwart.offline.engine.OfflineEngine`).

    ``output``: None keeps the rows in memory (``ts.frame``, in event order); a directory
    gets them as Parquet, partitioned by ``partition`` (the event's UTC date), and
    ``ts.frame`` is None. ``progress(step, rows)`` hears what is being done.
    ``readers`` (tests, custom sources) work on the numpy engine only.
    """
    start = time.perf_counter()
    refs = feature_refs(features)
    chosen = resolve_engine(engine)
    out = Path(output) if output is not None else None
    if isinstance(chosen, NumpyEngine):
        if isinstance(events, str | Path) or out is not None:
            plan = make_plan(refs, timestamp=timestamp, label=label)
            return chosen.build(Job(plan=plan, events=events, output=out, partition=partition, root=root, settings=settings, progress=progress))
        told = (lambda step: progress(step, 0)) if progress is not None else None
        return build_in_memory(events, features, timestamp=timestamp, label=label, settings=settings, root=root, readers=readers, progress=told)
    if readers:
        raise ConfigError(f"readers= works on the numpy engine only; the {chosen.name} engine reads sources itself")
    if not isinstance(events, str | Path):
        _check_events(events, make_plan(refs, timestamp=timestamp, label=label).event_columns())
    plan = make_plan(refs, timestamp=timestamp, label=label)
    job = Job(plan=plan, events=events, output=out, partition=partition, root=root, settings=settings, progress=progress)
    computed = chosen.compute(job)
    frame = None
    if computed.table is not None:
        frame = _frame(computed.table, events if not isinstance(events, str | Path) else None, plan.output_columns(), plan.features)
    return TrainingSet(
        frame=frame,
        features=plan.features,
        refs=refs,
        label=label,
        timestamp=timestamp,
        built_seconds=time.perf_counter() - start,
        profile=computed.profile,
        feature_set_versions={fs.name: fs.version for fs in feature_sets_of(refs)},
        path=computed.path,
        rows=computed.rows,
        engine=chosen.name,
    )


def _check_events(events: Any, needed: Sequence[str]) -> None:
    columns = set(getattr(events, "columns", []))
    if not columns:
        raise ConfigError("events must be a pandas DataFrame, or the path of Parquet events, with entity keys and a timestamp column")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ConfigError(f"events have no column {', '.join(repr(m) for m in missing)}; they need {list(needed)}")


def _frame(table: Any, events: Any, columns: Sequence[str], features: Sequence[str]) -> Any:
    """The output DataFrame, built as the numpy engine builds its own: in-memory events
    give their keys, time and label exactly as given; features are numpy columns (floats
    with NaN, strings as objects with None)."""
    pd = require("pandas", extra="features", purpose="training sets")
    frame = pd.DataFrame({c: events[c].to_numpy() if events is not None else arrow_to_numpy(table.column(c)) for c in columns if c not in features})
    for name in features:
        frame[name] = arrow_to_numpy(table.column(name))
    return frame[list(columns)]
