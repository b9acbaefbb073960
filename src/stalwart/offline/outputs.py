"""Where computed rows go: an Arrow table in memory, or Parquet files partitioned by date;
and the profile of their features, one profile per batch merged into one.

Profiles are mergeable sketches (:mod:`stalwart.monitoring.profiles`), so a profile made
per batch (DuckDB's result stream) or per partition (Spark's executors) and merged is the
profile of the whole set: exact counts, extremes and frequencies, quantiles within the
KLL sketch's rank error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stalwart._optional import require
from stalwart.errors import ConfigError
from stalwart.monitoring.profiles import Profile
from stalwart.offline.batches import arrow_to_numpy

__all__ = ["batch_profile", "collect", "merge_profiles", "prepare_output", "write_parquet"]


def batch_profile(batch: Any, features: Sequence[str]) -> Profile:
    """The profile of ``features`` in one Arrow batch (columns read as the numpy engine
    holds them, so the profile's kinds match its own)."""
    names = batch.schema.names
    return Profile.of({name: arrow_to_numpy(batch.column(names.index(name))) for name in features})


def merge_profiles(parts: Iterable[Profile], features: Sequence[str]) -> Profile:
    """One profile of every part's rows (the features in ``features`` order)."""
    merged = Profile({}, 0)
    for part in parts:
        merged = merged.merge(part)
    if not merged.features:
        return Profile.of({name: [] for name in features})
    return Profile({name: merged.features[name] for name in features if name in merged.features}, merged.rows)


def collect(batches: Iterable[Any], features: Sequence[str], on_batch: Callable[[int], None] | None = None) -> tuple[Any, Profile]:
    """Every batch in one Arrow table, and the merged profile of its features."""
    pa = require("pyarrow", extra="duckdb", purpose="offline engines")
    kept: list[Any] = []
    profiles: list[Profile] = []
    for batch in batches:
        kept.append(batch)
        profiles.append(batch_profile(batch, features))
        if on_batch is not None:
            on_batch(batch.num_rows)
    if not kept:
        raise ConfigError("the engine returned no batches; there are no events")
    return pa.Table.from_batches(kept), merge_profiles(profiles, features)


def prepare_output(path: Path) -> None:
    """An output directory ready to be written: refused when it holds anything but a
    training set written before (its ``<partition>=...`` directories are replaced)."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"output {path} is a file; give a directory for the Parquet dataset")
        strangers = [p.name for p in path.iterdir() if "=" not in p.name and not p.name.startswith((".", "_"))]
        if strangers:
            raise ConfigError(f"output {path} holds other files ({', '.join(sorted(strangers)[:3])}); give an empty or new directory")
        shutil.rmtree(path)
    path.mkdir(parents=True)


def write_parquet(
    batches: Iterable[Any],
    path: Path,
    partition: str,
    features: Sequence[str],
    on_batch: Callable[[int], None] | None = None,
) -> tuple[int, Profile]:
    """Write batches as a Parquet dataset under ``path`` (hive-partitioned by
    ``partition``, zstd); how many rows, and their features' merged profile."""
    ds = require("pyarrow.dataset", extra="duckdb", purpose="writing Parquet datasets")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ConfigError("the engine returned no batches; there are no events")
    profiles: list[Profile] = []
    rows = 0

    def counted() -> Iterator[Any]:
        nonlocal rows
        for batch in _chain(first, iterator):
            profiles.append(batch_profile(batch, features))
            rows += batch.num_rows
            if on_batch is not None:
                on_batch(batch.num_rows)
            yield batch

    prepare_output(path)
    ds.write_dataset(
        counted(), str(path), schema=first.schema, format="parquet", partitioning=[partition],
        partitioning_flavor="hive", existing_data_behavior="overwrite_or_ignore",
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
        basename_template="part-{i}.parquet", max_rows_per_file=4_000_000, max_rows_per_group=1_000_000,
    )
    return rows, merge_profiles(profiles, features)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
