"""Fixtures for end-to-end serving tests: a private copy of the fraud example's home (for
tests that write to its table or break it), project files changed from the example's, a
Redis key namespace of the test's own, and metrics read back from ``/metrics``."""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from tests.cache.conftest import cleanup_namespace
from tests.conftest import REDIS_URL

FRAUD_ROOT = Path(__file__).resolve().parent.parent.parent / "examples" / "fraud"


@dataclass
class FraudCopy:
    """The fraud example's home, copied: registry, model artifact and transactions table."""

    home: Path
    settings: Settings
    frame: Any  # the generated transactions (pandas), as the table held them when copied

    @property
    def db(self) -> Path:
        return self.home / "registry.db"

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the copy's SQLite file, as another program would."""
        connection = sqlite3.connect(self.db, timeout=30)
        try:
            with connection:
                return connection.execute(statement, params).fetchall()
        finally:
            connection.close()

    def project(self, directory: Path, *replacements: tuple[str, str]) -> Path:
        """The example's project file with each ``(old, new)`` replaced (each must occur)."""
        text = (FRAUD_ROOT / "project.py").read_text()
        for old, new in replacements:
            if old not in text:
                raise AssertionError(f"the fraud project no longer contains {old!r}")
            text = text.replace(old, new)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "project.py"
        path.write_text(text)
        return path


@pytest.fixture
def fraud_copy(fraud_home: dict[str, Any], tmp_path: Path) -> FraudCopy:
    """A copy of the fraud home that this test may write to or break."""
    source: Settings = fraud_home["settings"]
    home = tmp_path / "fraud-home"
    shutil.copytree(source.home, home, ignore=shutil.ignore_patterns("registry.db*"))
    # The database is in WAL mode: copy it with SQLite's backup API, not file by file.
    original = sqlite3.connect(source.home / "registry.db")
    copy = sqlite3.connect(home / "registry.db")
    try:
        original.backup(copy)
    finally:
        copy.close()
        original.close()
    settings = source.model_copy(update={"home": home})
    return FraudCopy(home, settings, fraud_home["frame"])


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A key namespace of the shared Redis that only this test uses, removed afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    yield name
    cleanup_namespace(REDIS_URL, name)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def recent_card(frame: Any, rank: int = 0) -> int:
    """A card with recent activity (the ``rank``-th most active of the last day)."""
    recent = frame[frame["ts"] > frame["ts"].max() - 86_400]
    return int(recent["card_id"].value_counts().index[rank])


def txn(amount: float = 25.0, category: str = "groceries") -> dict[str, Any]:
    return {"amount": amount, "merchant_category": category}


def predict_body(*cards: int, features: bool = True) -> dict[str, Any]:
    return {"entities": [{"card_id": c} for c in cards], "values": [txn() for _ in cards], "return_features": features}


def poll(condition: Any, timeout: float, interval: float = 0.02) -> Any:
    """Call ``condition`` until it returns something truthy (returned) or time runs out
    (its last value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
