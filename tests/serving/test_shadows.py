"""Shadow deployments through a real server: shadows that raise, hang or crawl never touch
the answers (or the latency) the primary's clients get, their drops are counted on
/metrics, nothing of theirs reaches the prediction log or live profiles, and a healthy
shadow's answers are paired with the client's and stored per minute."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import stalwart
from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.live_profiles import merged_profile
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.rollout.shadow_store import read_pairs
from stalwart.serving.app import create_app as create_server
from stalwart.serving.policies import DeploymentPolicy
from tests.faults import Switchable, SwitchableClassifier, set_mode
from tests.servers import LiveServer, start_server

SOURCE = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
FAULTY = ("shadow-raises", "shadow-hangs", "shadow-slow", "primary")


@pytest.fixture
def faults() -> Iterator[None]:
    """Every fault switched off again at the end, so hung model threads return."""
    yield
    for name in FAULTY:
        set_mode(name, "ok")


def _predict(server: LiveServer, deployment: str, amount: float, entity: int) -> tuple[float, dict[str, Any]]:
    body = {"entities": [{"id": entity}], "values": [{"amount": amount}]}
    start = time.perf_counter()
    response = server.post(f"/v1/deployments/{deployment}/predict", json=body)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed, response.json()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in the Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_shadows_that_fail_hang_or_crawl_never_touch_the_primarys_answers(
    settings: Settings, registry: Registry, faults: None
) -> None:
    """Clients of a deployment with a raising, a hung, a slow shadow, and a shadow of the
    primary's own version that hangs on the shadow's threads, all get the primary's answer
    at the latency of a deployment without shadows; every failed shadow call is counted."""
    for name in FAULTY:
        set_mode(name, "ok")
    registry.register("scored", Switchable("primary", 1.0), sample=SAMPLE)  # v1
    registry.register("scored", Switchable("shadow-raises", 2.0), sample=SAMPLE)  # v2
    registry.register("scored", Switchable("shadow-hangs", 3.0), sample=SAMPLE)  # v3
    registry.register("scored", Switchable("shadow-slow", 4.0), sample=SAMPLE)  # v4
    set_mode("primary", "hang", threads="stalwart-shadow")  # the very model object, hung only on a shadow's threads
    set_mode("shadow-raises", "raise")
    set_mode("shadow-hangs", "hang")
    set_mode("shadow-slow", "slow", seconds=0.5)
    shadowed = Deployment(
        "payments", model="scored:1", features=[SOURCE.amount],
        shadows={
            "raises": "scored:2",
            "hangs": {"model": "scored:3", "time_limit": "250ms"},
            "slow": {"model": "scored:4", "time_limit": "250ms"},
            "same": {"model": "scored:1", "time_limit": "250ms"},
        },
    )
    plain = Deployment("plain", model="scored:1", features=[SOURCE.amount])
    since = time.time()
    server_app = create_server(settings, registry=registry, project=Project.of(shadowed, plain, SOURCE))
    latencies: dict[str, list[float]] = {"payments": [], "plain": []}
    failures: list[BaseException] = []

    def client(worker: int, server: LiveServer) -> None:
        try:
            for i in range(30):
                amount = float(worker * 100 + i)
                for name in ("payments", "plain"):  # interleaved: both see the same moments
                    elapsed, answer = _predict(server, name, amount, worker * 100 + i)
                    assert answer["variant"] == "primary"
                    assert answer["model"] == {"name": "scored", "version": 1}
                    assert answer["predictions"][0]["predict"] == amount
                    assert "degraded" not in answer
                    latencies[name].append(elapsed)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    with start_server(settings, app=server_app) as server:
        threads = [threading.Thread(target=client, args=(w, server)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures[0]
        metrics = server.get("/metrics").text
        health = server.get("/v1/deployments/payments/health").json()
    assert len(latencies["payments"]) == len(latencies["plain"]) == 120
    shadowed_p50, plain_p50 = statistics.median(latencies["payments"]), statistics.median(latencies["plain"])
    shadowed_p95 = statistics.quantiles(latencies["payments"], n=20)[-1]
    # A hung shadow on the primary's threads would make requests wait for the guard's 1 s
    # (and then degrade); a slow one on them, 0.5 s each. The bounds leave room for a
    # shared machine's hiccups, not for either.
    assert max(latencies["payments"]) < 0.9, latencies["payments"]
    assert shadowed_p95 < 0.25, (shadowed_p95, plain_p50)
    assert shadowed_p50 < plain_p50 * 2 + 0.01, (shadowed_p50, plain_p50)
    # Every shadow call that gave no answer is counted, by shadow and reason.
    assert _metric(metrics, "stalwart_shadow_dropped_total", shadow="payments/raises", reason="error") > 0
    for shadow in ("hangs", "slow", "same"):
        timed_out = _metric(metrics, "stalwart_shadow_dropped_total", shadow=f"payments/{shadow}", reason="timeout")
        queued_out = _metric(metrics, "stalwart_shadow_dropped_total", shadow=f"payments/{shadow}", reason="queue_full")
        assert timed_out > 0, shadow
        answered = _metric(metrics, "stalwart_shadow_answered_total", shadow=f"payments/{shadow}")
        assert answered + timed_out + queued_out <= 120, shadow
    assert _metric(metrics, "stalwart_shadow_answered_total", shadow="payments/raises") == 0
    # A failing shadow's breaker is listed, and the deployment is not degraded by it.
    assert health["status"] == "ok"
    assert any("/shadow:raises/" in g["name"] for g in health["guards"])
    # Nothing of the shadows' reaches the prediction log or live profiles.
    logged = stalwart.read_predictions(deployment="payments", settings=settings, limit=10_000).to_pandas()
    assert len(logged) == 120
    assert set(logged["variant"]) == {"primary"}
    span = {"since": since - 60, "until": time.time() + 60}
    assert merged_profile(registry.db, "payments", variant="primary", **span).rows == 120
    for shadow in ("raises", "hangs", "slow", "same"):
        assert merged_profile(registry.db, "payments", variant=shadow, **span).rows == 0
    # The failed calls are paired as the shadows' errors.
    pairs = read_pairs(registry.db, "payments", since=since - 60)
    raised = pairs["raises"].report
    assert raised.pairs == 120
    assert raised.errors_shadow == 120
    assert raised.errors_primary == 0


def test_a_healthy_shadow_is_paired_and_reported(settings: Settings, registry: Registry, tmp_path: Path) -> None:
    """A shadow that answers is paired row by row with what the client got: agreement,
    the confusion table and the score differences are those of the two models; pairs are
    written while the server runs (every shadow_flush_seconds); `stalwart shadow report`
    shows them as tables, as an HTML page with plots and as JSON."""
    set_mode("cls-primary", "ok")
    set_mode("cls-next", "ok")
    registry.register("fraud", SwitchableClassifier("cls-primary", 1.0, threshold=50.0), sample=SAMPLE)  # v1
    registry.register("fraud", SwitchableClassifier("cls-next", 1.0, threshold=40.0), sample=SAMPLE)  # v2
    deployment = Deployment("payments", model="fraud:1", features=[SOURCE.amount], shadows={"next": "fraud:2"})
    settings = settings.model_copy(update={"shadow_flush_seconds": 0.2})
    since = time.time()
    server_app = create_server(settings, registry=registry, project=Project.of(deployment, SOURCE))
    with start_server(settings, app=server_app) as server:
        for amount in range(100):
            _elapsed, answer = _predict(server, "payments", float(amount), amount)
            assert answer["predictions"][0]["predict"] == ("fraud" if amount >= 50 else "ok")
        deadline = time.monotonic() + 10
        while True:  # written while serving: the periodic flush
            found = read_pairs(registry.db, "payments", since=since - 60)
            if "next" in found and found["next"].report.pairs == 100:
                break
            assert time.monotonic() < deadline, "pairs were not flushed while the server ran"
            time.sleep(0.1)
        metrics = server.get("/metrics").text
    assert _metric(metrics, "stalwart_shadow_answered_total", shadow="payments/next") == 100
    report = read_pairs(registry.db, "payments", since=since - 60)["next"].report
    assert report.pairs == 100
    assert report.errors_primary == report.errors_shadow == 0
    assert report.agreement == pytest.approx(0.9)  # amounts 40 to 49: "fraud" for the shadow only
    assert report.labels() == ["fraud", "ok"]
    assert report.confusion() == [[50, 0], [10, 40]]
    # Scores: amount / 100 against amount / 80 (clipped at 1).
    expected = [min(1.0, a / 80) - a / 100 for a in range(100)]
    assert report.score_difference_mean == pytest.approx(sum(expected) / 100)

    # The command reads what the server wrote, from the database the settings name.
    cli = CliRunner(env={"COLUMNS": "200", "STALWART_HOME": str(settings.home)})
    page = tmp_path / "shadows.html"
    result = cli.invoke(app, ["shadow", "report", "payments", "--since", "1h", "-o", str(page)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "shadow next" in out
    assert "90.0% of 100 pairs with a class" in out
    assert "fraud:1 (100) (clients)  vs  fraud:2 (100) (shadow)" in out
    assert "McNemar" in out
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    for kind in ("confusion", "differences", "latency", "over-time"):
        assert f"data-plot=s0-{kind}><svg" in html, kind
    result = cli.invoke(app, ["shadow", "report", "payments", "--shadow", "next", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    [shadow] = doc["shadows"]
    assert shadow["report"]["summary"]["classes"]["agreement"] == pytest.approx(0.9)
    assert shadow["models"] == {"primary": {"fraud:1": 100}, "shadow": {"fraud:2": 100}}
    assert sum(b["pairs"] for b in shadow["over_time"]) == 100
    result = cli.invoke(app, ["shadow", "report", "payments", "--shadow", "other"])
    assert result.exit_code == 0, result.output
    assert "No shadow named 'other' answered" in result.stdout


def test_a_replaced_policy_shadows_with_its_own_runner_and_the_old_one_is_closed(settings: Settings, registry: Registry) -> None:
    """When a deployment's policy is replaced at run time (another shadow version), the next
    requests shadow to the new version through a runner of its own, and the runner no
    policy names any more is closed at the next flush."""
    for name in ("cls-primary", "cls-next"):
        set_mode(name, "ok")
    registry.register("fraud", SwitchableClassifier("cls-primary", 1.0, threshold=50.0), sample=SAMPLE)  # v1
    registry.register("fraud", SwitchableClassifier("cls-next", 1.0, threshold=40.0), sample=SAMPLE)  # v2
    deployment = Deployment("payments", model="fraud:1", features=[SOURCE.amount], shadows={"next": "fraud:2"})
    settings = settings.model_copy(update={"shadow_flush_seconds": 0.2})
    since = time.time()
    server_app = create_server(settings, registry=registry, project=Project.of(deployment, SOURCE))
    with start_server(settings, app=server_app) as server:
        for amount in range(20):
            _predict(server, "payments", float(amount), amount)
        shadows = server_app.state.shadows
        assert shadows.runners == 1
        replaced = Deployment("payments", model="fraud:1", features=[SOURCE.amount], shadows={"next": "fraud:1"})
        server_app.state.deployments.policies = {"payments": DeploymentPolicy.build(replaced)}
        for amount in range(20, 50):
            _predict(server, "payments", float(amount), amount)
        deadline = time.monotonic() + 10
        while shadows.runners != 1 or read_pairs(registry.db, "payments", since=since - 60).get("next") is None:
            assert time.monotonic() < deadline, shadows.runners
            time.sleep(0.05)
    models = read_pairs(registry.db, "payments", since=since - 60)["next"].models
    assert models["shadow"] == {"fraud:2": 20, "fraud:1": 30}


@pytest.mark.parametrize(
    ("shadows", "message"),
    [
        ({"next": "m:two"}, r"deployment 'p' shadows\['next'\]\.model: model 'm:two' must be 'name' or 'name:version'"),
        ({"next": {"model": "m:3", "rate": 1.5}}, r"shadows\['next'\]\.rate: 1\.5 must be a number from 0 to 1"),
        ({"next": {"model": "m:3", "rate": True}}, r"shadows\['next'\]\.rate: True must be a number"),
        ({"next": {"model": "m:3", "sample": 0.5}}, r"shadows\['next'\]\.sample: unknown field; a shadow takes model, rate, time_limit"),
        ({"next": {"rate": 0.5}}, r"shadows\['next'\]\.model: name the shadow's model"),
        ({"next": {"model": "m:3", "time_limit": "-1s"}}, r"shadows\['next'\]\.time_limit"),
        ({"next": {"model": "m:3", "time_limit": 0}}, r"shadows\['next'\]\.time_limit"),
        ({"canary": "m:3"}, r"shadows\['canary'\]: 'canary' names a variant already"),
        ({"bad name": "m:3"}, r"shadows: shadow name 'bad name' may hold only letters"),
        (["m:3"], r"deployment 'p' shadows: \['m:3'\] must map each shadow's name"),
        ({"next": 3}, r"shadows\['next'\]: 3 must be 'model:version'"),
    ],
)
def test_shadow_declarations_are_checked_where_declared(shadows: Any, message: str) -> None:
    """A mistake in a shadow is a ConfigError naming the deployment and the field, raised
    where the project declares it."""
    with pytest.raises(ConfigError, match=message):
        Deployment("p", model="m:1", shadows=shadows)


def test_shadows_get_chains_and_sample_rates_of_their_own() -> None:
    """Each shadow is a variant with its own chain entry (its own breaker, and isolated:
    its own batcher and executor); the router samples each by its rate, under the
    deployment's name as salt, or the canary's when there is one."""
    policy = DeploymentPolicy.build(
        Deployment("p", model="m:1", shadows={"next": "m:2", "half": {"model": "m:1", "rate": 0.5, "time_limit": "300ms"}})
    )
    assert [(v.name, v.model, v.version) for v in policy.shadows] == [("next", "m", 2), ("half", "m", 1)]
    assert [v.chain.entry for v in policy.shadows] == ["deployment/p/shadow:next", "deployment/p/shadow:half"]
    assert all(v.chain.isolated for v in policy.shadows)
    assert not policy.primary.chain.isolated
    assert dict(policy.shadow_time_limits) == {"next": 2.0, "half": 0.3}
    assert policy.router is not None
    assert (policy.router.salt, dict(policy.router.shadows), policy.router.canary_weight) == ("p", {"next": 1.0, "half": 0.5}, 0.0)
    sampled = [policy.router.route(f"key-{i}").shadows for i in range(2000)]
    assert all("next" in s for s in sampled)
    assert 0.45 < sum("half" in s for s in sampled) / 2000 < 0.55
    canaried = DeploymentPolicy.build(Deployment("p", model="m:1", canary="m:3", canary_weight=0.1, shadows={"next": "m:2"}))
    assert canaried.router is not None
    assert canaried.router.salt == "p:m:3"
    assert DeploymentPolicy.build(Deployment("p", model="m:1")).router is None
