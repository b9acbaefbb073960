"""The degradation ladder through a real server: primary, fallback model, last good
prediction, default; every degraded answer says so in its body, header and metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server

TXN = RequestSource("txn", fields={"x": "float"})
SAMPLE = pd.DataFrame({"x": [float(i) for i in range(60)]})
GUARD = {
    "timeout": {"timeout_duration": "300ms"},
    "breaker": {
        "sliding_window_size": 4,
        "minimum_number_of_calls": 4,
        "wait_duration_in_open_state": "500ms",
        "permitted_number_of_calls_in_half_open_state": 2,
    },
}


def _project(**ladder: Any) -> Project:
    return Project.of(Deployment("scores", model="primary", features=[TXN.x], guard=GUARD, **ladder), TXN)


@pytest.fixture
def models(settings: Settings, registry: Registry) -> Registry:
    set_mode("primary", "ok")
    set_mode("backup", "ok")
    registry.register("primary", Switchable("primary", 1.0), sample=SAMPLE)
    registry.register("backup", Switchable("backup", 10.0), sample=SAMPLE)
    return registry


@contextmanager
def _serve(settings: Settings, registry: Registry, project: Project) -> Iterator[LiveServer]:
    from stalwart.serving.app import create_app

    with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
        yield server


def _predict(server: LiveServer, x: float, entity: int = 1) -> Any:
    return server.post("/v1/deployments/scores/predict", json={"entities": [{"id": entity}], "values": [{"x": x}]})


def test_healthy_primary_answers_undegraded(settings: Settings, models: Registry) -> None:
    with _serve(settings, models, _project(fallback="backup")) as server:
        response = _predict(server, 2.0)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [{"predict": 2.0}]
        assert "degraded" not in response.json()
        assert "x-stalwart-degraded" not in response.headers


def test_a_failing_primary_steps_down_to_the_fallback_model(settings: Settings, models: Registry) -> None:
    """A model that raises: the fallback answers, and the response says how and why."""
    with _serve(settings, models, _project(fallback="backup")) as server:
        set_mode("primary", "raise")
        response = _predict(server, 2.0)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"] == [{"predict": 20.0}]
        assert body["model"]["name"] == "backup"
        assert body["degraded"]["level"] == "fallback_model"
        assert body["degraded"]["reason"] == "ModelError"
        assert response.headers["x-stalwart-degraded"] == "fallback_model; reason=ModelError"
        text = server.get("/metrics").text
        assert 'stalwart_degraded_responses_total{deployment="scores",level="fallback_model",reason="ModelError"} 1.0' in text


def test_a_hanging_primary_answers_on_time_from_the_fallback(settings: Settings, models: Registry) -> None:
    """A model that hangs: the guard's timeout returns on time and the fallback answers."""
    with _serve(settings, models, _project(fallback="backup")) as server:
        set_mode("primary", "hang")
        try:
            start = time.monotonic()
            response = _predict(server, 3.0)
            elapsed = time.monotonic() - start
        finally:
            set_mode("primary", "ok")
        assert response.status_code == 200, response.text
        assert response.json()["degraded"] == {"level": "fallback_model", "reason": "CallTimeout", "detail": response.json()["degraded"]["detail"]}
        assert elapsed < 2.0


def test_last_good_then_default_when_no_model_answers(settings: Settings, models: Registry) -> None:
    """With both models down, an entity seen before gets its last good prediction; a new
    one gets the declared default; without a default the error comes through as 5xx."""
    project = _project(fallback="backup", last_good="1h", default_prediction={"predict": -1.0})
    with _serve(settings, models, project) as server:
        assert _predict(server, 4.0, entity=7).json()["predictions"] == [{"predict": 4.0}]
        set_mode("primary", "raise")
        set_mode("backup", "raise")
        remembered = _predict(server, 999.0, entity=7).json()
        assert remembered["predictions"] == [{"predict": 4.0}]
        assert remembered["degraded"]["level"] == "last_good"
        assert remembered["model"] == {"name": "primary", "version": 1}
        unknown = _predict(server, 5.0, entity=8).json()
        assert unknown["predictions"] == [{"predict": -1.0}]
        assert unknown["degraded"]["level"] == "default"
        assert unknown["model"] is None
    with _serve(settings, models, _project()) as server:
        failing = _predict(server, 1.0)
        assert failing.status_code == 500
        assert "primary:1 raised RuntimeError" in failing.json()["error"]


def test_breaker_opens_serves_the_ladder_then_recovers(settings: Settings, models: Registry) -> None:
    """Failures open the breaker (calls stop reaching the model), the ladder answers every
    request, and once the fault clears the breaker goes HALF_OPEN then CLOSED."""
    with _serve(settings, models, _project(fallback="backup")) as server:
        set_mode("primary", "raise")
        for _ in range(4):
            assert _predict(server, 1.0).json()["degraded"]["reason"] == "ModelError"
        guard = server.get("/v1/deployments/scores/health").json()["guards"][0]
        assert guard["breaker"]["state"] == "open"
        from tests.faults import calls

        before = calls("primary")
        refused = _predict(server, 1.0).json()
        assert refused["degraded"]["reason"] == "CallNotPermitted"
        assert calls("primary") == before  # the open breaker kept the call from the model
        set_mode("primary", "ok")
        time.sleep(0.6)
        states = []
        for _ in range(2):
            assert "degraded" not in _predict(server, 1.0).json()
            states.append(server.get("/v1/deployments/scores/health").json()["guards"][0]["breaker"]["state"])
        assert states[-1] == "closed"
        text = server.get("/metrics").text
        assert 'stalwart_breaker_transitions_total{from_state="closed",guard="deployment/scores/primary/primary:1",to_state="open"} 1.0' in text
        assert 'to_state="half_open"' in text
