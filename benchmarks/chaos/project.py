"""The project the chaos run serves: the fraud example's features, and its deployment with
the whole degradation ladder declared, as a team running it in production would.

The entity, sources and feature set are the example's own objects (so their versions are
the ones the models were trained on); only the deployment differs from
``examples/fraud/project.py``: a fallback model, the last good prediction, a default, and
guards tight enough that a failure is noticed within a second and retried soon after.
"""

from examples.fraud.project import card, card_activity, transactions, txn

from stalwart import Deployment

__all__ = ["card", "card_activity", "fraud", "transactions", "txn"]

# A card transaction must be scored within a few hundred milliseconds or the payment goes
# on without a score; the healthy model answers in a few milliseconds.
MODEL_GUARD = {
    "timeout": {"timeout_duration": "300ms"},
    "breaker": {
        "sliding_window_size": 20,
        "minimum_number_of_calls": 10,
        "failure_rate_threshold": 50,
        "slow_call_duration_threshold": "250ms",
        "wait_duration_in_open_state": "2s",
        "permitted_number_of_calls_in_half_open_state": 3,
    },
}
SOURCE_GUARD = {
    "timeout": {"timeout_duration": "200ms"},
    "breaker": {
        "sliding_window_size": 20,
        "minimum_number_of_calls": 10,
        "wait_duration_in_open_state": "2s",
        "permitted_number_of_calls_in_half_open_state": 3,
    },
}
DEFAULT_PREDICTION = {"predict": 0, "predict_proba": [1.0, 0.0]}

fraud = Deployment(
    "fraud",
    model="fraud:1",
    description="Scores a card transaction; every step of the ladder declared",
    guard=MODEL_GUARD,
    source_guard=SOURCE_GUARD,
    fallback="fraud-lite:1",
    last_good="10m",
    default_prediction=DEFAULT_PREDICTION,
)
