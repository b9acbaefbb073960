"""The offline engines by name.

>>> resolve_engine("duckdb").name  # doctest: +SKIP
'duckdb'
"""

from __future__ import annotations

from stalwart.errors import ConfigError
from stalwart.offline.engine import OfflineEngine

__all__ = ["ENGINES", "resolve_engine"]

ENGINES = ("numpy", "duckdb", "spark")


def resolve_engine(engine: str | OfflineEngine) -> OfflineEngine:
    """The engine named (with its defaults), or the configured one given."""
    if not isinstance(engine, str):
        return engine
    if engine == "numpy":
        from stalwart.offline.numpy_engine import NumpyEngine

        return NumpyEngine()
    if engine == "duckdb":
        from stalwart.offline.duckdb_engine import DuckDBEngine

        return DuckDBEngine()
    if engine == "spark":
        from stalwart.offline.spark_engine import SparkEngine

        return SparkEngine()
    raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
