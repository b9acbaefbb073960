"""What a prediction record keeps of long texts: at most MAX_LOGGED_TEXT characters of text
per record, longer ones past that as a stand-in (their start, length and hash), so one
request at the body limit cannot make a record of megabytes (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.tap import MAX_LOGGED_TEXT
from tests.models import Mixed
from tests.servers import LiveServer, start_server

MIXED_SAMPLE = {
    "age": np.array([30, 41], dtype=np.int32),
    "income": np.array([52000.0, 61000.0], dtype=np.float32),
    "city": np.array(["Oslo", "Amsterdam"], dtype=object),
}


def _infer(server: LiveServer, cities: list[str]) -> str:
    n = len(cities)
    response = server.post("/v2/models/mixed/infer", json={"inputs": [
        {"name": "age", "datatype": "INT32", "shape": [n], "data": [30] * n},
        {"name": "income", "datatype": "FP32", "shape": [n, 1], "data": [[52000.0]] * n},
        {"name": "city", "datatype": "BYTES", "shape": [n], "data": cities},
    ]})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def _record(server: LiveServer, request_id: str, token: str) -> bytes:
    deadline = time.monotonic() + 20
    while True:
        response = server.get(f"/v1/predictions/{request_id}", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200:
            return response.content
        assert response.status_code == 404, response.text
        assert time.monotonic() < deadline, "the record did not reach the log within 20 s"
        time.sleep(0.1)


def test_a_megabyte_text_is_logged_as_a_stand_in_and_short_texts_whole(tmp_path: Path) -> None:
    """A 1 MiB BYTES value is answered (the model sees all of it) but logged as its first 64
    characters, its length and its hash; the short value beside it is logged whole."""
    settings = Settings(home=tmp_path / "home", python_modules=("tests",))
    registry = Registry.open(settings)
    registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
    registry.db.dispose()
    long_text = "é" + "x" * (1024 * 1024 - 1)
    with start_server(settings) as server:
        token = settings.resolved_admin_token()
        raw = _record(server, _infer(server, ["Oslo", long_text]), token)
        small = _record(server, _infer(server, ["Oslo", "Bergen"]), token)
    assert len(raw) < 2 * MAX_LOGGED_TEXT
    record = json.loads(raw)
    short, cut = record["inputs"]["city"]
    assert short == "Oslo"
    digest = hashlib.sha256(long_text.encode()).hexdigest()[:16]
    assert cut == f"{long_text[:64]}… [1,048,576 characters, sha256 {digest}…, cut from the log]"
    assert record["outputs"]["score"][1] > 1024 * 1024  # the model saw the whole text
    assert json.loads(small)["inputs"]["city"] == ["Oslo", "Bergen"]


def test_texts_are_kept_whole_until_the_record_budget_is_spent(tmp_path: Path) -> None:
    """Texts of 10,000 characters: the first ones whole while the record's budget lasts, the
    rest as stand-ins; short ones (categories) are always whole."""
    settings = Settings(home=tmp_path / "home", python_modules=("tests",))
    registry = Registry.open(settings)
    registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
    registry.db.dispose()
    texts = [f"{i:04d}" + "y" * 9_996 for i in range(12)] + ["Oslo"]
    with start_server(settings) as server:
        raw = _record(server, _infer(server, texts), settings.resolved_admin_token())
    logged = json.loads(raw)["inputs"]["city"]
    whole = MAX_LOGGED_TEXT // 10_000
    assert logged[:whole] == texts[:whole]
    assert all(value.startswith(text[:64]) and "10,000 characters" in value for value, text in zip(logged[whole:-1], texts[whole:-1], strict=True))
    assert logged[-1] == "Oslo"
    assert len(raw) < 2 * MAX_LOGGED_TEXT
