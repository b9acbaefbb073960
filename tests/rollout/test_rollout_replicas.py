"""Rollouts across real ``stalwart serve`` processes on one PostgreSQL database: both
replicas route every key alike, a change made through one is served by the other within a
poll, and when the replica leading the controller is SIGKILLed mid-rollout, the other takes
the lock over and carries the rollout on from the database to its promotion."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.registry import Registry
from tests.faults import Switchable
from tests.processes import ServeProcess

SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
PROJECT = '''
from stalwart.project import Deployment, RequestSource

txn = RequestSource("txn", fields={"amount": "float"})
payments = Deployment(
    "payments", model="scorer:1", features=[txn.amount],
    rollout={
        "steps": [0.3, 0.6], "min_seconds": 2, "min_requests": 20, "look_seconds": 0.5,
        "rules": {
            "error_rate": {"tolerance": 0.2, "min_n": 20}, "degradation_rate": {"tolerance": 0.2, "min_n": 20},
            "violation_rate": {"tolerance": 0.2, "min_n": 20}, "latency": {"tolerance": 1.0, "min_n": 20},
            "score_shift": {"tolerance": 5.0, "min_n": 20}, "tail_latency": None, "accuracy": None,
        },
    },
)
'''
PREDICT = "/v1/deployments/payments/predict"


@pytest.fixture
def replicas(home: Path, pg_url: str) -> Iterator[tuple[list[ServeProcess], Settings]]:
    settings = Settings(home=home, db_url=pg_url, python_modules=("tests",))
    registry = Registry.open(settings)
    registry.register("scorer", Switchable("replica-primary"), sample=SAMPLE)
    registry.register("scorer", Switchable("replica-canary"), sample=SAMPLE)
    registry.db.dispose()
    project = home.parent / "project.py"
    project.write_text(PROJECT)
    env = {
        "STALWART_HOME": str(home), "STALWART_DB_URL": pg_url, "STALWART_PROJECT": str(project),
        "STALWART_PYTHON_MODULES": "tests", "STALWART_ROLLOUT_LAG_SECONDS": "1", "STALWART_ROUTES_POLL_SECONDS": "0.2",
    }
    servers = [ServeProcess(env, home.parent / f"serve-{i}.log") for i in range(2)]
    try:
        # The first takes the controller's lock at its first tick, alone; then the second starts.
        servers[0].start()
        servers[0].wait_ready()
        time.sleep(1.5)
        servers[1].start()
        servers[1].wait_ready()
        yield servers, settings
    finally:
        for server in servers:
            server.stop()


def _variants(server: ServeProcess, entities: range) -> dict[int, str]:
    found = {}
    for i in entities:
        response = server.post(PREDICT, json={"entities": [{"id": i}], "values": [{"amount": 1.0}]})
        assert response.status_code == 200, response.text
        found[i] = response.json()["variant"]
    return found


def _lock_holders(pg_url: str) -> int:
    """How many sessions hold the rollout controller's advisory lock."""
    import psycopg

    key = 0x7374616C726F6C6C - (1 << 63)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s AND granted",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchone()
    return int(row[0]) if row else 0


def test_replicas_route_alike_and_a_killed_controller_is_taken_over(
    replicas: tuple[list[ServeProcess], Settings], pg_url: str
) -> None:
    servers, settings = replicas
    token = {"Authorization": f"Bearer {settings.resolved_admin_token()}"}
    started = servers[0].post("/v1/deployments/payments/rollout", json={"canary": "scorer:2"}, headers=token)
    assert started.status_code == 201, started.text
    time.sleep(0.8)  # a poll on each replica, and a margin
    # Both replicas route each key alike: the state and the hash are shared, not per process.
    first, second = _variants(servers[0], range(120)), _variants(servers[1], range(120))
    assert first == second
    assert 0.15 < sum(v == "canary" for v in first.values()) / 120 < 0.45

    assert _lock_holders(pg_url) == 1  # one controller across the replicas
    leader, survivor = servers
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        entity = 1000
        with httpx.Client(base_url=survivor.url, timeout=10) as client:
            while not stop.is_set():
                entity += 1
                statuses.append(client.post(PREDICT, json={"entities": [{"id": entity}], "values": [{"amount": 1.0}]}).status_code)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        time.sleep(1.5)  # the leader looks at least once
        assert leader.process is not None
        killed_at = time.time()
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait(10)
        leader.process = None
        # The survivor takes the lock once PostgreSQL sees the dead session go, and carries on.
        deadline = time.monotonic() + 90
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = survivor.get("/v1/deployments/payments/rollout?events=1000").json()
            if state["rollout"]["state"] != "running":
                break
            time.sleep(0.3)
    finally:
        stop.set()
        worker.join(10)
    assert state["rollout"]["state"] == "promoted", state["rollout"]
    kinds = [e["kind"] for e in state["events"]]
    assert kinds[0] == "start"
    assert "step" in kinds
    assert kinds[-1] == "promote"
    # The survivor's controller made the decisions after the kill, from the looks on record.
    after = [e for e in state["events"] if e["at"] > killed_at and e["kind"] == "look"]
    assert after
    assert state["events"][-1]["at"] > killed_at
    assert _lock_holders(pg_url) == 1
    assert set(statuses) == {200}
