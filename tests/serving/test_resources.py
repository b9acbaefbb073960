"""Resource management through a real server: each loaded version's memory (measured at
load, shown by GET /v1/resources, the gauge and `stalwart models list`), the memory
budget that unloads idle versions and refuses what cannot fit, and the thread and call
limits per model."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from stalwart.cli.main import app as cli
from stalwart.config import ModelLimits, Settings
from stalwart.registry import Registry
from tests import models
from tests.servers import LiveServer, start_server
from tests.serving.conftest import FraudCopy, metric, predict_body, recent_card

ROWS = [[1.0, 2.0, 3.0]]
CELLS = 500_000  # float64 values each Ballast version holds: 4 MB
SIZE = CELLS * 8
# Room for five versions of SIZE and the objects around them, not for six.
BUDGET = 5 * SIZE + 2 * 1024 * 1024


def _body(rows: list[list[float]] = ROWS) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [len(rows), 3], "data": [v for r in rows for v in r]}]}


def _register_ballast(registry: Registry, name: str, versions: int, cells: int = CELLS) -> None:
    for v in range(1, versions + 1):
        # Version v answers sum + 1000 v: each answer says which version gave it.
        registry.register(name, models.Ballast(cells, 1000.0 * v, seed=v), sample=np.ones((2, 3)), trust_pickle=True)


def _resources(server: LiveServer) -> dict[str, Any]:
    response = server.get("/v1/resources")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _loaded(document: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
    return {m["version"]: m for m in document["models"] if m["name"] == name}


@pytest.fixture
def twenty(settings: Settings, registry: Registry) -> Iterator[LiveServer]:
    """Twenty 4 MB versions of ``ballast`` and a server whose budget holds five."""
    _register_ballast(registry, "ballast", 20)
    with start_server(settings.model_copy(update={"model_memory": BUDGET}), registry) as server:
        yield server


def test_twenty_versions_in_a_budget_for_five_under_random_traffic(twenty: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random traffic over 20 versions from four clients: every request is answered by the
    version it named, or gets the documented 503 with Retry-After; the loaded versions never
    take more than the budget (nor more than five); idle versions are unloaded (counted), and
    the memory they held is given back (the process does not grow with every reload)."""
    rss_before = _resources(twenty)["process"]["rss_bytes"]
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=twenty.url, timeout=30) as http:
            for _ in range(40):
                version = rng.randint(1, 20)
                response = http.post(f"/v2/models/ballast/versions/{version}/infer", json=_body())
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    answer = response.json()["outputs"][0]["data"][0]
                    if answer != 6.0 + 1000.0 * version:
                        problems.append(f"version {version} answered {answer}")
                elif response.status_code == 503 and "Retry-After" in response.headers:
                    error = response.json()["error"]
                    if "STALWART_MODEL_MEMORY" not in error and "is loading" not in error:
                        problems.append(f"503 for another reason: {error}")
                else:
                    problems.append(f"{response.status_code} {response.headers.get('Retry-After')} {response.text[:200]}")

    def watch() -> None:
        with httpx.Client(base_url=twenty.url, timeout=30) as http:
            while not stop.is_set():
                seen.append(http.get("/v1/resources").json())
                time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=300)
    stop.set()
    watcher.join(timeout=30)

    assert problems == []
    assert statuses[200] >= 0.8 * sum(statuses.values()), statuses
    assert len(seen) > 20
    for document in seen:
        assert document["memory"]["budget_bytes"] == BUDGET
        assert document["memory"]["used_bytes"] <= BUDGET
        assert sum(m["memory_bytes"] for m in document["models"]) == document["memory"]["used_bytes"]
        assert len(document["models"]) <= 5
    assert max(len(d["models"]) for d in seen) >= 4  # the budget is used, not merely kept
    final = _resources(twenty)
    evictions = final["memory"]["evictions"]
    assert evictions >= 10
    text = twenty.get("/metrics").text
    assert sum(metric(text, "stalwart_model_evictions_total", model="ballast", version=str(v)) for v in range(1, 21)) == evictions
    assert metric(text, "stalwart_model_memory_budget_bytes") == BUDGET
    for version, loaded in _loaded(final, "ballast").items():
        assert 0.9 * SIZE <= loaded["memory_bytes"] < 2.5 * SIZE  # an estimate: see serving/memory.py
        assert metric(text, "stalwart_model_memory_bytes", model="ballast", version=str(version)) == loaded["memory_bytes"]
    # Evicted versions leave the gauge: it sums to what is loaded now.
    gauges = sum(metric(text, "stalwart_model_memory_bytes", model="ballast", version=str(v)) for v in range(1, 21))
    assert gauges == final["memory"]["used_bytes"]
    # Dozens of 4 MB loads and unloads: a leak would show as hundreds of MB.
    assert final["process"]["rss_bytes"] - rss_before < 2 * BUDGET

    # `stalwart models list` shows each version's memory as last measured.
    for name in [n for n in os.environ if n.startswith("STALWART_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(settings.home))
    monkeypatch.setenv("COLUMNS", "400")
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "memory (last measured)" in listed.output
    assert listed.output.count(" MiB") >= 10
    shown = CliRunner().invoke(cli, ["models", "show", "ballast", "--version", str(min(_loaded(final, "ballast")))])
    assert shown.exit_code == 0, shown.output
    assert " MiB (measured at load by " in shown.output


def test_a_version_larger_than_the_budget_is_refused_with_a_clear_error(settings: Settings, registry: Registry) -> None:
    """A version whose memory is more than the whole budget is never loaded: its requests
    get 503 naming the budget (no Retry-After: waiting cannot help), its readiness says why,
    and the versions that fit are served as before."""
    _register_ballast(registry, "small", 1)
    _register_ballast(registry, "huge", 1, cells=4 * CELLS)  # 16 MB, estimated 32 MB before its first load
    with start_server(settings.model_copy(update={"model_memory": 3 * SIZE}), registry) as server:
        refused = server.post("/v2/models/huge/infer", json=_body())
        assert refused.status_code == 503
        assert "Retry-After" not in refused.headers
        error = refused.json()["error"]
        assert "model huge:1 needs about" in error
        assert "estimated as 2 x its artifact" in error
        assert "more than the whole model memory budget (STALWART_MODEL_MEMORY=11.4 MiB)" in error
        assert "raise the budget" in error
        ready = server.get("/v2/models/huge/ready")
        assert ready.status_code == 503
        assert "STALWART_MODEL_MEMORY" in ready.json()["error"]
        assert server.post("/v2/models/small/infer", json=_body()).json()["outputs"][0]["data"] == [1006.0]
        document = _resources(server)
        assert [(m["name"], m["version"]) for m in document["models"]] == [("small", 1)]
        assert document["memory"]["refusals"] >= 1
        assert metric(server.get("/metrics").text, "stalwart_model_memory_refusals_total", model="huge", reason="too_large") >= 1


def test_preloading_stops_at_what_fits_and_the_rest_load_on_first_use(settings: Settings, registry: Registry) -> None:
    """With a budget, start-up loads the latest versions that fit without unloading any;
    the others are still what unversioned requests get, loaded on first use."""
    for name in ("a", "b", "c", "d"):
        _register_ballast(registry, name, 1)
    # Never measured, each is expected to take 2 x 4 MB until its load measures 4 MB: the
    # first two fit in 13 MiB, a third would not (4 + 4 + 8 MB).
    with start_server(settings.model_copy(update={"model_memory": 13 * 1024 * 1024}), registry) as server:
        loaded = [(m["name"], m["version"]) for m in _resources(server)["models"]]
        assert len(loaded) == 2
        assert _resources(server)["memory"]["evictions"] == 0
        missing = next(name for name in "abcd" if (name, 1) not in loaded)
        answer = server.post(f"/v2/models/{missing}/infer", json=_body())
        assert answer.status_code == 200
        assert answer.json()["model_version"] == "1"
        assert (missing, 1) in [(m["name"], m["version"]) for m in _resources(server)["models"]]


def test_a_load_slower_than_the_requests_deadline_is_a_503_with_retry_after(settings: Settings, registry: Registry) -> None:
    """A request for a version not loaded waits for the load within its deadline
    (X-Request-Timeout); past it, 503 with Retry-After, and the load goes on for the next."""
    registry.register("slow", models.SlowToLoad(0.0), sample=np.ones((2, 3)), trust_pickle=True)
    registry.register("slow", models.SlowToLoad(1.5), sample=np.ones((2, 3)), trust_pickle=True)
    with start_server(settings.model_copy(update={"preload": False}), registry) as server:
        early = server.post("/v2/models/slow/versions/2/infer", json=_body(), headers={"X-Request-Timeout": "300"})
        assert early.status_code == 503
        assert early.headers["Retry-After"] == "1"
        assert "is loading and was not ready within the request's deadline" in early.json()["error"]
        # Without a deadline the request waits for the load already under way.
        started = time.monotonic()
        assert server.post("/v2/models/slow/versions/2/infer", json=_body()).status_code == 200
        assert time.monotonic() - started < 1.5


def test_resources_show_memory_threads_and_limits(settings: Settings, registry: Registry) -> None:
    """GET /v1/resources: the process's RSS; no budget by default; the limits in effect
    (server-wide and per model); per loaded version its measured memory (also recorded in
    the registry), executor threads and OpenMP threads (which the model's threads really
    run with), and, where they are counted (a call limit or a budget), its last use and
    calls in flight."""
    _register_ballast(registry, "ballast", 1)
    registry.register("omp", models.OpenMPThreads(), sample=np.ones((2, 3)))
    configured = settings.model_copy(update={
        "model_threads": 3, "model_omp_threads": 2, "batching": False,
        "model_limits": {"omp": ModelLimits(threads=1, omp_threads=3, max_calls=7)},
    })
    with start_server(configured, registry) as server:
        before = time.time()
        assert server.post("/v2/models/ballast/infer", json=_body()).status_code == 200
        threads = server.post("/v2/models/omp/infer", json=_body()).json()["outputs"][0]["data"]
        assert threads == [3]  # its own STALWART_MODEL_LIMITS entry: 3 OpenMP threads per model thread
        document = _resources(server)
    assert set(document) == {"process", "memory", "limits", "models", "loading"}
    assert document["process"]["pid"] == os.getpid()
    assert document["process"]["rss_bytes"] > 50 * 1024 * 1024
    assert document["memory"] == {"budget_bytes": None, "used_bytes": document["memory"]["used_bytes"], "free_bytes": None, "evictions": 0, "refusals": 0}
    assert document["limits"] == {
        "threads": 3, "omp_threads": 2, "max_calls": None, "batching": False,
        "models": {"omp": {"threads": 1, "omp_threads": 3, "max_calls": 7}},
    }
    assert document["loading"] == []
    ballast = _loaded(document, "ballast")[1]
    assert 0.9 * SIZE <= ballast["memory_bytes"] < 2.5 * SIZE
    assert ballast["measured"] is True
    # Neither a budget nor a call limit: its calls are not counted (nothing needs them).
    assert (ballast["tracked"], ballast["last_used_at"], ballast["in_flight"]) == (False, None, None)
    assert ballast["protected"] is True  # the model's latest
    assert ballast["threads"] == {"max": 3, "alive": 1, "omp": 2}
    assert ballast["concurrency"] == 3  # no batching: one call per executor thread
    assert ballast["max_calls"] is None
    omp = _loaded(document, "omp")[1]
    assert omp["threads"] == {"max": 1, "alive": 1, "omp": 3}
    assert omp["max_calls"] == 7
    assert omp["tracked"] is True
    assert omp["last_used_at"] >= before
    assert omp["in_flight"] == 0
    assert document["memory"]["used_bytes"] == ballast["memory_bytes"] + omp["memory_bytes"]
    recorded = registry.memory.get("ballast", 1)
    assert recorded is not None
    assert recorded.bytes == ballast["memory_bytes"]
    assert recorded.replica.endswith(f"-{os.getpid()}")


def test_a_versions_calls_in_flight_are_limited(settings: Settings, registry: Registry) -> None:
    """Past a model's max_calls, a request gets 503 with Retry-After at once instead of
    queueing behind the calls in flight; it is served again once they end."""
    registry.register("blocking", models.Blocking(), signature={
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    })
    models.RELEASE.clear()
    configured = settings.model_copy(update={"model_limits": {"blocking": ModelLimits(max_calls=1)}})
    with start_server(configured, registry) as server:
        held = threading.Thread(target=lambda: server.post("/v2/models/blocking/infer", json=_body()))
        held.start()
        try:
            deadline = time.monotonic() + 10
            while _loaded(_resources(server), "blocking")[1]["in_flight"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refused = server.post("/v2/models/blocking/infer", json=_body())
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "model blocking:1 has 1 calls in flight, its limit" in refused.json()["error"]
        finally:
            models.RELEASE.set()
            held.join(timeout=30)
        assert server.post("/v2/models/blocking/infer", json=_body()).status_code == 200


def test_unloading_closes_the_pipeline_and_releases_the_threads(settings: Settings, registry: Registry) -> None:
    """A version unloaded to make room has its executor threads stopped and its chains
    dropped; a request that resolved it just before still gets its answer, from the
    version loaded again."""
    import asyncio

    from stalwart.pipeline import Exchange
    from stalwart.serving.app import create_app

    _register_ballast(registry, "ballast", 3)
    quiet = {"preload": False, "registry_poll_seconds": 3600.0}  # nothing loads but what the test asks for
    app = create_app(settings.model_copy(update={"model_memory": 2 * SIZE + SIZE // 2, **quiet}), registry=registry)

    def threads_of(ref: str) -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith(f"stalwart-model-{ref}_"))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            repository, chains, plane = app.state.repository, app.state.plane.chains, app.state.plane
            spec = plane.policy.model_chain("ballast")
            first = await repository.get("ballast", 1)
            exchange = Exchange(request_id="r1", inputs={"input-0": np.ones((1, 3))}, rows=1, outputs=("predict",))
            await chains.get(spec, first)(exchange)
            assert threads_of("ballast:1") == 1
            await repository.get("ballast", 2)
            await repository.get("ballast", 3)  # no room for three: version 1, the least recently used, went
            assert not repository.is_loaded("ballast", 1)
            assert first.usage.retired
            deadline = time.monotonic() + 5
            while threads_of("ballast:1"):
                assert time.monotonic() < deadline, "the unloaded version's threads did not stop"
                await asyncio.sleep(0.01)
            late = Exchange(request_id="r2", inputs={"input-0": np.ones((1, 3))}, rows=1, outputs=("predict",))
            await chains.get(spec, first)(late)  # resolved before the unload, run after it
            assert late.results is not None
            assert late.results["predict"].tolist() == [1003.0]
            assert repository.is_loaded("ballast", 1)

    asyncio.run(scenario())


def test_a_deployments_model_stays_loaded_while_other_versions_come_and_go(fraud_copy: FraudCopy) -> None:
    """Under a budget that /v2 traffic over many versions keeps full, the version a
    deployment routes to is unloaded last (shown as protected): the deployment answers
    every request undegraded, from its own model, and that model is never unloaded."""
    registry = Registry.open(fraud_copy.settings)
    try:
        _register_ballast(registry, "ballast", 6)
    finally:
        registry.db.dispose()
    card = recent_card(fraud_copy.frame)
    # The fraud model (about 6 MB), ballast's latest (version 6, also kept to the last) and
    # one more: versions 1 to 5 take turns in the last place.
    settings = fraud_copy.settings.model_copy(update={"model_memory": 5 * SIZE})
    with start_server(settings) as server:
        for version in [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]:
            answer = server.post(f"/v2/models/ballast/versions/{version}/infer", json=_body())
            assert answer.status_code in (200, 503), answer.text
            predicted = server.post("/v1/deployments/fraud/predict", json=predict_body(card))
            assert predicted.status_code == 200, predicted.text
            assert predicted.json()["model"] == {"name": "fraud", "version": 1}
            assert "degraded" not in predicted.json()
        document = _resources(server)
        fraud = _loaded(document, "fraud")[1]
        assert fraud["protected"] is True
        assert document["memory"]["evictions"] >= 6
        text = server.get("/metrics").text
    assert metric(text, "stalwart_model_evictions_total", model="fraud", version="1") == 0


def test_a_version_that_gets_a_call_while_others_are_unloaded_is_kept(settings: Settings, registry: Registry) -> None:
    """Making room may take several unloads, each of which awaits: a version idle when the
    first began but called meanwhile is not unloaded after all (its call is answered), and
    another idle version goes instead."""
    import asyncio

    from stalwart.pipeline import Exchange
    from stalwart.serving.app import create_app

    _register_ballast(registry, "ballast", 3)
    registry.register("ballast", models.Ballast(2 * CELLS, 4000.0, seed=4), sample=np.ones((2, 3)), trust_pickle=True)
    for version, size in ((1, SIZE), (2, SIZE), (3, SIZE), (4, 2 * SIZE)):
        registry.memory.record("ballast", version, size, replica="earlier")  # as a server measured them before
    # No preload, no registry poll (it would load the latest version by itself).
    quiet = {"preload": False, "registry_poll_seconds": 3600.0}
    app = create_app(settings.model_copy(update={"model_memory": 3 * SIZE + SIZE // 4, **quiet}), registry=registry)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            repository, chains = app.state.repository, app.state.plane.chains
            spec = app.state.plane.policy.model_chain("ballast")
            second = None
            for version in (1, 2, 3):  # used in this order: 1 is the least recently used
                loaded = await repository.get("ballast", version)
                await chains.get(spec, loaded)(Exchange(request_id="warm", inputs={"input-0": np.ones((1, 3))}, rows=1, outputs=("predict",)))
                second = loaded if version == 2 else second
            assert second is not None
            call = Exchange(request_id="late", inputs={"input-0": np.ones((1, 3))}, rows=1, outputs=("predict",))
            calls: list[asyncio.Task[None]] = []
            unload = repository._on_unloaded  # the app's: drops the version's chains

            async def first_unload_then_a_call(loaded: Any) -> None:
                if not calls:  # version 2 is called while version 1 is being unloaded
                    calls.append(asyncio.ensure_future(chains.get(spec, second)(call)))
                    await asyncio.sleep(0)
                await unload(loaded)

            repository._on_unloaded = first_unload_then_a_call
            await repository.get("ballast", 4)  # 8 MB: two of the three 4 MB versions must go
            await calls[0]
            assert call.results is not None
            assert call.results["predict"].tolist() == [2003.0]
            assert [repository.is_loaded("ballast", v) for v in (1, 2, 3, 4)] == [False, True, False, True]
            assert not second.usage.retired

    asyncio.run(scenario())
