"""The feature cache end to end, through real servers: replicas sharing Redis see each
other's writes at once, a Redis outage never fails a request, a changed definition never
reads the old one's values, and a burst of misses makes one source call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from pydantic import SecretStr
from sqlalchemy import event

from stalwart.cache.keys import KeySpace, encode_entity
from stalwart.config import Settings
from stalwart.features import OnlineFeatures
from stalwart.features.readers import make_reader
from stalwart.project import FeatureSet, Project, RequestSource, load_project
from stalwart.serving.app import create_app
from stalwart.storage import DatabasePool
from tests.cache.conftest import PrivateRedis
from tests.conftest import REDIS_URL
from tests.processes import ServeProcess
from tests.servers import LiveServer, start_server
from tests.serving.conftest import FraudCopy, metric, poll, predict_body, recent_card, txn

pytestmark = pytest.mark.redis

PREDICT = "/v1/deployments/fraud/predict"
SET = "card_activity"
TXN = RequestSource("txn", fields={"amount": "float", "merchant_category": "str"})


def _features(server: LiveServer | ServeProcess, card: int) -> dict[str, Any]:
    response = server.post(PREDICT, json=predict_body(card))
    assert response.status_code == 200, response.text
    assert "degraded" not in response.json(), response.json()
    features: dict[str, Any] = response.json()["features"][0]
    return features


def _metrics(server: LiveServer | ServeProcess) -> str:
    return server.get("/metrics").text


@contextmanager
def _serve(settings: Settings, project: Project | None = None) -> Iterator[LiveServer]:
    with start_server(settings, app=create_app(settings, project=project)) as server:
        yield server


def test_a_write_through_one_replica_is_seen_by_another_at_once(fraud_copy: FraudCopy, redis_namespace: str, tmp_path: Path) -> None:
    """Two `stalwart serve` processes share the database and Redis. After a row is written
    through replica A, replica B (whose caches held the old values) serves the new ones."""
    token = "e2e-token"
    env = {
        "STALWART_HOME": str(fraud_copy.home),
        "STALWART_PROJECT": str(fraud_copy.settings.project),
        "STALWART_REDIS_URL": REDIS_URL,
        "STALWART_CACHE_NAMESPACE": redis_namespace,
        "STALWART_ADMIN_TOKEN": token,
    }
    a = ServeProcess(env, tmp_path / "a.log")
    b = ServeProcess(env, tmp_path / "b.log")
    try:
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        card = recent_card(fraud_copy.frame)
        before = _features(a, card)
        assert _features(b, card) == before
        # B found A's entry in Redis, and both now hold it in memory.
        assert metric(_metrics(b), "stalwart_cache_hits_total", tier="redis", feature_set=SET) == 1
        assert _features(b, card) == before
        assert metric(_metrics(b), "stalwart_cache_hits_total", tier="memory", feature_set=SET) == 1
        row = {"card_id": card, "ts": time.time() - 1, "amount": 123.25, "merchant_category": "fuel", "is_fraud": 0}
        written = a.post("/v1/sources/transactions/rows", json={"rows": [row]}, headers={"Authorization": f"Bearer {token}"})
        assert written.status_code == 200, written.text
        assert written.json() == {"rows": 1, "entities": 1, "feature_sets": [SET], "invalidated": True}

        def updated() -> dict[str, Any] | None:
            now = _features(b, card)
            return now if now["tx_count_1h"] != before["tx_count_1h"] else None

        after = poll(updated, timeout=2.0, interval=0.01)
        assert after is not None, "replica B kept serving the old features for 2 s"
        assert after["tx_count_1h"] == before["tx_count_1h"] + 1
        assert after["amount_sum_1h"] == pytest.approx(before["amount_sum_1h"] + 123.25)
        assert after["last_amount"] == 123.25
        assert metric(_metrics(b), "stalwart_cache_invalidations_received_total", scope="entities") >= 1
        assert _features(a, card) == after
    finally:
        a.stop()
        b.stop()


class _Traffic(threading.Thread):
    """Predicts for a round of cards, one request at a time, until stopped; records every
    outcome (a transport error included)."""

    def __init__(self, url: str, cards: list[int]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.cards = cards
        self.outcomes: list[tuple[float, int | str, bool]] = []  # (time, status or error, degraded)
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.halt.is_set():
                card = self.cards[i % len(self.cards)]
                i += 1
                try:
                    response = client.post(PREDICT, json=predict_body(card, features=False))
                    outcome: int | str = response.status_code
                    degraded = "degraded" in response.json()
                except httpx.HTTPError as exc:
                    outcome, degraded = repr(exc), False
                self.outcomes.append((time.monotonic(), outcome, degraded))
                time.sleep(0.004)

    def between(self, start: float, end: float) -> list[tuple[float, int | str, bool]]:
        return [o for o in self.outcomes if start <= o[0] < end]


def test_redis_dying_mid_traffic_fails_no_request_and_the_server_recovers(fraud_home: dict[str, Any]) -> None:
    """Redis is killed while requests flow: every request still answers 200, undegraded
    (memory and the source serve); Redis restarted on the same port, the server reads from
    it again. The in-process tier is kept small so Redis is really on the path."""
    redis = PrivateRedis()
    redis.start()
    settings: Settings = fraud_home["settings"].model_copy(
        update={"redis_url": SecretStr(redis.url), "cache_namespace": "outage", "cache_max_entries": 3}
    )
    frame = fraud_home["frame"]
    cards = [recent_card(frame, rank) for rank in range(10)]
    traffic = _Traffic("", cards)
    try:
        with _serve(settings) as server:
            traffic.url = server.url
            assert poll(lambda: metric(_metrics(server), "stalwart_cache_invalidation_subscribed") == 1, 5)
            traffic.start()
            hits = "stalwart_cache_hits_total"
            assert poll(lambda: metric(_metrics(server), hits, tier="redis", feature_set=SET) >= 5, 10), "no Redis hits before the outage"
            killed = time.monotonic()
            redis.kill()
            time.sleep(1.5)
            during = metric(_metrics(server), hits, tier="redis", feature_set=SET)
            errors = metric(_metrics(server), "stalwart_cache_tier_errors_total", tier="redis", op="get")
            restarted = time.monotonic()
            redis.start()
            assert poll(lambda: metric(_metrics(server), hits, tier="redis", feature_set=SET) > during + 5, 10), "no Redis hits after the restart"
            assert poll(lambda: metric(_metrics(server), "stalwart_cache_invalidation_subscribed") == 1, 5)
            traffic.halt.set()
            traffic.join(timeout=10)
    finally:
        traffic.halt.set()
        redis.kill()
    assert errors >= 1  # the outage was seen, and skipped
    outage = traffic.between(killed, restarted)
    assert len(outage) >= 20, f"only {len(outage)} requests during the outage"
    failed = [o for o in traffic.outcomes if o[1] != 200]
    assert not failed, failed[:5]
    assert not any(o[2] for o in traffic.outcomes), "a Redis outage must not degrade responses"


def test_a_changed_definition_never_reads_the_old_definitions_values(fraud_copy: FraudCopy, redis_namespace: str, tmp_path: Path) -> None:
    """Old and new definitions of card_activity served side by side (a rolling deploy),
    sharing Redis: each serves its own definition's values, the new one equal to a direct
    computation under the new definition, while the old entries still sit in Redis."""
    card = recent_card(fraud_copy.frame)
    # A transaction 90 minutes old: outside a 1 h window, inside a 2 h one.
    fraud_copy.sql(
        "INSERT INTO transactions (card_id, ts, amount, merchant_category, is_fraud) VALUES (?, ?, ?, ?, 0)",
        (card, time.time() - 5400, 77.0, "fuel"),
    )
    old_project = load_project(fraud_copy.project(tmp_path / "old"))
    changed = fraud_copy.project(
        tmp_path / "new",
        ('Window("tx_count_1h", agg="count", window="1h")', 'Window("tx_count_1h", agg="count", window="2h")'),
        # The model was trained on the old definition: serve it these features anyway (the
        # skew guard would refuse otherwise), to see which values the cache hands out.
        ('"fraud", model="fraud:1",', '"fraud", model="fraud:1", features=[*(card_activity[n] for n in card_activity.feature_names), txn.amount],'),
    )
    new_project = load_project(changed)
    old_set, new_set = old_project.feature_sets[SET], new_project.feature_sets[SET]
    assert old_set.version != new_set.version
    settings = fraud_copy.settings.model_copy(update={"redis_url": SecretStr(REDIS_URL), "cache_namespace": redis_namespace})
    with _serve(settings, old_project) as old, _serve(settings, new_project) as new:
        served_old = _features(old, card)
        served_new = _features(new, card)
        # The new server looked in Redis, found nothing under its version, and loaded.
        text = _metrics(new)
        assert metric(text, "stalwart_cache_hits_total", tier="redis", feature_set=SET) == 0
        assert metric(text, "stalwart_cache_source_calls_total", feature_set=SET) == 1
        # Both versions' entries are in Redis, each under its own key.
        client = redis_sync.Redis.from_url(REDIS_URL)
        try:
            for feature_set in (old_set, new_set):
                key = KeySpace(redis_namespace, SET, feature_set.version).key(encode_entity((card,)))
                assert client.exists(key), key
        finally:
            client.close()
        # Warm on both sides now: still each its own values.
        assert _features(old, card) == served_old
        assert _features(new, card) == served_new
    assert served_new["tx_count_1h"] >= served_old["tx_count_1h"] + 1  # the row 90 minutes old
    for feature_set, served in ((old_set, served_old), (new_set, served_new)):
        direct = _direct(settings, feature_set, card)
        assert served == pytest.approx(direct), feature_set.version


def _direct(settings: Settings, feature_set: FeatureSet, card: int) -> dict[str, Any]:
    """The set's features for one card computed now, without a server or a cache."""
    pool = DatabasePool(settings)
    try:
        online = OnlineFeatures(
            [*(feature_set[n] for n in feature_set.feature_names), TXN.amount],
            {"transactions": make_reader(feature_set.source, pool)},
        )
        resolved = asyncio.run(online.resolve([{"card_id": card}], [txn()]))
    finally:
        pool.dispose()
    return {name: column.tolist()[0] for name, column in resolved.columns.items()}


