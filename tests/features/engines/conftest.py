"""The engines under test, and one SparkSession for the whole test session.

Every test here takes ``engine``: it runs on DuckDB and on Spark (``local[2]``, two shuffle
partitions), and compares with the numpy engine, the reference. Spark's cases are marked
slow: its session takes seconds to start and each job a second or more, so they are few
and each checks many cases at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stalwart.offline.duckdb_engine import DuckDBEngine
from stalwart.offline.engine import OfflineEngine


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """One local SparkSession (two cores, two shuffle partitions), stopped at the end."""
    from stalwart.offline.spark_engine import spark_session as make

    session = make("local[2]", shuffle_partitions=2, conf={"spark.default.parallelism": "2"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(params=["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def engine(request: pytest.FixtureRequest) -> OfflineEngine:
    """Each engine the conformance suite holds to the numpy engine's values."""
    if request.param == "duckdb":
        return DuckDBEngine(threads=2)
    from stalwart.offline.spark_engine import SparkEngine

    return SparkEngine(request.getfixturevalue("spark_session"))
