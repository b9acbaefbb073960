"""Three replicas of the fraud example behind nginx, sharing PostgreSQL and Redis, as a
user runs them at scale: a replica that dies costs clients only the requests it was
answering; one told to stop leaves the rotation first and costs nothing; whatever is
registered, written or rolled out through one replica is what every replica serves; every
answered request is recorded once.

The tests share one cluster (tests/cluster/conftest.py) and run in this order; a test that
needs every replica starts again one an earlier test stopped."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from stalwart.registry import Registry
from tests.cluster.conftest import REPLICA_ENV, FraudCluster
from tests.cluster.traffic import PREDICT, Outcome, Traffic
from tests.local_cluster import train_fraud, v2_body
from tests.processes import ServeProcess
from tests.serving.conftest import poll, predict_body

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

POLL = float(REPLICA_ENV["STALWART_REGISTRY_POLL_SECONDS"])
DRAIN = float(REPLICA_ENV["STALWART_DRAIN_SECONDS"])
GRACEFUL = float(REPLICA_ENV["STALWART_GRACEFUL_SHUTDOWN_SECONDS"])
# Loading a version (reading and verifying the artifact, building its pipeline) once the poll
# has seen it; generous, for a shared machine.
LOAD_SECONDS = 5.0


def _wait_recorded(fraud_cluster: FraudCluster, ids: list[str], timeout: float = 20.0) -> dict[str, int]:
    """The records of ``ids``, once all are in PostgreSQL or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = fraud_cluster.recorded(ids)
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def _served_by(fraud_cluster: FraudCluster, outcomes: list[Outcome]) -> dict[str, str]:
    """The replica (``127.0.0.1:port``) that answered each outcome (or was tried last), from
    nginx's access log (a request's line is written just after its answer: waited for)."""
    wanted = {o.request_id for o in outcomes}
    deadline = time.monotonic() + 5
    while True:
        lines = {line.request_id: line for line in fraud_cluster.cluster.nginx.access() if line.request_id in wanted}
        if len(lines) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    missing = [o for o in outcomes if o.request_id not in lines]
    assert not missing, f"not in nginx's access log (never reached it): {missing}"
    return {request_id: line.upstreams[-1] if line.upstreams else "-" for request_id, line in lines.items()}


def test_a_killed_replica_costs_only_the_requests_in_flight_on_it(fraud_cluster: FraudCluster) -> None:
    """Under steady load through nginx, replica 0 is SIGKILLed, then restarted. The only
    failed requests are ones nginx had sent to replica 0 and that were in flight when it
    died (a POST that reached a replica is never sent again); the others went to the
    survivors, and once replica 0 is ready again it takes its share. Every answered request
    is recorded, but those replica 0 answered in the last moments before it died (records
    reach its spool within 50 ms; the restarted replica delivers what its spool held)."""
    fraud_cluster.ensure_running()
    cluster = fraud_cluster.cluster
    killed = cluster.address(0)
    with Traffic(fraud_cluster.url, fraud_cluster.cards, clients=4, tag="kill") as traffic:
        time.sleep(1.5)
        killed_at, dead_at = cluster.kill(0)
        time.sleep(1.0)
        cluster.restart(0)
        restarted_at = time.time()
        time.sleep(2.0)
    failed = traffic.failed
    served = _served_by(fraud_cluster, traffic.outcomes)
    for outcome in failed:
        assert outcome.status == 502, outcome
        assert served[outcome.request_id] == killed, outcome
        assert outcome.in_flight_during(killed_at, dead_at), (outcome, killed_at, dead_at)
    assert len(failed) <= traffic.clients  # no more than could be in flight at once
    after = [o for o in traffic.answered if o.sent > restarted_at + 0.5]
    assert after, "no traffic after the restart"
    assert any(served[o.request_id] == killed for o in after), "the restarted replica took no requests"

    answered = traffic.answered
    found = _wait_recorded(fraud_cluster, [o.request_id for o in answered])
    assert set(found.values()) == {1}
    lost = [o for o in answered if o.request_id not in found]
    for outcome in lost:
        assert served[outcome.request_id] == killed, outcome
        assert killed_at - 0.5 < outcome.ended <= dead_at, (outcome, killed_at)
    print(f"\nkill: {len(traffic.outcomes)} requests, {len(failed)} failed at the kill, {len(lost)} answered records lost with it")


