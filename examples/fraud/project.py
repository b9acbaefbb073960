"""The fraud project's definitions: read by the training script and by the server alike.

Serve it with ``stalwart serve --project examples/fraud/project.py``.
"""

import numpy as np

from stalwart import (
    Alert,
    Deployment,
    Entity,
    FeatureSet,
    Latest,
    RequestSource,
    SqlSource,
    Transform,
    Window,
)

RISKY_CATEGORIES = ("electronics", "gift_cards", "jewelry")

card = Entity("card", keys=["card_id"])

# Rows live in the registry's own database by default (SQLite under STALWART_HOME, or the
# PostgreSQL of STALWART_DB_URL); `generate.py` fills the table.
transactions = SqlSource("transactions", table="transactions", entity=card, timestamp="ts")

# What arrives with the transaction being scored.
txn = RequestSource("txn", fields={"amount": "float", "merchant_category": "str"})


def ratio(numerator, denominator):
    """numerator / denominator, with denominators under 1 treated as 1 (no blow-ups)."""
    return numerator / np.maximum(denominator, 1.0)


def risky(category):
    return np.isin(category, RISKY_CATEGORIES).astype(np.float64)


card_activity = FeatureSet(
    "card_activity",
    entity=card,
    source=transactions,
    description="How a card has been used recently, and how the current transaction compares",
    # Cached values are fresh for a minute at most, and less when a transaction leaves a
    # window sooner; writes through `stalwart.features.write(transactions, rows)` drop
    # them at once. If the database fails, a card's values up to ten minutes old still
    # score the transaction (marked degraded): a card's habits barely move in ten minutes,
    # and scoring on them beats falling back to a model without card history. Past that, the defaults below
    # (counts and sums 0) apply and the response says so.
    cache={"ttl": "1m", "max_staleness": "10m"},
    features=[
        Window("tx_count_1h", agg="count", window="1h"),
        Window("tx_count_24h", agg="count", window="24h"),
        Window("amount_sum_1h", agg="sum", column="amount", window="1h"),
        Window("amount_sum_24h", agg="sum", column="amount", window="24h"),
        Window("amount_mean_30d", agg="mean", column="amount", window="30d", default=0.0),
        Window("amount_max_7d", agg="max", column="amount", window="7d", default=0.0),
        Latest("last_amount", column="amount", max_age="30d", default=0.0),
        Transform("amount_to_mean_30d", inputs=[txn.amount, "amount_mean_30d"], fn=ratio),
        Transform("amount_to_max_7d", inputs=[txn.amount, "amount_max_7d"], fn=ratio),
        Transform("risky_category", inputs=[txn.merchant_category], fn=risky),
    ],
)

# Pinned to a version: a new one is rolled out as a canary (`stalwart rollout start fraud
# --canary fraud:2`), judged against this one and promoted or rolled back, rather than
# served to everyone the moment it is registered (model="fraud" would follow the latest).
fraud = Deployment(
    "fraud", model="fraud:1", description="Scores a card transaction before it is recorded",
    rollout={"steps": [0.05, 0.25, 0.5], "min_seconds": "5m", "min_requests": 1000},
)

# Drift of the transaction's amount against the card's habits, over the last hour (PSI
# against the training profile the registry recorded). `stalwart demo` replays a stretch of
# electronics purchases at three times their amount to show it firing; `stalwart monitor
# report --deployment fraud` shows every feature against the training data. (A rule on
# column "*" would watch every feature; replayed history scored "now" also moves the window
# counts, which is why the demo's rule names one column.)
amount_drift = Alert(
    "amount-drift", "fraud", "psi", column="feature:amount_to_mean_30d",
    threshold=0.25, window="1h", for_="0", severity="warning",
)
