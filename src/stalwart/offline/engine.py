"""What an offline engine is: a plan and events in, output rows and their profile out.

Three engines compute the same point-in-time features from the same definitions:

- ``numpy`` (:mod:`stalwart.features.training`): in memory, the reference the others are
  held to (the engine the online path shares);
- ``duckdb`` (:mod:`stalwart.offline.duckdb_engine`): embedded, larger than memory;
- ``spark`` (:mod:`stalwart.offline.spark_engine`): distributed.

An engine is anything with a ``name`` and :meth:`OfflineEngine.compute`; pass a configured
one (``DuckDBEngine(memory_limit="4GB")``, ``SparkEngine(session)``) or its name
(:func:`stalwart.offline.engines.resolve_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stalwart.config import Settings
from stalwart.offline.plan import Plan

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import Profile

__all__ = ["Computed", "Job", "OfflineEngine"]


@dataclass(frozen=True)
class Job:
    """One training set to compute.

    ``events`` is a pandas DataFrame, or the path of a Parquet file or directory.
    ``output``: None for rows in memory (a DataFrame), else the directory the rows are
    written to as Parquet, partitioned by ``partition`` (the event's UTC date,
    ``YYYY-MM-DD``). ``progress`` is told what is being done, and rows as they are done.
    """

    plan: Plan
    events: Any
    output: Path | None = None
    partition: str = "event_date"
    root: Path | None = None
    settings: Settings | None = None
    progress: Callable[[str, int], None] | None = None

    def report(self, step: str, rows: int = 0) -> None:
        if self.progress is not None:
            self.progress(step, rows)


@dataclass
class Computed:
    """An engine's answer: the rows (an Arrow table, in event order, when not written),
    or the directory they were written to; how many; their features' profile, merged
    from one profile per batch or partition."""

    table: Any
    path: Path | None
    rows: int
    profile: Profile


class OfflineEngine(Protocol):
    """Computes training sets (see the module docstring)."""

    name: str

    def compute(self, job: Job) -> Computed:
        """The job's rows: the plan's output columns (entity keys, event time, features,
        label) for every event, point-in-time correct; for in-memory events, the feature
        columns only (the caller keeps the events' own columns)."""
        ...
