"""The engines under test (Spark's session is the suite-wide ``spark_session`` fixture).

Every test here takes ``engine``: it runs on DuckDB and on Spark (``local[2]``, two shuffle
partitions), and compares with the numpy engine, the reference. Spark's cases are marked
slow: its session takes seconds to start and each job a second or more, so they are few
and each checks many cases at once.
"""

from __future__ import annotations

import pytest

from stalwart.offline.duckdb_engine import DuckDBEngine
from stalwart.offline.engine import OfflineEngine


@pytest.fixture(params=["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def engine(request: pytest.FixtureRequest) -> OfflineEngine:
    """Each engine the conformance suite holds to the numpy engine's values."""
    if request.param == "duckdb":
        return DuckDBEngine(threads=2)
    from stalwart.offline.spark_engine import SparkEngine

    return SparkEngine(request.getfixturevalue("spark_session"))
