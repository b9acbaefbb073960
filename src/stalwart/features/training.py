"""Point-in-time correct training sets.

>>> ts = build_training_set(events, [card_activity, txn.amount], label="is_fraud")  # doctest: +SKIP
>>> model.fit(ts.X, ts.y)                                                             # doctest: +SKIP
>>> stalwart.register_model("fraud", model, training_set=ts)                          # doctest: +SKIP

For each event (entity keys, a timestamp, optionally a label), every feature is computed
from the source rows of that entity at or before the event's time, exactly as the online
path computes it for a request at that time: same engine, same rules. Request-time values
come from the events' own columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.features.engine import Queries, compute
from stalwart.features.readers import SourceReader, frame_column, make_reader
from stalwart.features.timecodec import to_ns
from stalwart.project import FeatureRef, RequestField, feature_refs
from stalwart.project.feature_sets import FeatureLike, feature_sets_of, names_in, request_fields_of
from stalwart.storage import DatabasePool

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import Profile

__all__ = ["TrainingSet", "build_training_set", "feature_spec"]


@dataclass
class TrainingSet:
    """A training frame and what it was built from.

    ``frame`` holds the entity keys, the event time, one column per feature (in
    ``features`` order) and the label. Registering a model with ``training_set=`` keeps
    the feature list, the FeatureSet versions and ``profile``, so serving computes exactly
    these features and validation compares requests with this data.
    """

    frame: Any
    features: list[str]
    refs: list[FeatureRef | RequestField]
    label: str | None
    timestamp: str
    built_seconds: float
    profile: Profile | None = None
    feature_set_versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # where a set too big for memory was written (Parquet); frame is None then
    rows: int | None = None  # rows of a set written to ``path``
    engine: str = "numpy"  # the engine that computed it

    @property
    def row_count(self) -> int:
        """How many events the set has, in memory or on disk."""
        return len(self.frame) if self.frame is not None else int(self.rows or 0)

    def _in_memory(self) -> Any:
        if self.frame is None:
            raise ConfigError(
                f"this training set was written to {self.path} rather than held in memory; "
                f"read it from there (pandas.read_parquet, duckdb, spark), or build it without output="
            )
        return self.frame

    @property
    def X(self) -> np.ndarray[Any, Any]:
        """The features as one float64 matrix, in ``features`` order."""
        self._in_memory()
        try:
            return np.asarray(self.frame[self.features].to_numpy(dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"some features are not numbers ({exc}); encode them with a Transform, or "
                f"train on ts.frame[ts.features] with a model that takes strings"
            ) from exc

    @property
    def y(self) -> np.ndarray[Any, Any]:
        if self.label is None:
            raise ConfigError("this training set was built without a label; pass label= to build_training_set")
        return np.asarray(self._in_memory()[self.label].to_numpy())

    def sample(self, n: int = 100) -> Any:
        """The first ``n`` rows of the features (a DataFrame), from memory or from the
        Parquet files the set was written to (reading only what it needs)."""
        if self.frame is not None:
            return self.frame[self.features].head(n)
        ds = require("pyarrow.dataset", extra="features", purpose="reading a training set written to Parquet")
        dataset = ds.dataset(str(self.path), format="parquet", partitioning="hive")
        return dataset.head(n, columns=self.features).to_pandas()

    def metadata(self) -> dict[str, Any]:
        """What the registry keeps with a model trained on this set."""
        return {
            "features": [feature_spec(ref) for ref in self.refs],
            "feature_sets": dict(self.feature_set_versions),
            "label": self.label,
            "rows": self.row_count,
            "built_at": time.time(),
        }


def feature_spec(ref: FeatureRef | RequestField) -> dict[str, Any]:
    """A feature as recorded with a model: its set and that set's version, or its request source."""
    if isinstance(ref, RequestField):
        return {"name": ref.name, "request": ref.source, "type": ref.type}
    return {"name": ref.name, "set": ref.feature_set.name, "version": ref.feature_set.version}


def build_training_set(
    events: Any,
    features: Sequence[FeatureLike],
    *,
    timestamp: str = "ts",
    label: str | None = None,
    settings: Settings | None = None,
    root: Path | None = None,
    readers: dict[str, SourceReader] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingSet:
    """A point-in-time correct training set for ``events`` (a pandas DataFrame).

    ``events`` needs the key columns of every entity involved, ``timestamp``, the label if
    any, and a column for every request-time value the features use. Each feature of each
    event is computed from rows at or before that event's time only.
    """
    pd = require("pandas", extra="features", purpose="training sets")
    start = time.perf_counter()
    refs = feature_refs(features)
    _check_events(events, refs, timestamp, label)
    as_of = to_ns(events[timestamp])
    request_values = {
        (field_.source, field_.name): frame_column(events[field_.name])
        for field_ in request_fields_of(refs)
    }
    pool = DatabasePool(settings)
    columns: dict[str, np.ndarray[Any, Any]] = {}
    versions: dict[str, str] = {}
    try:
        for feature_set in feature_sets_of(refs):
            if progress is not None:
                progress(f"computing {feature_set.name}")
            reader = (readers or {}).get(feature_set.source.name) or make_reader(feature_set.source, pool, root)
            wanted = names_in(feature_set, refs)
            rows = reader.read_all(feature_set.source_columns(wanted))
            queries = Queries(keys=[frame_column(events[k]) for k in feature_set.entity.keys], ts=as_of)
            computed = compute(feature_set, queries, rows, request_values, wanted)
            columns.update(computed.columns)
            versions[feature_set.name] = feature_set.version
    finally:
        pool.dispose()
    frame = pd.DataFrame({
        **{k: events[k].to_numpy() for k in _key_columns(refs)},
        timestamp: events[timestamp].to_numpy(),
    })
    for ref in refs:
        frame[ref.name] = request_values[(ref.source, ref.name)] if isinstance(ref, RequestField) else columns[ref.name]
    if label is not None:
        frame[label] = events[label].to_numpy()
    # What validation learns its schema from and drift is measured against: a mergeable
    # summary of each feature over the whole training set (about 0.1 s per million values).
    from stalwart.monitoring.profiles import Profile

    profile = Profile.of(frame[[ref.name for ref in refs]])
    return TrainingSet(
        frame=frame,
        features=[ref.name for ref in refs],
        refs=refs,
        label=label,
        timestamp=timestamp,
        built_seconds=time.perf_counter() - start,
        profile=profile,
        feature_set_versions=versions,
    )


def _key_columns(refs: Sequence[FeatureRef | RequestField]) -> list[str]:
    keys: list[str] = []
    for feature_set in feature_sets_of(refs):
        keys.extend(k for k in feature_set.entity.keys if k not in keys)
    return keys


def _check_events(events: Any, refs: Sequence[FeatureRef | RequestField], timestamp: str, label: str | None) -> None:
    columns = set(getattr(events, "columns", []))
    if not columns:
        raise ConfigError("events must be a pandas DataFrame with entity keys and a timestamp column")
    needed = [timestamp, *_key_columns(refs), *(f.name for f in request_fields_of(refs))]
    if label is not None:
        needed.append(label)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ConfigError(f"events have no column {', '.join(repr(m) for m in missing)}; they need {needed}")