def _next_version(fraud_cluster: FraudCluster) -> int:
    """A new version of ``fraud``, registered (a model of a few trees: it takes seconds)."""
    version, _ = train_fraud(fraud_cluster.frame, fraud_cluster.settings, max_iter=5)
    return int(version.version)


def test_a_version_registered_is_served_by_every_replica_within_a_poll(fraud_cluster: FraudCluster) -> None:
    """A version registered in the shared registry (by a training script, as a user does)
    answers ``/v2/models/fraud/infer`` on every replica, asked directly, within the
    registry poll and the version's load."""
    fraud_cluster.ensure_running()
    replicas = fraud_cluster.cluster.replicas
    body = v2_body(replicas[0].get("/v2/models/fraud").json())
    version = _next_version(fraud_cluster)
    registered = time.monotonic()

    def served_by(replica: ServeProcess) -> float | None:
        response = replica.post("/v2/models/fraud/infer", json=body)
        assert response.status_code == 200, response.text
        return time.monotonic() - registered if response.json()["model_version"] == str(version) else None

    delays = [poll(lambda r=replica: served_by(r), timeout=POLL + LOAD_SECONDS, interval=0.05) for replica in replicas]
    assert all(delay is not None for delay in delays), f"not every replica serves version {version}: {delays}"
    print(f"\nversion {version} served everywhere within {max(d for d in delays if d is not None):.2f} s of its registration")


def _features(replica: ServeProcess, card: int) -> dict[str, Any]:
    response = replica.post(PREDICT, json=predict_body(card))
    assert response.status_code == 200, response.text
    assert "degraded" not in response.json(), response.json()
    features: dict[str, Any] = response.json()["features"][0]
    return features


def test_a_source_write_through_one_replica_invalidates_the_cache_of_every_replica(fraud_cluster: FraudCluster) -> None:
    """Every replica has served (and cached) a card's features; a transaction written
    through replica 1 is in the features every replica serves next, at once (the
    invalidation reaches them through Redis before the write is acknowledged)."""
    fraud_cluster.ensure_running()
    replicas = fraud_cluster.cluster.replicas
    card = fraud_cluster.cards[-1]
    before = [_features(replica, card) for replica in replicas]
    assert before[0] == before[1] == before[2]
    assert all(_features(replica, card) == before[0] for replica in replicas)  # now from each one's memory
    row = {"card_id": card, "ts": time.time() - 1, "amount": 321.5, "merchant_category": "fuel", "is_fraud": 0}
    written = replicas[1].post("/v1/sources/transactions/rows", json={"rows": [row]}, headers=fraud_cluster.admin)
    assert written.status_code == 200, written.text
    assert written.json()["invalidated"] is True
    for replica in replicas:
        after = _features(replica, card)
        assert after["tx_count_1h"] == before[0]["tx_count_1h"] + 1, replica.url
        assert after["last_amount"] == 321.5


def _variants(replica: ServeProcess, cards: list[int]) -> dict[int, str]:
    out = {}
    for card in cards:
        response = replica.post(PREDICT, json=predict_body(card, features=False))
        assert response.status_code == 200, response.text
        out[card] = response.json()["variant"]
    return out


