"""Feature sources through the HTTP server: a failing or hanging source degrades responses
visibly (stale values, then defaults) and its breaker recovers; the control plane (writing
rows, invalidating cached features) requires the admin token and names what is wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from stalwart.config import Settings
from stalwart.project import (
    CallableSource,
    Deployment,
    Entity,
    FeatureSet,
    FileSource,
    Latest,
    Project,
    load_project,
)
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server
from tests.serving.conftest import FraudCopy, metric, predict_body, recent_card

PREDICT = "/v1/deployments/fraud/predict"
SOURCE_GUARD_NAME = "deployment/fraud/source/transactions"


@contextmanager
def _serve(settings: Settings, project: Project | None = None, registry: Registry | None = None) -> Iterator[LiveServer]:
    with start_server(settings, app=create_app(settings, project=project, registry=registry)) as server:
        yield server


def _source_guard(server: LiveServer, name: str = "fraud", guard: str = SOURCE_GUARD_NAME) -> dict[str, Any]:
    health = server.get(f"/v1/deployments/{name}/health").json()
    found: dict[str, Any] = next(g for g in health["guards"] if g["name"] == guard)
    return found


def _predict(server: LiveServer, card: int) -> tuple[dict[str, Any], dict[str, str]]:
    response = server.post(PREDICT, json=predict_body(card))
    assert response.status_code == 200, response.text
    return response.json(), dict(response.headers)


def test_a_failing_sql_source_serves_stale_then_defaults_and_its_breaker_recovers(fraud_copy: FraudCopy, tmp_path: Path) -> None:
    """The transactions table disappears: a card cached within max_staleness is served its
    last values (stale_features), a card never seen gets the declared defaults
    (feature_defaults), each said in the body, the header and the metrics; the source's
    breaker opens. The table back, the breaker goes HALF_OPEN then CLOSED and answers are
    whole again."""
    project = load_project(
        fraud_copy.project(
            tmp_path / "project",
            # A TTL short enough to be past within the test; the same FeatureSet version.
            ('cache={"ttl": "1m", "max_staleness": "10m"}', 'cache={"ttl": "1s", "max_staleness": "10m", "xfetch_beta": 0}'),
            (
                '"fraud", model="fraud:1",',
                '"fraud", model="fraud:1", source_guard={"breaker": {"sliding_window_size": 4, '
                '"minimum_number_of_calls": 4, "wait_duration_in_open_state": "500ms", '
                '"permitted_number_of_calls_in_half_open_state": 1}},',
            ),
        )
    )
    frame = fraud_copy.frame
    warm, cold = recent_card(frame, 0), [recent_card(frame, rank) for rank in range(1, 8)]
    with _serve(fraud_copy.settings, project) as server:
        healthy, _ = _predict(server, warm)
        assert "degraded" not in healthy
        assert healthy["features"][0]["tx_count_24h"] > 0
        time.sleep(1.1)  # past the TTL, well within max_staleness
        fraud_copy.sql("ALTER TABLE transactions RENAME TO transactions_gone")
        try:
            stale, headers = _predict(server, warm)
            assert stale["degraded"]["level"] == "stale_features"
            assert stale["degraded"]["reason"] == "FeatureError"
            assert headers["x-stalwart-degraded"] == "stale_features; reason=FeatureError"
            assert stale["features"] == healthy["features"]
            assert stale["predictions"] == healthy["predictions"]
            defaults, headers = _predict(server, cold[0])
            assert defaults["degraded"]["level"] == "feature_defaults"
            assert headers["x-stalwart-degraded"] == "feature_defaults; reason=FeatureError"
            features = defaults["features"][0]
            assert (features["tx_count_1h"], features["amount_sum_24h"], features["amount_mean_30d"], features["last_amount"]) == (0, 0.0, 0.0, 0.0)
            # With the healthy call, 4 calls and 3 failures: over the 50 % threshold.
            assert _predict(server, cold[1])[0]["degraded"]["reason"] == "FeatureError"
            guard = _source_guard(server)
            assert guard["breaker"]["state"] == "open"
            assert server.get("/v1/deployments/fraud/health").json()["status"] == "degraded"
            _, headers = _predict(server, cold[2])
            assert headers["x-stalwart-degraded"] == "feature_defaults; reason=CallNotPermitted"
            text = server.get("/metrics").text
            assert metric(text, "stalwart_degraded_responses_total", deployment="fraud", level="stale_features", reason="FeatureError") == 1
            assert metric(text, "stalwart_degraded_responses_total", deployment="fraud", level="feature_defaults", reason="FeatureError") == 2
            assert metric(text, "stalwart_cache_stale_serves_total", feature_set="card_activity") == 1
        finally:
            fraud_copy.sql("ALTER TABLE transactions_gone RENAME TO transactions")
        time.sleep(0.6)  # the breaker's wait in OPEN
        recovered, headers = _predict(server, cold[3])
        assert "degraded" not in recovered, recovered
        assert "x-stalwart-degraded" not in headers
        assert _source_guard(server)["breaker"]["state"] == "closed"
        assert server.get("/v1/deployments/fraud/health").json()["status"] == "ok"
        fresh, _ = _predict(server, warm)
        assert "degraded" not in fresh
        text = server.get("/metrics").text
        for source, target in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
            assert metric(text, "stalwart_breaker_transitions_total", guard=SOURCE_GUARD_NAME, from_state=source, to_state=target) == 1


# -- a hanging external lookup ----------------------------------------------------------

ACCOUNT = Entity("account", keys=["account_id"])
_HANG = threading.Event()


def risk_lookup(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """A remote risk service, called synchronously; it stops answering while _HANG is set
    (for at most 10 s)."""
    deadline = time.monotonic() + 10
    while _HANG.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)
    return {key: {"risk": float(key[0] % 10)} for key in keys}


def _risk_project(history: Path, source_guard: dict[str, Any] | None) -> Project:
    offline = FileSource("risk_history", path=str(history), entity=ACCOUNT, timestamp="ts")
    live = CallableSource("risk_service", fn=risk_lookup, entity=ACCOUNT, offline=offline)
    risk = FeatureSet(
        "risk", entity=ACCOUNT, source=live,
        features=[Latest("risk_score", column="risk", default=-1.0)],
        cache={"ttl": "300ms", "max_staleness": "1m", "xfetch_beta": 0},
    )
    return Project.of(Deployment("risky", model="risky", features=[risk["risk_score"]], source_guard=source_guard), risk)


@pytest.mark.parametrize("source_guard", [None, {"timeout": {"timeout_duration": "150ms"}}], ids=["default-500ms", "150ms"])
def test_a_hanging_source_times_out_on_time_and_the_request_carries_on(
    settings: Settings, registry: Registry, tmp_path: Path, source_guard: dict[str, Any] | None
) -> None:
    """An external lookup that stops answering costs a request its source guard's time
    limit (500 ms unless the deployment sets one), no more: the cached value serves
    (stale_features) or the default (feature_defaults), and the server keeps answering
    other requests meanwhile."""
    history = tmp_path / "risk.csv"
    pd.DataFrame({"account_id": [1], "ts": [0.0], "risk": [1.0]}).to_csv(history, index=False)
    set_mode("risky", "ok")
    registry.register("risky", Switchable("risky"), sample=pd.DataFrame({"risk_score": np.linspace(0, 9, 20)}))
    limit = 0.5 if source_guard is None else 0.15
    with _serve(settings, _risk_project(history, source_guard), registry) as server:

        def predict(account: int) -> tuple[float, dict[str, Any]]:
            start = time.monotonic()
            response = server.post("/v1/deployments/risky/predict", json={"entities": [{"account_id": account}], "return_features": True})
            assert response.status_code == 200, response.text
            return time.monotonic() - start, response.json()

        _, healthy = predict(7)
        assert healthy["features"] == [{"risk_score": 7.0}]
        assert healthy["predictions"] == [{"predict": 7.0}]
        time.sleep(0.35)  # past the TTL
        _HANG.set()
        try:
            live: list[float] = []
            prober = threading.Thread(target=_probe, args=(server.url, live), daemon=True)
            prober.start()
            elapsed, stale = predict(7)
            assert limit <= elapsed < limit + 0.5, elapsed
            assert stale["degraded"]["level"] == "stale_features"
            assert stale["degraded"]["reason"] == "CallTimeout"
            assert stale["features"] == [{"risk_score": 7.0}]
            elapsed, defaults = predict(8)
            assert limit <= elapsed < limit + 0.5, elapsed
            assert defaults["degraded"] == {"level": "feature_defaults", "reason": "CallTimeout", "detail": defaults["degraded"]["detail"]}
            assert defaults["features"] == [{"risk_score": -1.0}]
            prober.join(timeout=5)
        finally:
            _HANG.clear()
        # While lookups hung, the server answered everything else at once.
        assert live
        assert max(live) < 0.4, live
        _, after = predict(8)
        assert after["features"] == [{"risk_score": 8.0}]
        assert "degraded" not in after


def _probe(url: str, latencies: list[float]) -> None:
    """Health checks during the hang: how long the server takes to answer anything."""
    import httpx

    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(10):
            start = time.monotonic()
            try:
                ok = client.get("/v2/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.monotonic() - start if ok else float("inf"))
            time.sleep(0.03)


# -- the control plane --------------------------------------------------------------------

ROWS = "/v1/sources/transactions/rows"
INVALIDATE = "/v1/features/card_activity/invalidate"


def _row(card: int, **changes: Any) -> dict[str, Any]:
    row = {"card_id": card, "ts": time.time() - 1, "amount": 12.5, "merchant_category": "fuel", "is_fraud": 0}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


AUTH = {"Authorization": "Bearer t0ken"}


def _with_token(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_token": SecretStr("t0ken")})


def _count(fraud_copy: FraudCopy) -> int:
    return int(fraud_copy.sql("SELECT COUNT(*) FROM transactions")[0][0])


def test_control_calls_are_refused_without_the_admin_token(fraud_copy: FraudCopy) -> None:
    """Writing rows and invalidating features answer 401 (JSON, WWW-Authenticate: Bearer)
    without the token, with another one or another scheme, and change nothing; the token
    from STALWART_HOME/admin_token is accepted."""
    rows = _count(fraud_copy)
    with _serve(fraud_copy.settings) as server:
        token = fraud_copy.settings.resolved_admin_token()  # generated into the home's file
        assert (fraud_copy.home / "admin_token").read_text().strip() == token
        for path, body in ((ROWS, {"rows": [_row(1001)]}), (INVALIDATE, {"entities": [{"card_id": 1001}]})):
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {token}"}, {"Authorization": "Bearer"}):
                response = server.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["content-type"] == "application/json"
                assert response.headers["www-authenticate"] == "Bearer"
                assert "token" in response.json()["error"]
                assert token not in response.text
        assert _count(fraud_copy) == rows
        auth = {"Authorization": f"Bearer {token}"}
        assert server.post(ROWS, json={"rows": [_row(1001)]}, headers=auth).status_code == 200
        assert server.post(INVALIDATE, headers=auth).status_code == 200
    assert _count(fraud_copy) == rows + 1


BAD_ROWS = [
    ({"rows": [_row(1001), _row(1002, card_id=None)]}, "rows[1].card_id", "rows[1]: missing 'card_id'"),
    ({"rows": [_row(1001, ts=None)]}, "rows[0].ts", "rows[0]: missing 'ts'"),
    ({"rows": [_row(1001, colour="red")]}, "rows[0].colour", "table 'transactions' has no column 'colour'"),
    ({"rows": [_row(1001, ts="yesterday")]}, "rows[0].ts", "rows[0].ts:"),
    ({"rows": [_row(1001, card_id=1.5)]}, "rows[0].card_id", "an entity key must be an integer or a string"),
    ({"rows": ["card 1001"]}, "rows", "$.rows[0]"),
    ({"rows": "1001"}, "rows", 'send {"rows"'),
    ({"records": []}, "rows", 'send {"rows"'),
]


def test_bad_rows_are_400_naming_row_and_field_and_nothing_is_written(fraud_copy: FraudCopy) -> None:
    """A malformed row is refused whole, naming the row and the field; the other rows of
    the request are not written either."""
    rows = _count(fraud_copy)
    with _serve(_with_token(fraud_copy.settings)) as server:
        for body, field, fragment in BAD_ROWS:
            response = server.post(ROWS, json=body, headers=AUTH)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["field"] == field, body
            assert fragment in response.json()["error"], body
    assert _count(fraud_copy) == rows


def test_unknown_sources_and_feature_sets_are_404_and_bad_bodies_400(fraud_copy: FraudCopy) -> None:
    """Only the project's SQL sources take rows, only its feature sets can be invalidated;
    the answer lists what exists."""
    with _serve(_with_token(fraud_copy.settings)) as server:
        auth = AUTH
        for path in ("/v1/sources/nope/rows", "/v1/sources/txn/rows"):
            response = server.post(path, json={"rows": [_row(1001)]}, headers=auth)
            assert response.status_code == 404, response.text
            assert "rows can be written to transactions" in response.json()["error"]
        response = server.post("/v1/features/nope/invalidate", headers=auth)
        assert response.status_code == 404
        assert "it has card_activity" in response.json()["error"]
        response = server.post(INVALIDATE, json={"entities": [{"card": 1}]}, headers=auth)
        assert response.status_code == 400
        assert response.json()["field"] == "entities[0].card_id"
        response = server.post(INVALIDATE, content=b"{not json", headers=auth)
        assert response.status_code == 400
        assert response.json()["field"] == "body"


def test_invalidate_drops_cached_values(fraud_copy: FraudCopy) -> None:
    """After POST /v1/features/{name}/invalidate the next predict for that entity goes to
    the source (a cache miss), other entities stay cached; with no body, the whole set."""
    settings = _with_token(fraud_copy.settings)
    auth = AUTH
    card, other = recent_card(fraud_copy.frame, 0), recent_card(fraud_copy.frame, 1)
    with _serve(settings) as server:

        def counts() -> tuple[float, float]:
            text = server.get("/metrics").text
            return (
                metric(text, "stalwart_cache_source_calls_total", feature_set="card_activity"),
                metric(text, "stalwart_cache_hits_total", tier="memory", feature_set="card_activity"),
            )

        _predict(server, card)
        _predict(server, other)
        assert counts() == (2, 0)
        _predict(server, card)
        assert counts() == (2, 1)  # a memory hit
        response = server.post(INVALIDATE, json={"entities": [{"card_id": card}]}, headers=auth)
        assert response.status_code == 200, response.text
        assert response.json() == {"feature_set": "card_activity", "entities": 1, "invalidated": True}
        _predict(server, card)
        assert counts() == (3, 1)  # the invalidated card: loaded again
        _predict(server, other)
        assert counts() == (3, 2)  # the other: still cached
        response = server.post(INVALIDATE, headers=auth)
        assert response.json() == {"feature_set": "card_activity", "entities": None, "invalidated": True}
        _predict(server, other)
        assert counts() == (4, 2)
