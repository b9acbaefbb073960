"""Rollouts through a real server: the controller judges the canary from the prediction log
and rolls a bad one back (errors, shifted scores, slowness) or promotes a good one through
every step; routing stays sticky as the weight rises; people pause, resume and roll back
through the admin API; bad requests are clear 4xx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.hashing import canonical_json
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.rollout.routing import assign
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server

SOURCE = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
NAME = "payments"

# Quick steps, small samples and wide tolerances: a test's traffic is a few hundred requests,
# so only clear differences are decided, which is what these canaries have.
FAST_PLAN: dict[str, Any] = {
    "steps": [0.3, 0.6],
    "min_seconds": 1,
    "min_requests": 20,
    "look_seconds": 0.5,
    "rules": {
        "error_rate": {"tolerance": 0.2, "min_n": 20},
        "degradation_rate": {"tolerance": 0.2, "min_n": 20},
        "violation_rate": {"tolerance": 0.2, "min_n": 20},
        "latency": {"tolerance": 1.0, "min_n": 20},
        "score_shift": {"tolerance": 5.0, "min_n": 20},
        "tail_latency": None,
        "accuracy": None,
    },
}


def _settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rollout_lag_seconds": 1.0, "routes_poll_seconds": 0.2})


def _token(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.resolved_admin_token()}"}


def _register(registry: Registry, canary_scale: float = 1.0) -> None:
    set_mode("steady-primary", "ok")
    set_mode("steady-canary", "ok")
    registry.register("scorer", Switchable("steady-primary", 1.0), sample=SAMPLE)  # v1: the primary
    registry.register("scorer", Switchable("steady-canary", canary_scale), sample=SAMPLE)  # v2: the canary


@contextmanager
def _server(settings: Settings, registry: Registry) -> Iterator[LiveServer]:
    deployment = Deployment(NAME, model="scorer:1", features=[SOURCE.amount], rollout=FAST_PLAN)
    app = create_app(settings, registry=registry, project=Project.of(deployment, SOURCE))
    with start_server(settings, app=app) as server:
        yield server


@contextmanager
def _traffic(server: LiveServer) -> Iterator[list[tuple[int, str, int]]]:
    """Requests with ever new entities from a thread: (entity, variant, status) each."""
    seen: list[tuple[int, str, int]] = []
    stop = threading.Event()

    def send() -> None:
        entity = 0
        while not stop.is_set():
            entity += 1
            response = server.post(f"/v1/deployments/{NAME}/predict", json={"entities": [{"id": entity}], "values": [{"amount": 2.0}]})
            seen.append((entity, response.headers.get("x-stalwart-variant", ""), response.status_code))

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    try:
        yield seen
    finally:
        stop.set()
        worker.join(10)


def _wait_final(server: LiveServer, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = server.get(f"/v1/deployments/{NAME}/rollout?events=1000").json()
        if body["rollout"]["state"] in ("promoted", "rolled_back", "held"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"the rollout did not end in {timeout} s: {body['rollout']}")


def _start(server: LiveServer, settings: Settings) -> dict[str, Any]:
    started = server.post(f"/v1/deployments/{NAME}/rollout", json={"canary": "scorer:2", "reason": "test"}, headers=_token(settings))
    assert started.status_code == 201, started.text
    return started.json()["rollout"]  # type: ignore[no-any-return]


def test_a_good_canary_is_promoted_through_every_step(settings: Settings, registry: Registry) -> None:
    settings = _settings(settings)
    _register(registry)
    with _server(settings, registry) as server:
        rollout = _start(server, settings)
        assert rollout["weight"] == 0.3
        with _traffic(server) as seen:
            ended = _wait_final(server)
        assert ended["rollout"]["state"] == "promoted", ended["rollout"]["reason"]
        kinds = [e["kind"] for e in ended["events"]]
        assert kinds[0] == "start"
        assert kinds.count("step") == 1
        assert kinds[-1] == "promote"
        steps = [e for e in ended["events"] if e["kind"] == "step"]
        assert steps[0]["weight"] == 0.6
        # Every look carries its numbers: each rule's verdict, the arms' summaries, the SRM test.
        look = next(e for e in reversed(ended["events"]) if e["kind"] == "look")
        verdicts = {v["metric"]: v for v in look["detail"]["judgement"]["verdicts"]}
        assert verdicts["error_rate"]["decision"] == "pass"
        assert verdicts["error_rate"]["n_canary"] >= 20
        assert look["detail"]["srm"]["mismatch"] is False
        assert all(status == 200 for _, _, status in seen)
        # Promoted: the canary's version is the primary now, for every request, on every replica.
        routes = server.get(f"/v1/deployments/{NAME}/routes").json()["routes"]
        assert (routes["primary"], routes["canary"]) == ("scorer:2", None)
        time.sleep(0.5)  # a poll
        answer = server.post(f"/v1/deployments/{NAME}/predict", json={"entities": [{"id": 1}], "values": [{"amount": 2.0}]}).json()
        assert (answer["variant"], answer["model"]["version"]) == ("primary", 2)
    # The decisions are in the hash-chained audit log with their numbers.
    actions = [e["action"] for e in registry.events(limit=None) if e["action"].startswith("rollout.")]
    assert {"rollout.start", "rollout.step", "rollout.promote"} <= set(actions)


@pytest.mark.parametrize(
    ("fault", "canary_scale", "failing"),
    [
        (("raise", {}), 1.0, "error_rate"),
        (("ok", {}), 50.0, "score_shift"),
        (("slow", {"seconds": 0.08}), 1.0, "latency"),
    ],
    ids=["errors", "shifted", "slower"],
)
def test_a_bad_canary_is_rolled_back(
    settings: Settings, registry: Registry, fault: tuple[str, dict[str, Any]], canary_scale: float, failing: str
) -> None:
    settings = _settings(settings)
    _register(registry, canary_scale)
    with _server(settings, registry) as server:
        _start(server, settings)
        mode, options = fault
        set_mode("steady-canary", mode, **options)
        try:
            with _traffic(server) as seen:
                ended = _wait_final(server)
        finally:
            set_mode("steady-canary", "ok")
        assert ended["rollout"]["state"] == "rolled_back", ended["rollout"]
        assert failing in ended["rollout"]["reason"]
        look = next(e for e in reversed(ended["events"]) if e["kind"] == "look")
        verdict = next(v for v in look["detail"]["judgement"]["verdicts"] if v["metric"] == failing)
        assert verdict["decision"] == "fail"
        assert verdict["lower"] is not None
        assert verdict["effect"] is not None
        # Rolled back: no request goes to the canary any more, and the primary never failed.
        time.sleep(0.5)
        after = [server.post(f"/v1/deployments/{NAME}/predict", json={"entities": [{"id": i}], "values": [{"amount": 1.0}]}) for i in range(30)]
        assert {r.json()["variant"] for r in after} == {"primary"}
        assert all(status == 200 for _, variant, status in seen if variant == "primary")


def test_routing_is_sticky_as_the_weight_rises(settings: Settings, registry: Registry) -> None:
    """A canary set at run time (PUT routes) is served within a poll; as its weight rises,
    keys only move from primary to canary, each as the documented hash under the salt says."""
    settings = _settings(settings)
    _register(registry)
    with _server(settings, registry) as server:

        def variants() -> dict[int, str]:
            body = {"values": [{"amount": 1.0}]}
            return {
                i: server.post(f"/v1/deployments/{NAME}/predict", json={"entities": [{"id": i}], **body}).json()["variant"]
                for i in range(300)
            }

        def weigh(weight: float) -> tuple[str, dict[int, str]]:
            put = server.client.put(f"/v1/deployments/{NAME}/routes", json={"canary": "scorer:2", "canary_weight": weight}, headers=_token(settings))
            assert put.status_code == 200, put.text
            routes = put.json()["routes"]
            time.sleep(0.6)  # a poll and a margin
            return routes["salt"], variants()

        salt, low = weigh(0.2)
        salt_again, high = weigh(0.6)
        assert salt_again == salt  # the same canary keeps its salt as its weight moves
        for entity in range(300):
            key = canonical_json({"id": entity})
            assert low[entity] == ("canary" if assign(key, salt, 0.2) else "primary")
            assert high[entity] == ("canary" if assign(key, salt, 0.6) else "primary")
            assert not (low[entity] == "canary" and high[entity] == "primary")  # never back
        assert 0.1 < sum(v == "canary" for v in low.values()) / 300 < 0.3
        assert 0.5 < sum(v == "canary" for v in high.values()) / 300 < 0.7


def test_people_pause_resume_and_roll_back_through_the_api(settings: Settings, registry: Registry) -> None:
    settings = _settings(settings)
    _register(registry)
    with _server(settings, registry) as server:
        _start(server, settings)
        again = server.post(f"/v1/deployments/{NAME}/rollout", json={"canary": "scorer:2"}, headers=_token(settings))
        assert again.status_code == 409
        assert "already has rollout" in again.json()["error"]
        assert server.post(f"/v1/deployments/{NAME}/rollout/pause").status_code == 401
        paused = server.post(f"/v1/deployments/{NAME}/rollout/pause", json={"reason": "lunch"}, headers=_token(settings))
        assert paused.json()["rollout"]["state"] == "paused"
        assert server.post(f"/v1/deployments/{NAME}/rollout/pause", headers=_token(settings)).status_code == 409
        assert server.post(f"/v1/deployments/{NAME}/rollout/resume", headers=_token(settings)).json()["rollout"]["state"] == "running"
        back = server.post(f"/v1/deployments/{NAME}/rollout/rollback", json={"reason": "by hand"}, headers=_token(settings))
        assert back.json()["rollout"]["state"] == "rolled_back"
        assert server.get(f"/v1/deployments/{NAME}/routes").json()["routes"]["canary"] is None
        kinds = [e["kind"] for e in server.get(f"/v1/deployments/{NAME}/rollout").json()["events"]]
        assert kinds == ["start", "pause", "resume", "rollback"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/rollout", {"canary": "scorer:9"}, 404, None),
        ("/rollout", {"canary": "scorer"}, 400, None),
        ("/rollout", {"canary": "scorer:2", "plan": {"steps": [0.5, 0.2]}}, 400, None),
        ("/rollout", {"canary": "scorer:2", "plan": {"rules": {"nonsense": {}}}}, 400, None),
        ("/rollout", {"canary": 3}, 400, "body"),
        ("/rollout", {"canary": "scorer:2", "extra": 1}, 400, "body"),
        ("/rollout/explode", {}, 404, None),
        ("/routes", {"canary_weight": 2}, 400, None),
        ("/routes", {"shadows": {"x": {"model": "scorer:2", "rate": -1}}}, 400, None),
    ],
)
def test_bad_rollout_requests_are_clear_4xx(
    settings: Settings, registry: Registry, path: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    settings = _settings(settings)
    _register(registry)
    with _server(settings, registry) as server:
        method = server.client.put if path == "/routes" else server.client.post
        response = method(f"/v1/deployments/{NAME}{path}", json=body, headers=_token(settings))
        assert response.status_code == status, response.text
        assert response.json()["error"]
        if field is not None:
            assert response.json()["field"] == field
