"""One request never harms another: a request whose own rows make the model raise gets a
422 and fails alone (never its batch mates, never a shared breaker), a model's message
never reaches a client, a hung /v2 model answers 504 at its time limit, and a deployment
keeps part of a request's deadline for its fallback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pandas as pd

from stalwart.config import Settings
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from tests.faults import Switchable, set_mode
from tests.models import Picky
from tests.servers import start_server

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}],
    "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
}


def _body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": row}]}


async def _burst(url: str, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_a_poisoned_request_fails_alone_in_its_batch(settings: Settings, registry: Registry) -> None:
    """Requests batched with one whose values make the model raise are answered normally;
    the culprit gets a 422 naming the model and the exception's class, not its message."""
    registry.register("picky", Picky(delay=0.02), signature=SIGNATURE)
    with start_server(settings, registry) as server:
        assert server.post("/v2/models/picky/infer", json=_body([1, 2, 3])).status_code == 200
        bodies = [_body([i, 1, 1]) for i in range(30)]
        bodies[13] = _body([1e308, 1, 1])
        responses = asyncio.run(_burst(server.url, "/v2/models/picky/infer", bodies))
        metrics = server.get("/metrics").text
    for i, response in enumerate(responses):
        if i == 13:
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert "model picky:1 raised ValueError on this request's rows" in error
            assert "secret" not in response.text
            assert response.json()["field"] == "inputs"
        else:
            assert response.status_code == 200, (i, response.text)
            assert response.json()["outputs"][0]["data"] == [i + 2.0]
    # The burst really did share batches (else this test would prove nothing).
    assert _largest_batch(metrics) > 1


def test_inputs_a_model_refuses_never_open_its_breaker(settings: Settings, registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """Forty requests with a value that overflows the scaler (the model raises on them)
    are each the client's 422; the model's breaker stays closed, so everyone else is
    still served."""
    registry.register("breast-cancer", logistic, sample=cancer["x_train"][:20])
    good = cancer["x_test"][0].tolist()
    bad = list(good)
    bad[4] = 1e308
    with start_server(settings, registry) as server:
        def infer(row: list[float]) -> httpx.Response:
            return server.post("/v2/models/breast-cancer/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": row}]})

        assert infer(good).status_code == 200
        for _ in range(40):
            response = infer(bad)
            assert response.status_code == 422, response.text
            assert "breast-cancer:1 raised" in response.json()["error"]  # ValueError (RuntimeWarning under pytest)
        assert infer(good).status_code == 200
        metrics = server.get("/metrics").text
    assert 'to_state="open"' not in metrics


def test_a_model_that_fails_every_request_still_opens_its_breaker(settings: Settings, registry: Registry) -> None:
    """Failures of the model itself (it cannot score even a row it scored before) are ours:
    500s that open the breaker, after which calls are refused at once (503)."""
    set_mode("flaky", "ok")
    registry.register("flaky", Switchable("flaky"), signature=SIGNATURE)
    with start_server(settings, registry) as server:
        assert server.post("/v2/models/flaky/infer", json=_body([1, 2, 3])).status_code == 200
        set_mode("flaky", "raise")
        try:
            statuses = [server.post("/v2/models/flaky/infer", json=_body([1, 2, 3])).status_code for _ in range(25)]
        finally:
            set_mode("flaky", "ok")
    assert statuses[0] == 500
    assert 503 in statuses
    assert set(statuses) <= {500, 503}


def test_a_hung_v2_model_answers_504_at_its_time_limit(home: Any, registry: Registry) -> None:
    """/v2 has a time limit by default (configurable, per model): a hung model's callers get
    a 504 when it passes, not a request held for as long as the model hangs."""
    settings = Settings(home=home, registry_poll_seconds=0.2, model_timeouts={"stuck": 0.3})
    set_mode("stuck", "ok")
    registry.register("stuck", Switchable("stuck"), signature=SIGNATURE)
    with start_server(settings, registry) as server:
        set_mode("stuck", "hang")
        try:
            start = time.monotonic()
            response = server.post("/v2/models/stuck/infer", json=_body([1, 2, 3]))
            elapsed = time.monotonic() - start
        finally:
            set_mode("stuck", "ok")
    assert response.status_code == 504, response.text
    assert elapsed < 2.0
    assert Settings(home=home).model_timeout_seconds == 10.0  # the default limit


def test_a_short_deadline_keeps_time_for_the_fallback(settings: Settings, registry: Registry) -> None:
    """A request whose X-Request-Timeout is shorter than the primary's time limit gets the
    fallback's degraded answer when the primary hangs, not a 504: the primary may spend
    only part of the deadline while a fallback could still answer."""
    txn = RequestSource("txn", fields={"x": "float"})
    sample = pd.DataFrame({"x": [float(i) for i in range(60)]})
    set_mode("slowpoke", "ok")
    set_mode("spare", "ok")
    registry.register("slowpoke", Switchable("slowpoke", 1.0), sample=sample)
    registry.register("spare", Switchable("spare", 10.0), sample=sample)
    project = Project.of(
        Deployment("scores", model="slowpoke", features=[txn.x], fallback="spare", guard={"timeout": {"timeout_duration": "5s"}}),
        txn,
    )
    from stalwart.serving.app import create_app

    with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
        set_mode("slowpoke", "hang")
        try:
            start = time.monotonic()
            response = server.post(
                "/v1/deployments/scores/predict",
                json={"entities": [{"id": 1}], "values": [{"x": 2.0}]},
                headers={"X-Request-Timeout": "600"},
            )
            elapsed = time.monotonic() - start
        finally:
            set_mode("slowpoke", "ok")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"]["level"] == "fallback_model"
    assert body["degraded"]["reason"] == "CallTimeout"
    assert body["predictions"] == [{"predict": 20.0}]
    assert elapsed < 1.0


def _largest_batch(metrics: str) -> float:
    """The largest bucket bound that saw a batch of several requests."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("stalwart_batch_requests_bucket{") and 'model="picky"' in line:
            le = line.split('le="')[1].split('"')[0]
            counts[float(le)] = float(line.rsplit(" ", 1)[1])
    total = max(counts.values())
    singles = counts.get(1.0, 0.0)
    return float(np.inf) if total > singles else 1.0
