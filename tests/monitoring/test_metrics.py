"""/metrics in Prometheus text format: request counts and latency by model, version,
endpoint and status; requests in flight; model load time and loaded models."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from stalwart.registry import Registry
from tests import models
from tests.servers import LiveServer, start_server

INFER = "/v2/models/{model}/infer"


def _samples(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by Prometheus's own parser, keyed by name and labels."""
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics_server(settings: Settings, registry: Registry) -> Iterator[LiveServer]:
    registry.register("lin", models.Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
    registry.register("lin", models.Linear(np.ones(2), 1.0), sample=np.ones((2, 2)))
    # No sample: registration would call predict on it, which blocks.
    registry.register("blocking", models.Blocking(), signature={
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 2]}],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    })
    with start_server(settings, registry) as server:
        yield server


def _body(rows: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, 2], "data": [1.0] * (2 * rows)}]}


def test_requests_are_counted_and_timed_by_model_version_endpoint_status(metrics_server: LiveServer) -> None:
    """Each request lands in the counter and the latency histogram under its model, version,
    route template and status; a made-up model name is not a label value."""
    for _ in range(3):
        assert metrics_server.post("/v2/models/lin/infer", json=_body()).status_code == 200
    assert metrics_server.post("/v2/models/lin/versions/1/infer", json=_body()).status_code == 200
    assert metrics_server.post("/v2/models/lin/infer", json={"inputs": []}).status_code == 400
    assert metrics_server.post("/v2/models/made-up/infer", json=_body()).status_code == 404
    assert metrics_server.post("/v2/models/made-up-too/versions/1/infer", json=_body()).status_code == 404
    samples = _samples(metrics_server)
    labels = {"model": "lin", "version": "2", "endpoint": INFER, "status": "200"}
    assert _value(samples, "stalwart_requests_total", **labels) == 3
    assert _value(samples, "stalwart_requests_total", **{**labels, "version": "1"}) == 1
    assert _value(samples, "stalwart_requests_total", **{**labels, "status": "400"}) == 1
    assert _value(samples, "stalwart_requests_total", model="", version="", endpoint=INFER, status="404") == 2
    assert _value(samples, "stalwart_request_duration_seconds_count", **labels) == 3
    total = _value(samples, "stalwart_request_duration_seconds_sum", **labels)
    assert total is not None
    assert 0 < total < 3
    assert _value(samples, "stalwart_request_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert _value(samples, "stalwart_request_duration_seconds_bucket", **labels, le="0.0005") is not None
    assert not any("made-up" in str(key) for key in samples)


def test_requests_in_flight(metrics_server: LiveServer) -> None:
    """The in-flight gauge counts requests being served now, and falls back when they end."""
    models.RELEASE.clear()
    with httpx.Client(base_url=metrics_server.url, timeout=30) as client:
        slow = threading.Thread(target=lambda: client.post("/v2/models/blocking/infer", json=_body()))
        slow.start()
        try:
            deadline = time.monotonic() + 10
            # The scrape itself is in flight too, so 2 means the blocked request is counted.
            while _value(_samples(metrics_server), "stalwart_requests_in_flight") != 2:
                assert time.monotonic() < deadline, "the blocked request was never counted in flight"
                time.sleep(0.02)
        finally:
            models.RELEASE.set()
            slow.join(timeout=30)
    assert _value(_samples(metrics_server), "stalwart_requests_in_flight") == 1


def test_model_load_time_and_loaded_models(metrics_server: LiveServer) -> None:
    """Each load is timed under its model and version; the gauge counts loaded versions,
    and grows when an older version is loaded on demand."""
    samples = _samples(metrics_server)
    assert _value(samples, "stalwart_model_load_seconds_count", model="lin", version="2") == 1
    load_time = _value(samples, "stalwart_model_load_seconds_sum", model="lin", version="2")
    assert load_time is not None
    assert load_time > 0
    assert _value(samples, "stalwart_model_load_seconds_count", model="lin", version="1") is None
    assert _value(samples, "stalwart_models_loaded") == 2  # lin:2 and blocking:1
    assert metrics_server.post("/v2/models/lin/versions/1/infer", json=_body()).status_code == 200
    samples = _samples(metrics_server)
    assert _value(samples, "stalwart_model_load_seconds_count", model="lin", version="1") == 1
    assert _value(samples, "stalwart_models_loaded") == 3