def test_a_hundred_concurrent_misses_on_one_key_make_one_source_call(fraud_home: dict[str, Any], redis_namespace: str) -> None:
    """100 concurrent predicts for one cold card: one SQL query reaches the transactions
    table, the other requests wait for it, and all get the same features."""
    settings: Settings = fraud_home["settings"].model_copy(update={"redis_url": SecretStr(REDIS_URL), "cache_namespace": redis_namespace})
    frame = fraud_home["frame"]
    warm, cold = recent_card(frame, 0), recent_card(frame, 1)
    with _serve(settings) as server:
        _features(server, warm)  # builds the plan (reflects the table) before we count
        engine = server.app.state.deployments.pool(None).engine
        queries: list[str] = []

        def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "FROM transactions" in statement:
                queries.append(statement)
                time.sleep(0.2)  # a slow database: the other 99 arrive while this runs

        before = _metrics(server)
        event.listen(engine, "before_cursor_execute", on_execute)
        try:

            async def burst() -> list[httpx.Response]:
                limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
                async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
                    return await asyncio.gather(*(client.post(PREDICT, json=predict_body(cold)) for _ in range(100)))

            responses = asyncio.run(burst())
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
        after = _metrics(server)
    assert [r.status_code for r in responses] == [200] * 100
    assert len({str(r.json()["features"]) for r in responses}) == 1
    assert not any("degraded" in r.json() for r in responses)
    assert len(queries) == 1
    calls = metric(after, "stalwart_cache_source_calls_total", feature_set=SET) - metric(before, "stalwart_cache_source_calls_total", feature_set=SET)
    assert calls == 1
    coalesced = metric(after, "stalwart_cache_coalesced_total", feature_set=SET) - metric(before, "stalwart_cache_coalesced_total", feature_set=SET)
    hits = metric(after, "stalwart_cache_hits_total", tier="memory", feature_set=SET) - metric(before, "stalwart_cache_hits_total", tier="memory", feature_set=SET)
    assert coalesced >= 1
    assert coalesced + hits == 99


