"""The numpy engine behind the engine interface: the in-memory reference engine
(:mod:`stalwart.features.training`, the code the online path shares), events read whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.features.timecodec import to_ns
from stalwart.features.training import TrainingSet
from stalwart.features.training import build_training_set as build_in_memory
from stalwart.offline.engine import Computed, Job
from stalwart.offline.outputs import prepare_output

__all__ = ["NumpyEngine", "read_events"]


def read_events(events: Any) -> Any:
    """Events as a pandas DataFrame: as given, or read whole from Parquet."""
    if isinstance(events, str | Path):
        pd = require("pandas", extra="features", purpose="training sets")
        return pd.read_parquet(events)
    return events


@dataclass
class NumpyEngine:
    """Everything in memory (see the module docstring)."""

    name: str = field(default="numpy", init=False)

    def build(self, job: Job) -> TrainingSet:
        """The training set, its frame exactly as :func:`stalwart.features.build_training_set` makes it."""
        plan = job.plan
        events = read_events(job.events)
        told = (lambda step: job.report(step, 0)) if job.progress is not None else None
        built = build_in_memory(
            events, plan.refs, timestamp=plan.timestamp, label=plan.label, settings=job.settings, root=job.root, progress=told,
        )
        if job.output is None:
            return built
        pa = require("pyarrow", extra="features", purpose="writing training sets")
        pq = require("pyarrow.parquet", extra="features", purpose="writing training sets")
        dates = np.datetime_as_string(to_ns(events[plan.timestamp]).astype("datetime64[ns]"), unit="D")
        prepare_output(job.output)
        carried = {c: events[c].to_numpy() for c in plan.carry if c not in built.frame.columns}
        table = pa.Table.from_pandas(built.frame.assign(**carried, **{job.partition: dates}), preserve_index=False)
        pq.write_to_dataset(table, str(job.output), partition_cols=[job.partition], compression="zstd")
        built.rows, built.frame, built.path = len(table), None, job.output
        return built

    def compute(self, job: Job) -> Computed:
        built = self.build(job)
        if built.frame is None:
            return Computed(table=None, path=built.path, rows=built.row_count, profile=built.profile)  # type: ignore[arg-type]  # build always profiles
        pa = require("pyarrow", extra="features", purpose="training sets")
        table = pa.Table.from_pandas(built.frame[job.plan.features], preserve_index=False)
        return Computed(table=table, path=None, rows=table.num_rows, profile=built.profile)  # type: ignore[arg-type]  # build always profiles
