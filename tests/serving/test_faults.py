"""Fault injection through the real HTTP server: slow models and bursts past capacity."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server

TXN = RequestSource("txn", fields={"x": "float"})
SAMPLE = pd.DataFrame({"x": [float(i) for i in range(60)]})


@pytest.fixture
def models(registry: Registry) -> Registry:
    set_mode("primary", "ok")
    set_mode("backup", "ok")
    registry.register("primary", Switchable("primary", 1.0), sample=SAMPLE)
    registry.register("backup", Switchable("backup", 10.0), sample=SAMPLE)
    return registry


@contextmanager
def _serve(settings: Settings, registry: Registry, *deployments: Deployment) -> Iterator[LiveServer]:
    from stalwart.serving.app import create_app

    app = create_app(settings.model_copy(update={"batching": False}), registry=registry, project=Project.of(*deployments, TXN))
    with start_server(settings, app=app) as server:
        yield server


def _body(x: float = 1.0) -> dict[str, Any]:
    return {"entities": [{"id": 1}], "values": [{"x": x}]}


def test_a_slow_model_opens_the_breaker_on_slow_calls_and_recovers(settings: Settings, models: Registry) -> None:
    """Calls slower than the slow-call threshold (but inside the timeout) open the breaker
    by slow-call rate; the fallback answers meanwhile; fast again, it closes."""
    guard = {
        "timeout": {"timeout_duration": "2s"},
        "breaker": {
            "slow_call_duration_threshold": "100ms",
            "slow_call_rate_threshold": 50,
            "sliding_window_size": 4,
            "minimum_number_of_calls": 4,
            "wait_duration_in_open_state": "300ms",
            "permitted_number_of_calls_in_half_open_state": 1,
        },
    }
    with _serve(settings, models, Deployment("slow", model="primary", features=[TXN.x], guard=guard, fallback="backup")) as server:
        set_mode("primary", "slow", seconds=0.15)
        for _ in range(4):
            response = server.post("/v1/deployments/slow/predict", json=_body())
            assert response.status_code == 200
            assert "degraded" not in response.json()  # slow, but answered
        breaker = server.get("/v1/deployments/slow/health").json()["guards"][0]["breaker"]
        assert breaker["state"] == "open"
        assert breaker["slow_call_rate"] == 100.0
        refused = server.post("/v1/deployments/slow/predict", json=_body())
        assert refused.json()["degraded"] == {"level": "fallback_model", "reason": "CallNotPermitted", "detail": refused.json()["degraded"]["detail"]}
        set_mode("primary", "ok")
        time.sleep(0.35)
        assert "degraded" not in server.post("/v1/deployments/slow/predict", json=_body()).json()
        assert server.get("/v1/deployments/slow/health").json()["guards"][0]["breaker"]["state"] == "closed"


def test_a_burst_at_twice_capacity_is_shed_at_once_with_retry_after(settings: Settings, models: Registry) -> None:
    """Capacity 4, 8 requests at once on a slow model: 4 are served, 4 are turned away at
    once (503 with Retry-After), none waits behind the others."""
    shedding = {"max_in_flight": 4, "max_queue_wait": None, "priority_shares": {"normal": 1.0}}
    with _serve(settings, models, Deployment("busy", model="primary", features=[TXN.x], shedding=shedding, guard={"timeout": {"timeout_duration": "5s"}})) as server:
        set_mode("primary", "slow", seconds=0.4)

        def call(_: int) -> tuple[int, float, dict[str, str]]:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                start = time.monotonic()
                response = client.post("/v1/deployments/busy/predict", json=_body())
                return response.status_code, time.monotonic() - start, dict(response.headers)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        served = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        assert len(served) + len(shed) == 8
        assert len(served) >= 4
        assert shed, results
        assert all(r[2].get("retry-after") for r in shed)
        assert max(r[1] for r in shed) < 0.35  # turned away at once, not after queueing
        text = server.get("/metrics").text
        assert 'stalwart_shed_requests_total{deployment="busy",priority="normal"}' in text


def test_high_priority_traffic_keeps_its_reserved_share(settings: Settings, models: Registry) -> None:
    """With normal traffic filling its share, a high-priority request still gets in."""
    shedding = {"max_in_flight": 4, "max_queue_wait": None, "priority_shares": {"low": 0.5, "normal": 0.75, "high": 1.0}}
    with _serve(settings, models, Deployment("vip", model="primary", features=[TXN.x], shedding=shedding, guard={"timeout": {"timeout_duration": "5s"}})) as server:
        set_mode("primary", "slow", seconds=0.5)

        def call(priority: str) -> int:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                return client.post("/v1/deployments/vip/predict", json=_body(), headers={"X-Stalwart-Priority": priority}).status_code

        with ThreadPoolExecutor(6) as pool:
            normal = [pool.submit(call, "normal") for _ in range(4)]
            time.sleep(0.15)
            high = pool.submit(call, "high")
            low = pool.submit(call, "low")
            assert high.result() == 200
            assert low.result() == 503
            assert sorted(f.result() for f in normal) == [200, 200, 200, 503]


def test_request_deadline_is_respected(settings: Settings, models: Registry) -> None:
    """X-Request-Timeout cuts a slow call short and the ladder answers within it."""
    with _serve(settings, models, Deployment("tight", model="primary", features=[TXN.x], fallback="backup", guard={"timeout": {"timeout_duration": "5s"}})) as server:
        set_mode("primary", "slow", seconds=1.0)
        start = time.monotonic()
        response = server.post("/v1/deployments/tight/predict", json=_body(), headers={"X-Request-Timeout": "200"})
        elapsed = time.monotonic() - start
        assert elapsed < 0.9
        assert response.status_code in (200, 504), response.text
        bad = server.post("/v1/deployments/tight/predict", json=_body(), headers={"X-Request-Timeout": "soon"})
        assert bad.status_code == 400
        assert "X-Request-Timeout" in bad.json()["error"]
