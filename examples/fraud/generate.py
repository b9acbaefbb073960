"""A deterministic generator of realistic card transactions, with a little fraud.

Customers hold one or two cards; each card has its own spending level, favourite
merchant categories and activity rate; purchases follow a daily rhythm (lunch and
evening peaks, quiet nights). About 2% of cards are compromised at some point: a burst of
large purchases in risky categories within an hour or two, often at night. That signal
lives in windowed features (counts and sums over the last hour, amounts against the
card's 30-day mean), which is what the example's features capture.

The same seed and end time always give the same rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

CATEGORIES = np.array(
    ["groceries", "restaurants", "fuel", "online", "travel", "pharmacy", "clothing",
     "entertainment", "electronics", "gift_cards", "jewelry"]
)
_NORMAL_WEIGHTS = np.array([0.26, 0.2, 0.12, 0.14, 0.03, 0.07, 0.08, 0.06, 0.025, 0.01, 0.005])
_FRAUD_CATEGORIES = np.array(["electronics", "gift_cards", "jewelry", "online"])
# Share of purchases by hour of day: quiet nights, a lunch peak, an evening peak.
_HOURS = np.array([0.5, 0.3, 0.2, 0.2, 0.2, 0.4, 1.2, 2.5, 3.5, 4.0, 4.5, 5.5, 7.0, 6.0, 5.0,
                   4.8, 5.0, 5.8, 6.8, 7.2, 6.0, 4.0, 2.2, 1.0])


def generate(n_cards: int = 3000, days: int = 60, *, end: dt.datetime | None = None, seed: int = 7, fraud_share: float = 0.02) -> Any:
    """Transactions as a pandas DataFrame: card_id, ts (epoch seconds), amount,
    merchant_category, is_fraud; sorted by time."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    end_s = (end or dt.datetime(2026, 11, 1, tzinfo=dt.UTC)).timestamp()
    start_s = end_s - days * 86_400
    hours_p = _HOURS / _HOURS.sum()

    card_ids = np.arange(1000, 1000 + n_cards)
    level = rng.lognormal(mean=3.4, sigma=0.55, size=n_cards)  # typical purchase, dollars
    rate = rng.gamma(shape=2.0, scale=0.8, size=n_cards) + 0.2  # purchases per day
    counts = rng.poisson(rate * days)

    card = np.repeat(card_ids, counts)
    card_index = np.repeat(np.arange(n_cards), counts)
    total = int(counts.sum())
    day = rng.integers(0, days, size=total)
    hour = rng.choice(24, size=total, p=hours_p)
    second = rng.uniform(0, 3600, size=total)
    ts = start_s + day * 86_400.0 + hour * 3600.0 + second
    amount = np.round(level[card_index] * rng.lognormal(0.0, 0.5, size=total), 2)
    category = rng.choice(CATEGORIES, size=total, p=_NORMAL_WEIGHTS / _NORMAL_WEIGHTS.sum())
    is_fraud = np.zeros(total, dtype=np.int64)

    # Compromised cards: a burst of risky purchases starting some time in the last 2/3.
    victims = rng.choice(n_cards, size=max(1, int(n_cards * fraud_share)), replace=False)
    burst_size = rng.integers(3, 9, size=len(victims))
    start = start_s + rng.uniform(days / 3, days - 0.2, size=len(victims)) * 86_400
    night = rng.random(len(victims)) < 0.6
    start = np.where(night, np.floor(start / 86_400) * 86_400 + rng.uniform(0, 5 * 3600, size=len(victims)), start)
    f_card_index = np.repeat(victims, burst_size)
    f_ts = np.repeat(start, burst_size) + rng.uniform(0, 5400, size=int(burst_size.sum()))
    f_amount = np.round(level[f_card_index] * rng.uniform(3.0, 12.0, size=len(f_ts)), 2)
    f_category = rng.choice(_FRAUD_CATEGORIES, size=len(f_ts))

    frame = pd.DataFrame({
        "card_id": np.concatenate([card, card_ids[f_card_index]]),
        "ts": np.round(np.concatenate([ts, f_ts]), 3),
        "amount": np.concatenate([amount, f_amount]),
        "merchant_category": np.concatenate([category, f_category]),
        "is_fraud": np.concatenate([is_fraud, np.ones(len(f_ts), dtype=np.int64)]),
    })
    frame = frame[frame["ts"] < end_s]
    return frame.sort_values(["ts", "card_id"], kind="stable").reset_index(drop=True)


def load(frame: Any, db_url: str, table: str = "transactions") -> int:
    """(Re)create ``table`` in the database at ``db_url`` and insert the rows."""
    from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table

    from stalwart.storage import Database

    db = Database(db_url, auto_migrate=False)
    try:
        meta = MetaData()
        tx = Table(
            table, meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("card_id", Integer, nullable=False),
            Column("ts", Float, nullable=False),
            Column("amount", Float, nullable=False),
            Column("merchant_category", String(40), nullable=False),
            Column("is_fraud", Integer, nullable=False),
            Index(f"{table}_card_ts", "card_id", "ts"),
        )
        with db.write() as conn:
            tx.drop(conn, checkfirst=True)
            tx.create(conn)
            records = frame.to_dict("records")
            for chunk in range(0, len(records), 50_000):
                conn.execute(tx.insert(), records[chunk:chunk + 50_000])
        return len(frame)
    finally:
        db.dispose()
