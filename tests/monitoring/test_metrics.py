"""/metrics in Prometheus text format: request counts and latency by model, version,
endpoint and status; requests in flight; model load time and loaded models."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from stalwart.monitoring.metrics import ServingMetrics, exposition, multiprocess_dir
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


SRC = Path(__file__).resolve().parents[2] / "src" / "stalwart"


def _gauges_without_a_live_mode() -> tuple[int, list[str]]:
    """Every ``Gauge(...)`` call under src/stalwart, and those whose ``multiprocess_mode``
    is not a literal ``live...`` mode (file:line)."""
    seen, missing = 0, []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name != "Gauge":
                continue
            seen += 1
            mode = next((k.value for k in node.keywords if k.arg == "multiprocess_mode"), None)
            if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and mode.value.startswith("live")):
                missing.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return seen, missing


def test_every_gauge_says_how_workers_combine() -> None:
    """Under ``--workers N`` a scrape merges every worker's values: each gauge declares how
    (sum, min, most recent...), always a live mode so a dead worker's value goes with it."""
    seen, missing = _gauges_without_a_live_mode()
    assert seen >= 15
    assert missing == []


_WORKER = """
import os, sys
from stalwart.monitoring.metrics import ServingMetrics, sample
metrics = ServingMetrics()
metrics.in_flight_count = int(sys.argv[1])
for _ in range(int(sys.argv[2])):
    metrics.observe_request("lin", "1", "/v2/models/{model}/infer", 200, 0.001)
sample()
print(os.getpid())
"""


def test_in_multiprocess_mode_any_process_shows_the_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (what the supervisor gives its workers), the exposition
    adds up every process's counters and histograms, and function gauges (requests in
    flight) once sampled; a process marked dead leaves its counts in the totals but takes
    its gauges with it."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(SRC.parent)}
    pids = [
        int(subprocess.run([sys.executable, "-c", _WORKER, str(flight), str(n)], env=env, check=True, capture_output=True, text=True).stdout)
        for flight, n in ((3, 2), (4, 5))
    ]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = exposition(CollectorRegistry()).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    labels = {"model": "lin", "version": "1", "endpoint": "/v2/models/{model}/infer", "status": "200"}
    samples = scrape()
    assert _value(samples, "stalwart_requests_total", **labels) == 7
    assert _value(samples, "stalwart_request_duration_seconds_count", **labels) == 7
    assert _value(samples, "stalwart_requests_in_flight") == 7
    mark_process_dead(pids[0], str(tmp_path))
    samples = scrape()
    assert _value(samples, "stalwart_requests_total", **labels) == 7
    assert _value(samples, "stalwart_requests_in_flight") == 4


def test_one_process_reads_its_own_registry() -> None:
    """Without PROMETHEUS_MULTIPROC_DIR (one server process, the default) nothing of the
    above happens: the exposition is the registry's own, function gauges read live."""
    assert multiprocess_dir() is None
    metrics = ServingMetrics()
    metrics.in_flight_count = 5
    assert exposition(metrics.registry) == generate_latest(metrics.registry)
    assert b"stalwart_requests_in_flight 5.0" in metrics.exposition()
