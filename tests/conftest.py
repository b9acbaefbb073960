"""Fixtures shared by the whole suite: settings in a temporary home, registries on SQLite
and on the real PostgreSQL server, trained models, and a real uvicorn server.

PostgreSQL and Redis are real servers (``make test`` starts them when they are down). A
test that needs one and cannot reach it fails: it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stalwart.config import Settings
from stalwart.registry import Registry
from tests.servers import LiveServer, start_server

PG_HOST = os.environ.get("STALWART_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("STALWART_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("STALWART_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("STALWART_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The CLI's rich tables take the terminal's width, and a test process may have none (an
# xdist worker's streams are pipes: 80 columns, and table cells get cut to "req-0…"). One
# width for every run, whatever started it; rich reads COLUMNS before asking the terminal.
os.environ["COLUMNS"] = "200"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each of schemathesis's per-operation tests its own node id.

    Under pytest 9, schemathesis names them ``test[GET /v2]`` but leaves every one the id of
    the bare function, and pytest-xdist schedules by id: in two processes the fuzz test ran
    one operation of 26, and passed. An id per operation restores all 26 (and ``-k``/
    ``--lf`` on one operation). Checked by tests/serving/test_fuzz.py.
    """
    for item in items:
        if "[" in item.name and "[" not in item.nodeid and item.parent is not None:
            item._id = item.parent.id.child(item.name)  # pytest 9 keeps a node's id there


@pytest.fixture(autouse=True)
def _logs_on_a_live_stream() -> Iterator[None]:
    """A CLI test's CliRunner lends the process a stdout/stderr it closes afterwards, and a
    command that configures logging (``stalwart log``) keeps writing there: put logging
    back on the session's stdout after every test, so later servers can write access lines."""
    yield
    from stalwart.monitoring.logs import configure_logging

    configure_logging("console", "info")  # through structlog, as structlog.testing.capture_logs expects


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    # The model classes the tests register with the python flavor live in the package tests.
    return Settings(home=home, registry_poll_seconds=0.2, log_format="json", python_modules=("tests",))


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = Registry.open(settings)
    yield reg
    reg.db.dispose()


def _pg_admin_url() -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"stalwart_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(_pg_admin_url(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc}); run "
            f"'make services' or set STALWART_TEST_PG_HOST/PORT"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(_pg_admin_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_settings(request: pytest.FixtureRequest, home: Path) -> Iterator[Settings]:
    """Settings on SQLite, then on PostgreSQL: the same test runs on both backends."""
    if request.param == "sqlite":
        yield Settings(home=home, registry_poll_seconds=0.2, python_modules=("tests",))
    else:
        url = request.getfixturevalue("pg_url")
        yield Settings(home=home, db_url=url, registry_poll_seconds=0.2, python_modules=("tests",))


@pytest.fixture
def any_registry(any_db_settings: Settings) -> Iterator[Registry]:
    reg = Registry.open(any_db_settings)
    yield reg
    reg.db.dispose()


@pytest.fixture(scope="session")
def cancer() -> dict[str, Any]:
    """scikit-learn's breast-cancer data, split, as numpy arrays and as a DataFrame."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"])
    x_train, x_test, y_train, y_test = train_test_split(
        frame, data.target, test_size=0.25, random_state=7, stratify=data.target
    )
    return {
        "frame_train": x_train,
        "frame_test": x_test,
        "x_train": x_train.to_numpy(),
        "x_test": x_test.to_numpy(),
        "y_train": y_train.to_numpy(),
        "y_test": y_test.to_numpy(),
    }


@pytest.fixture(scope="session")
def logistic(cancer: dict[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        cancer["x_train"], cancer["y_train"]
    )


@pytest.fixture(scope="session")
def boosted(cancer: dict[str, Any]) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=30, random_state=7).fit(
        cancer["x_train"], cancer["y_train"]
    )


@pytest.fixture
def served(settings: Settings, registry: Registry, logistic: Any, boosted: Any, cancer: dict[str, Any]) -> Iterator[LiveServer]:
    """A real uvicorn server with two versions of ``breast-cancer`` registered."""
    registry.register("breast-cancer", logistic, sample=cancer["x_train"][:20])
    registry.register("breast-cancer", boosted, sample=cancer["x_train"][:20])
    with start_server(settings, registry) as server:
        yield server


def rows(cancer: dict[str, Any], n: int = 3) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = cancer["x_test"][:n]
    return out


@pytest.fixture(scope="session")
def fraud_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fraud example, generated small and trained once: a STALWART_HOME with the
    transactions table and the registered model, for tests that only read it."""
    import datetime as dt
    import runpy

    root = Path(__file__).resolve().parent.parent / "examples" / "fraud"
    home = tmp_path_factory.mktemp("fraud") / "home"
    settings = Settings(home=home, project=root / "project.py", registry_poll_seconds=0.2)
    generator = runpy.run_path(str(root / "generate.py"))
    trainer = runpy.run_path(str(root / "train.py"))
    end = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    frame = generator["generate"](n_cards=300, days=40, end=end, seed=11)
    generator["load"](frame, settings.resolved_db_url())
    version, metrics = trainer["train"](frame, settings)
    return {"settings": settings, "frame": frame, "version": version, "metrics": metrics, "root": root}


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """One local SparkSession for the whole test session (two cores, two shuffle
    partitions): starting one takes seconds, so the offline engines' tests share it."""
    from stalwart.offline.spark_engine import spark_session as make

    session = make("local[2]", shuffle_partitions=2, conf={"spark.default.parallelism": "2"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
