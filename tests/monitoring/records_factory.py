"""Prediction records for the tests of sinks and readers: every field set, values that
test exactness (floats without a short decimal form, big integers, unicode)."""

from __future__ import annotations

from typing import Any

from stalwart.monitoring.records import PredictionRecord

T0 = 1_700_000_000_000_000_000  # ns: 2023-11-14T22:13:20Z


def full_record(i: int = 0, **changes: Any) -> PredictionRecord:
    """A record with every field filled in; ``changes`` override fields."""
    fields: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "time_ns": T0 + i * 1_000_000,
        "entrypoint": "/v1",
        "status": 200,
        "latency_ms": 0.1 + 0.2 + i,  # 0.30000000000000004: exact only if stored as written
        "trace_id": f"{i:032x}",
        "deployment": "fraud",
        "variant": "primary",
        "model": "fraud-gbm",
        "version": 3,
        "error": None,
        "rows": 2,
        "entities": [{"card_id": 10 + i}, {"card_id": 2**53 + 1}],
        "features": {"amount_sum_1h": [1 / 3, 2.5e-300], "merchant": ["café ☕", None], "count_7d": [7, 0]},
        "feature_sets": {"card_stats": "0123456789abcdef"},
        "features_as_of_ns": T0 + i * 1_000_000 + 123_457,
        "inputs": {"amount": [12.75, 1e308]},
        "inputs_hash": "sha256:" + "ab" * 32,
        "outputs": {"probability": [0.123456789012345678, 0.9], "label": [0, 1]},
        "validation": {"imputed": {"merchant": [1]}, "flagged": {}},
        "degraded": None,
        "degraded_reason": None,
        "cache": {"card_stats": {"memory": 1, "redis": 0, "source": 1}},
        "timings": {"features": 1.25, "model": 0.75, "total": 2.0000000000000004},
    }
    fields.update(changes)
    return PredictionRecord(**fields)