def test_a_rollout_routes_every_card_alike_on_every_replica(fraud_cluster: FraudCluster) -> None:
    """A rollout started through nginx (so by whichever replica) sends the same cards to
    the canary on every replica, each asked directly, once the routes' poll has passed."""
    fraud_cluster.ensure_running()
    registry = Registry.open(fraud_cluster.settings)
    try:
        latest = registry.get("fraud").version
    finally:
        registry.db.dispose()
    canary = latest if latest > 1 else _next_version(fraud_cluster)
    # One step at half the traffic, looked at hourly: nothing moves it during the test.
    plan = {"steps": [0.5], "min_seconds": "1h", "look_seconds": 3600}
    started = httpx.post(
        fraud_cluster.url + "/v1/deployments/fraud/rollout", json={"canary": f"fraud:{canary}", "plan": plan}, headers=fraud_cluster.admin,
    )
    assert started.status_code == 201, started.text
    replicas = fraud_cluster.cluster.replicas
    cards = sorted(set(int(c) for c in fraud_cluster.frame["card_id"].unique()[:80]))
    try:
        time.sleep(float(REPLICA_ENV["STALWART_ROUTES_POLL_SECONDS"]) * 3)
        seen = [_variants(replica, cards) for replica in replicas]
        assert seen[0] == seen[1] == seen[2]
        share = sum(v == "canary" for v in seen[0].values()) / len(cards)
        assert 0.25 < share < 0.75, share
    finally:
        rolled_back = httpx.post(
            fraud_cluster.url + "/v1/deployments/fraud/rollout/rollback", json={"reason": "end of test"}, headers=fraud_cluster.admin
        )
        assert rolled_back.status_code == 200, rolled_back.text


def test_every_answered_request_is_recorded_once(fraud_cluster: FraudCluster) -> None:
    """Steady traffic through nginx, no fault: every request is answered, and each answer's
    request id has exactly one record in PostgreSQL once the replicas have flushed."""
    fraud_cluster.ensure_running()
    with Traffic(fraud_cluster.url, fraud_cluster.cards, clients=3, tag="records") as traffic:
        time.sleep(2.0)
    assert traffic.failed == []
    ids = [o.request_id for o in traffic.answered]
    assert _wait_recorded(fraud_cluster, ids) == dict.fromkeys(ids, 1)
    assert len(set(_served_by(fraud_cluster, traffic.answered).values())) == 3  # all three took a share


def test_sigterm_takes_a_replica_out_of_rotation_first_and_fails_no_request(fraud_cluster: FraudCluster) -> None:
    """Under steady load through nginx, replica 2 gets SIGTERM: at once its readiness
    answers 503 (draining) while it still serves, the cluster takes it out of nginx's
    rotation, it stops accepting after the drain, and it exits by the signal within the
    drain plus the graceful shutdown; no client sees an error, and every request it
    answered is in PostgreSQL the moment it has exited (the prediction log is delivered
    before the process ends)."""
    fraud_cluster.ensure_running()
    cluster = fraud_cluster.cluster
    stopping = cluster.replicas[2]
    with Traffic(fraud_cluster.url, fraud_cluster.cards, clients=4, tag="drain") as traffic:
        time.sleep(1.0)
        signalled = time.time()
        cluster.terminate(2)
        ready = poll(lambda: stopping.get("/v2/health/ready").status_code == 503, timeout=0.5, interval=0.02)
        assert ready, "readiness did not turn false on SIGTERM"
        assert stopping.get("/v2/health/live").status_code == 200  # still serving: draining
        status = cluster.wait(2, timeout=DRAIN + GRACEFUL + 15)
        exited = time.time()
        time.sleep(1.0)
    assert status == -signal.SIGTERM
    assert exited - signalled < DRAIN + GRACEFUL + 10, exited - signalled
    assert traffic.failed == []
    served = _served_by(fraud_cluster, traffic.answered)
    by_stopping = [o.request_id for o in traffic.answered if served[o.request_id] == cluster.address(2)]
    assert by_stopping, "the stopped replica had answered nothing"
    assert fraud_cluster.recorded(by_stopping) == dict.fromkeys(by_stopping, 1)
    out = [at for at, down in cluster.rotation if cluster.address(2) in down and at >= signalled]
    assert out, "the replica never left the rotation"
    assert out[0] < signalled + DRAIN, "the replica left the rotation only after it stopped accepting"
    print(f"\ndrain: out of rotation {out[0] - signalled:.2f} s after SIGTERM, exited after {exited - signalled:.2f} s")
