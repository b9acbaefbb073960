"""The project of the chaos run's reference server: the same features and model as
``project.py``, with limits that never trip on a busy machine (long time limits, no
breaker, no shedding) and no ladder, so every answer it gives is the healthy model's."""

from examples.fraud.project import card, card_activity, transactions, txn

from stalwart import Deployment

__all__ = ["card", "card_activity", "fraud", "transactions", "txn"]

_PATIENT = {"timeout": {"timeout_duration": "30s"}, "breaker": None, "bulkhead": None}

fraud = Deployment(
    "fraud",
    model="fraud:1",
    description="The healthy answers every fault is compared with",
    guard=_PATIENT,
    source_guard=_PATIENT,
    shedding={"max_in_flight": None, "max_queue_wait": None},
)
