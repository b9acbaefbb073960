"""The validation stage in the request pipeline: fixes, notes, metrics, and the 422."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stalwart.errors import ValidationFailed
from stalwart.pipeline import Exchange
from stalwart.validation.policy import PolicyOverrides
from stalwart.validation.schema import Schema
from stalwart.validation.stage import ValidationMetrics, ValidationStage
from stalwart.validation.validator import Validator

SCHEMA = Schema.from_dict(
    {
        "margin": 0,
        "features": {
            "amount": {"kind": "numeric", "min": 0, "max": 100, "impute": 20.0, "policy": "clip"},
            "plan": {"kind": "categorical", "categories": ["free", "pro"], "impute": "free", "policy": "flag"},
            "age": {"kind": "integer", "min": 18, "max": 99, "impute": 40},
        },
    }
)


class Recorder:
    """The next stage: remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, exchange: Exchange) -> None:
        self.seen.append({k: v.tolist() for k, v in exchange.inputs.items()})


def exchange(amount: list[float], plan: list[str], age: list[int]) -> Exchange:
    return Exchange(
        request_id="r1",
        inputs={
            "amount": np.array(amount),
            "plan": np.array(plan, dtype=object),
            "age": np.array(age),
        },
        rows=len(amount),
        outputs=("predict",),
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_fixed_values_reach_the_model_and_the_notes_say_which() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    stage = ValidationStage(Validator(SCHEMA), recorder, deployment="churn", metrics=ValidationMetrics(registry))
    ex = exchange([5.0, 250.0], ["pro", "team"], [30, 40])
    await stage(ex)
    assert recorder.seen == [{"amount": [5.0, 100.0], "plan": ["pro", "team"], "age": [30, 40]}]
    assert ex.validation is not None
    assert ex.validation.response == {"clipped": {"amount": [1]}, "flagged": {"plan": [1]}}
    notes = ex.validation.summary
    json.dumps(notes)  # JSON-ready for the log line
    assert notes["violations"] == 2
    assert notes["rejected"] == 0
    assert [(d["row"], d["feature"], d["rule"], d["action"]) for d in notes["details"]] == [
        (1, "amount", "range", "clipped"),
        (1, "plan", "category", "flagged"),
    ]
    assert ex.timings.validate_ms is not None
    assert ex.timings.validate_ms >= 0
    assert sample(registry, "stalwart_validation_violations_total", deployment="churn", feature="amount", rule="range", policy="clip") == 1
    assert sample(registry, "stalwart_validation_violations_total", deployment="churn", feature="plan", rule="category", policy="flag") == 1
    assert sample(registry, "stalwart_validation_requests_total", deployment="churn", outcome="fixed") == 1


async def test_a_clean_request_goes_through_with_no_notes() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    stage = ValidationStage(Validator(SCHEMA), recorder, deployment="churn", metrics=ValidationMetrics(registry))
    ex = exchange([5.0], ["pro"], [30])
    inputs = ex.inputs
    await stage(ex)
    assert ex.inputs is inputs
    assert ex.validation is None
    assert sample(registry, "stalwart_validation_requests_total", deployment="churn", outcome="passed") == 1


async def test_a_rejected_request_never_reaches_the_model() -> None:
    """The 422's ValidationFailed lists every violation; the notes keep them for the log."""
    registry = CollectorRegistry()
    recorder = Recorder()
    stage = ValidationStage(Validator(SCHEMA), recorder, deployment="churn", metrics=ValidationMetrics(registry))
    ex = exchange([5.0, 5.0, 5.0], ["pro", "pro", "pro"], [30, 7, 150])
    with pytest.raises(ValidationFailed) as caught:
        await stage(ex)
    assert recorder.seen == []
    assert [(v["row"], v["rule"]) for v in caught.value.violations] == [(1, "range"), (2, "range")]
    assert ex.validation is not None
    assert ex.validation.summary["rejected"] == 2
    assert ex.validation.response is None
    assert sample(registry, "stalwart_validation_violations_total", deployment="churn", feature="age", rule="range", policy="reject") == 2
    assert sample(registry, "stalwart_validation_requests_total", deployment="churn", outcome="rejected") == 1


async def test_deployment_overrides_change_what_the_stage_does() -> None:
    recorder = Recorder()
    validator = Validator(SCHEMA, policies=PolicyOverrides(features={"age": "impute"}))
    stage = ValidationStage(validator, recorder)
    ex = exchange([5.0], ["pro"], [150])
    await stage(ex)
    assert recorder.seen[0]["age"] == [40]
    assert ex.validation is not None
    assert ex.validation.response == {"imputed": {"age": [0]}}
