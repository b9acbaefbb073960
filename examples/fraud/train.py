"""Train the fraud model from a point-in-time training set and register it.

Run: ``python -m examples.fraud.train`` (after ``python -m examples.fraud.generate``), or
let ``make demo`` do both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import stalwart
from stalwart.config import Settings

PROJECT = Path(__file__).with_name("project.py")


def training_events(transactions: Any, *, skip_days: float = 30.0) -> Any:
    """One event per transaction, timed 1 ms before it is recorded.

    Serving scores a transaction before it is written to the table, so its features must
    not include it; offline, the transaction's own row is in the table at exactly its
    time, and "at or before the event" would count it. Stepping the event 1 ms back keeps
    the two paths identical. The first ``skip_days`` are left out: their 30-day windows
    are not full yet.
    """
    first = transactions["ts"].min() + skip_days * 86_400
    events = transactions[transactions["ts"] >= first].copy()
    events["ts"] = events["ts"] - 0.001
    return events[["card_id", "ts", "amount", "merchant_category", "is_fraud"]].reset_index(drop=True)


def train(transactions: Any, settings: Settings | None = None, *, max_iter: int = 300) -> tuple[Any, dict[str, float]]:
    """Build the training set, fit a gradient-boosted model of ``max_iter`` trees, register
    it; returns ``(model version, metrics on the most recent 20% of events)``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    project = stalwart.load_project(PROJECT)  # the very file the server loads
    events = training_events(transactions)
    txn = project.sources["txn"]
    features = [project.feature_sets["card_activity"], txn.field("amount")]  # type: ignore[attr-defined]
    training = stalwart.build_training_set(events, features, timestamp="ts", label="is_fraud", settings=settings)
    x, y = training.X, training.y
    cut = int(len(y) * 0.8)  # a split in time: the test events come after the training ones
    # Few positives (about 0.15% of events): without regularisation the trees memorise
    # them, and early stopping on a 10% slice of so few positives stops at random.
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.05, l2_regularization=1.0, early_stopping=False, random_state=7
    )
    model.fit(x[:cut], y[:cut])
    scores = model.predict_proba(x[cut:])[:, 1]
    metrics = {
        "roc_auc": float(roc_auc_score(y[cut:], scores)),
        "average_precision": float(average_precision_score(y[cut:], scores)),
        "fraud_rate": float(np.mean(y)),
        "training_rows": float(len(y)),
        "training_set_seconds": float(training.built_seconds),
    }
    model.fit(x, y)  # the deployed model learns from every event
    # The registry of these settings (stalwart.register_model uses the environment's).
    registry = stalwart.Registry.open(settings)
    try:
        version = registry.register(
            "fraud", model, training_set=training, metrics=metrics,
            tags={"example": "fraud"}, description="HistGradientBoosting on card activity features",
        )
    finally:
        registry.db.dispose()
    return version, metrics


if __name__ == "__main__":
    import runpy

    from stalwart.config import load_settings

    generator = runpy.run_path(str(Path(__file__).with_name("generate.py")))
    generate, load = generator["generate"], generator["load"]
    settings = load_settings()
    frame = generate()
    load(frame, settings.resolved_db_url())
    mv, scores = train(frame, settings)
    print(f"registered {mv.ref}: {scores}")
