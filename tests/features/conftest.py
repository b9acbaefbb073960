"""A small transactions table, in the registry's database (SQLite or PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table

from stalwart.config import Settings
from stalwart.features import (
    Entity,
    FeatureSet,
    Latest,
    RequestSource,
    SqlSource,
    Transform,
    Window,
)
from stalwart.storage import Database, DatabasePool

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


def card_features(table: str = "tx") -> FeatureSet:
    source = SqlSource("tx", table=table, entity=CARD, timestamp="ts")
    return FeatureSet(
        "card", entity=CARD, source=source,
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

