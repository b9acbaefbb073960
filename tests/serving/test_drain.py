"""Draining (serving/drain.py), seen from a client: while the server drains, readiness says
no and names why, liveness and requests are still served, and every response closes its
connection so the next request goes elsewhere. SIGTERM's part (when the drain begins, how
long it lasts) is tested with real processes in test_server_lifecycle.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stalwart.config import load_settings
from stalwart.errors import ConfigError
from tests.conftest import rows
from tests.servers import LiveServer


def _infer(served: LiveServer, cancer: dict[str, Any]) -> httpx.Response:
    x = rows(cancer, 1)
    body = {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}]}
    return served.post("/v2/models/breast-cancer/infer", json=body)


def test_a_draining_server_is_not_ready_but_still_serves_closing_each_connection(served: LiveServer, cancer: dict[str, Any]) -> None:
    before = served.get("/v2/health/ready")
    assert before.status_code == 200
    assert before.headers.get("connection") != "close"
    assert _infer(served, cancer).headers.get("connection") != "close"

    served.app.state.drain.begin()

    ready = served.get("/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "error": "draining: the server is shutting down"}
    assert ready.headers["connection"] == "close"
    live = served.get("/v2/health/live")
    assert live.status_code == 200
    assert live.headers["connection"] == "close"
    answer = _infer(served, cancer)
    assert answer.status_code == 200, answer.text
    assert answer.headers["connection"] == "close"


def test_drain_seconds_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="STALWART_DRAIN_SECONDS"):
        load_settings(drain_seconds=-1)