def test_redis_keeps_caching_after_entries_expire(fraud_copy: FraudCopy, redis_namespace: str, tmp_path: Path) -> None:
    """An entry past its TTL stays in Redis (for stale-if-error); the reload that follows
    replaces it there, so another replica then finds the new entry instead of calling the
    source (and the cache does not go dark until max_staleness runs out)."""
    project = load_project(fraud_copy.project(tmp_path / "project", ('cache={"ttl": "1m", "max_staleness": "10m"}', 'cache={"ttl": "1s", "max_staleness": "10m", "xfetch_beta": 0}')))
    settings = fraud_copy.settings.model_copy(update={"redis_url": SecretStr(REDIS_URL), "cache_namespace": redis_namespace})
    card = recent_card(fraud_copy.frame)
    with _serve(settings, project) as first:
        _features(first, card)
        time.sleep(1.2)  # past the TTL
        _features(first, card)
        text = _metrics(first)
        assert metric(text, "stalwart_cache_source_calls_total", feature_set=SET) == 2
        assert metric(text, "stalwart_cache_writes_refused_total", feature_set=SET) == 0
        with _serve(settings, project) as second:
            _features(second, card)
            text = _metrics(second)
    assert metric(text, "stalwart_cache_hits_total", tier="redis", feature_set=SET) == 1
    assert metric(text, "stalwart_cache_source_calls_total", feature_set=SET) == 0
