"""Offline work on any engine: training sets, batch scoring and log analytics, computed by
numpy (in memory), DuckDB (embedded, larger than memory) or Spark (distributed) from the
same definitions, with the same values.

>>> from stalwart.offline import build_training_set  # doctest: +SKIP
>>> ts = build_training_set("events/", [activity], engine="duckdb", output="training/")  # doctest: +SKIP
"""

from stalwart.offline.engine import Computed, Job, OfflineEngine
from stalwart.offline.engines import ENGINES, resolve_engine
from stalwart.offline.training import build_training_set

__all__ = ["ENGINES", "Computed", "Job", "OfflineEngine", "build_training_set", "resolve_engine"]
