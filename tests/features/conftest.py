"""A small transactions table, in the registry's database (SQLite or PostgreSQL); a fake
clock; a reader that counts its fetches and can be told to fail or hang."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table

from stalwart.config import Settings
from stalwart.durations import NS
from stalwart.features.engine import SourceRows
from stalwart.features.readers import SourceReader
from stalwart.project import Entity, FeatureSet, Latest, RequestSource, SqlSource, Transform, Window
from stalwart.storage import Database, DatabasePool
from tests.cache.conftest import cleanup_namespace
from tests.conftest import REDIS_URL

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_transactions(n_cards: int = 20, per_card: int = 30, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cards = np.repeat(np.arange(1, n_cards + 1), per_card)
    seconds = rng.integers(0, 5 * 86_400, size=len(cards)).astype(float)
    # Some rows share a timestamp on purpose: ties must resolve the same on both paths.
    seconds[::7] = seconds[1::7][: len(seconds[::7])] if len(seconds[1::7]) >= len(seconds[::7]) else seconds[::7]
    return pd.DataFrame({
        "card_id": cards,
        "ts": [T0 + dt.timedelta(seconds=float(s)) for s in seconds],
        "amount": np.round(rng.lognormal(3, 0.7, size=len(cards)), 2),
        "category": rng.choice(["food", "fuel", "tech"], size=len(cards)),
    })


def load_table(db: Database, frame: pd.DataFrame, name: str = "tx") -> None:
    table = Table(
        name, MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("card_id", Integer, nullable=False),
        Column("ts", DateTime(timezone=True), nullable=False),
        Column("amount", Float),
        Column("category", String(20)),
    )
    with db.write() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(table.insert(), frame.to_dict("records"))


CARD = Entity("card", keys=["card_id"])
TXN = RequestSource("txn", fields={"amount": "float"})


def card_features(table: str = "tx", *, cache: Mapping[str, Any] | bool | None = None, url: str | None = None) -> FeatureSet:
    source = SqlSource("tx", table=table, entity=CARD, timestamp="ts", url=url)
    return FeatureSet(
        "card", entity=CARD, source=source, cache=cache,
        features=[
            Window("n_1h", agg="count", window="1h"),
            Window("n_1d", agg="count", window="1d"),
            Window("sum_1d", agg="sum", column="amount", window="1d"),
            Window("mean_3d", agg="mean", column="amount", window="3d", default=0.0),
            Window("max_1d", agg="max", column="amount", window="1d", default=0.0),
            Window("min_1d", agg="min", column="amount", window="1d", default=0.0),
            Latest("last_amount", column="amount", max_age="2d", default=0.0),
            Latest("last_category", column="category", default="none"),
            Transform("ratio", inputs=[TXN.amount, "mean_3d"], fn=lambda a, m: a / np.maximum(m, 1.0)),
        ],
    )


@pytest.fixture
def transactions() -> pd.DataFrame:
    return make_transactions()


@pytest.fixture
def loaded_db(any_db_settings: Settings, transactions: pd.DataFrame) -> Iterator[tuple[Settings, Database]]:
    db = Database(any_db_settings.resolved_db_url())
    load_table(db, transactions)
    yield any_db_settings, db
    db.dispose()


@pytest.fixture
def pool(loaded_db: tuple[Settings, Database]) -> Iterator[DatabasePool]:
    """Databases the features read, closed after the test whatever happens."""
    opened = DatabasePool(loaded_db[0])
    yield opened
    opened.dispose()


def events_for(transactions: pd.DataFrame, n: int = 60, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(transactions), size=n)
    base = transactions.iloc[picks]
    offsets = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 86_400, size=n))
    return pd.DataFrame({
        "card_id": np.concatenate([base["card_id"].to_numpy()[:-2], [999, 998]]),
        "ts": [t + dt.timedelta(seconds=int(o)) for t, o in zip(base["ts"], offsets, strict=True)],
        "amount": rng.uniform(1, 100, size=n),
        "label": rng.integers(0, 2, size=n),
    })



class FakeClock:
    """One wall clock for the features (int ns) and the cache (float seconds), moved by hand."""

    def __init__(self, start: dt.datetime) -> None:
        self.now_ns = int(start.timestamp()) * NS

    def ns(self) -> int:
        return self.now_ns

    def seconds(self) -> float:
        return self.now_ns / NS

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * NS)


class CountingReader:
    """A real reader, wrapped: it counts fetches (and the keys asked), and a test can make
    it fail or hang like a sick database."""

    def __init__(self, inner: SourceReader, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: list[list[tuple[Any, ...]]] = []
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        return self.inner.read_all(columns)

    async def fetch(
        self,
        keys: Sequence[tuple[Any, ...]],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        self.calls.append(list(keys))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return await self.inner.fetch(keys, as_of_ns, lookback_ns, columns, older=older, newer=newer)


@pytest.fixture
def sqlite_pool(settings: Settings, transactions: pd.DataFrame) -> Iterator[DatabasePool]:
    """The transactions table in the test's SQLite database."""
    opened = DatabasePool(settings)
    load_table(opened(None), transactions)
    yield opened
    opened.dispose()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A key namespace of the shared Redis that only this test uses, removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    cleanup_namespace(REDIS_URL, name)
