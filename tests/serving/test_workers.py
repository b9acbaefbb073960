"""``stalwart serve --workers 2`` as a real process: both workers answer on one port, any
worker's /metrics counts every worker's requests, a killed worker is started again while
the other answers, SIGTERM drains and exits 0 with every prediction record stored once,
workers never outlive their supervisor, a server whose workers cannot start exits
non-zero, and without Redis a feature-cache invalidation reaches every worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from stalwart.monitoring.records import verify_chain
from stalwart.monitoring.sinks import PredictionStore, Query, open_sink
from stalwart.registry import Registry
from stalwart.serving.grpc import messages as m
from tests.faults import Switchable
from tests.processes import ServeProcess
from tests.serving.conftest import FraudCopy, predict_body, recent_card

SAMPLE = pd.DataFrame({"x": [float(i) for i in range(60)]})
V2 = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [4.0]}]}
INFER = "/v2/models/steady/infer"

pytestmark = pytest.mark.slow


def _home(root: Path) -> Path:
    home = root / "home"
    registry = Registry.open(Settings(home=home))
    registry.register("steady", Switchable("steady"), sample=SAMPLE)
    registry.db.dispose()
    return home


def _start(home: Path, log: Path, **env: str) -> ServeProcess:
    """``stalwart serve --workers 2`` on ``home``, once the supervisor says every worker listens."""
    server = ServeProcess(
        {
            "STALWART_HOME": str(home),
            "STALWART_PYTHON_MODULES": "tests",
            "STALWART_WORKERS": "2",
            "STALWART_LOG_LEVEL": "info",
            **env,
        },
        log,
    )
    server.start()
    _wait_for(lambda: _events(server, "serving"), 120, server, "the workers did not all start")
    return server


def _lines(server: ServeProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line still being written
    return out


def _events(server: ServeProcess, event: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        line for line in _lines(server)
        if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
    ]


def _wait_for(check: Callable[[], Any], timeout: float, server: ServeProcess, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s:\n{server.tail(40)}")
        time.sleep(0.1)


def _infer(server: ServeProcess) -> httpx.Response:
    """One request on a connection of its own (a kept-alive one would stay with one worker)."""
    return httpx.post(server.url + INFER, json=V2, timeout=10)


def _scrape(server: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _answered(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(
        value for (name, labels), value in samples.items()
        if name == "stalwart_requests_total" and ("endpoint", "/v2/models/{model}/infer") in labels and ("status", "200") in labels
    )


def _worker_of(server: ServeProcess, request_id: str) -> int:
    """The worker whose access line has this request (written just after its response)."""
    lines = _wait_for(
        lambda: [line for line in _lines(server) if line.get("event") == "request" and line.get("request_id") == request_id],
        10, server, f"no access line for {request_id}",
    )
    worker: int = lines[0]["worker"]
    return worker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent) still "exists": look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Two workers, serving gRPC too (on a port the supervisor picks)."""
    root = tmp_path_factory.mktemp("workers")
    server = _start(_home(root), root / "serve.log", STALWART_GRPC_PORT="0")
    try:
        yield server
    finally:
        server.stop()


def test_every_worker_answers_and_any_scrape_counts_them_all(two_workers: ServeProcess) -> None:
    """Requests on fresh connections are spread over both worker processes (their access
    lines say which), and /metrics, whichever worker answers it, counts all of them; gauges
    merge as documented (models loaded: what every worker serves; breaker states: how many
    workers are in each)."""
    server = two_workers
    (serving,) = _events(server, "serving")
    assert len(set(serving["pids"])) == 2
    assert {line["pid"] for line in _events(server, "worker ready")} == set(serving["pids"])
    before = _answered(_scrape(server))
    responses = [_infer(server) for _ in range(100)]
    assert [r.status_code for r in responses] == [200] * 100
    ids = {r.headers["x-request-id"] for r in responses}
    workers = {line["worker"] for line in _lines(server) if line.get("event") == "request" and line.get("request_id") in ids}
    assert workers == {0, 1}
    _wait_for(lambda: _answered(_scrape(server)) == before + 100, 10, server, "/metrics did not count every request")
    for _ in range(6):  # fresh connections: both workers answer scrapes
        samples = _scrape(server)
        assert _answered(samples) == before + 100
        assert samples[("stalwart_models_loaded", ())] == 1
        assert samples[("stalwart_breaker_state", (("guard", "/v2/steady:1"), ("state", "closed")))] == 2


def test_every_worker_serves_grpc_on_one_port(two_workers: ServeProcess) -> None:
    """STALWART_GRPC_PORT=0 becomes one port, which every worker serves: RPCs on fresh
    connections reach both (their access lines say which), through each one's data plane."""
    (serving,) = _events(two_workers, "serving")
    target = serving["grpc"]
    assert not target.endswith(":0")
    request = m.ModelInferRequest(model_name="steady")
    request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(4.0)
    ids = []
    for index in range(24):
        with grpc.insecure_channel(target) as channel:  # a connection of its own
            call = channel.unary_unary(f"/{m.SERVICE}/ModelInfer", request_serializer=m.ModelInferRequest.SerializeToString, response_deserializer=m.ModelInferResponse.FromString)
            response = call(request, metadata=(("x-request-id", f"grpc-worker-{index}"),), timeout=10)
        assert response.model_name == "steady"
        ids.append(f"grpc-worker-{index}")

    def workers() -> set[int]:
        return {line["worker"] for line in _lines(two_workers) if line.get("event") == "request" and line.get("request_id") in ids}

    _wait_for(lambda: workers() == {0, 1}, 10, two_workers, "gRPC did not reach both workers")


def test_a_killed_worker_is_started_again_while_the_other_answers(two_workers: ServeProcess) -> None:
    """SIGKILL one worker: requests keep being answered (by the other), the supervisor logs
    the death and starts a new worker in its place, which answers too; killed again soon
    after its start, it is restarted after a longer backoff."""
    server = two_workers
    (serving,) = _events(server, "serving")
    victim = serving["pids"][0]
    (started,) = _events(server, "worker started", pid=victim)
    slot = started["worker"]
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: not _alive(victim), 10, server, "the killed worker was not reaped")
    answers = [_infer(server).status_code for _ in range(30)]
    assert answers == [200] * 30
    (died,) = _wait_for(lambda: _events(server, "worker died; restarting it", pid=victim), 10, server, "no restart logged")
    assert (died["worker"], died["status"], died["restart_in_seconds"]) == (slot, "signal SIGKILL", 0.5)
    ready = _wait_for(
        lambda: [r for r in _events(server, "worker ready", worker=slot) if r["pid"] != victim], 120, server,
        "the killed worker was not replaced",
    )
    successor = ready[-1]["pid"]
    responses = [_infer(server) for _ in range(60)]
    assert all(r.status_code == 200 for r in responses)
    ids = {r.headers["x-request-id"] for r in responses}
    assert {line["worker"] for line in _lines(server) if line.get("request_id") in ids} == {0, 1}
    # Dying again within STABLE_SECONDS of its start: the next restart waits longer.
    os.kill(successor, signal.SIGKILL)
    (again,) = _wait_for(lambda: _events(server, "worker died; restarting it", pid=successor), 10, server, "no restart logged")
    assert again["restart_in_seconds"] == 1.0
    _wait_for(
        lambda: [r for r in _events(server, "worker ready", worker=slot) if r["pid"] not in (victim, successor)], 120, server,
        "the worker was not replaced a second time",
    )
    assert [_infer(server).status_code for _ in range(10)] == [200] * 10


def test_sigterm_drains_exits_zero_and_every_worker_records_each_request_once(tmp_path: Path) -> None:
    """SIGTERM mid-traffic: the supervisor passes it on, the workers finish what they
    answer and stop, the command exits 0, and every answered request of both workers has
    exactly one prediction record, in one intact hash chain per worker."""
    home = _home(tmp_path)
    server = _start(home, tmp_path / "serve.log")
    answered: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                response = _infer(server)
            except httpx.TransportError:
                continue  # no worker listens any more; the loop ends when told to
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        _wait_for(lambda: len(answered) >= 200, 60, server, "traffic was not answered")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
    finally:
        stop.set()
        for client in clients:
            client.join()
        server.stop()
    assert code == 0, server.tail(40)
    assert _events(server, "stopping workers", signal="SIGTERM")
    assert len(_events(server, "worker stopped")) == 2
    sink = open_sink(Settings(home=home))
    assert isinstance(sink, PredictionStore)
    try:
        stored = [r.request_id for r in sink.query(Query(limit=100_000))]
        chains = sink.chains()
        broken = [verify_chain(sink.chain(name)) for name in chains]
    finally:
        sink.close()
    assert len(stored) == len(set(stored))  # exactly once
    assert set(answered) <= set(stored)
    assert len(chains) == 2  # one writer per worker
    assert broken == [None, None]
    workers = {line["worker"] for line in _lines(server) if line.get("event") == "request"}
    assert workers == {0, 1}


def test_port_zero_is_one_port_for_all_and_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """``--port 0``: the supervisor picks one free port and every worker serves on it. A
    supervisor killed outright (SIGKILL: no chance to pass anything on) leaves no worker
    behind: each sees its link close, drains and exits."""
    server = _start(_home(tmp_path), tmp_path / "serve.log", STALWART_PORT="0")
    try:
        (serving,) = _events(server, "serving")
        url = serving["url"]
        assert not url.endswith(":0")
        ids = [httpx.post(url + INFER, json=V2, timeout=10).headers["x-request-id"] for _ in range(30)]
        assert {_worker_of(server, rid) for rid in ids} == {0, 1}
        assert server.process is not None
        server.process.kill()
        server.process.wait(10)
        _wait_for(lambda: not any(_alive(pid) for pid in serving["pids"]), 30, server, "workers outlived their supervisor")
    finally:
        server.stop()


def test_a_taken_port_fails_the_start_before_any_worker(tmp_path: Path) -> None:
    """Another program listening on the port (even one with SO_REUSEPORT, which the workers
    could join without a word): the command says so and exits 3, starting no worker."""
    home = _home(tmp_path)
    server = ServeProcess({"STALWART_HOME": str(home), "STALWART_WORKERS": "2", "STALWART_LOG_LEVEL": "info"}, tmp_path / "serve.log")
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", server.port))
        other.listen()
        server.start()
        assert server.process is not None
        code = server.process.wait(60)
    server.stop()
    assert code == 3
    (failed,) = _events(server, "cannot bind the port")
    assert failed["port"] == server.port
    assert not _events(server, "worker started")


def test_workers_that_cannot_start_stop_the_server_non_zero(tmp_path: Path) -> None:
    """A project file that fails to load fails every worker: the supervisor stops the
    others and exits with the workers' status (1, as ``stalwart serve`` would), naming why."""
    home = _home(tmp_path)
    project = tmp_path / "project.py"
    project.write_text("raise RuntimeError('this project is broken')\n")
    server = ServeProcess(
        {"STALWART_HOME": str(home), "STALWART_WORKERS": "2", "STALWART_PROJECT": str(project), "STALWART_LOG_LEVEL": "info"},
        tmp_path / "serve.log",
    )
    server.start()
    assert server.process is not None
    code = server.process.wait(120)
    server.stop()
    assert code == 1, server.tail(40)
    assert _events(server, "worker could not start; stopping the server")
    assert "this project is broken" in server.log.read_text()
    assert not _events(server, "serving")


def test_without_redis_an_invalidation_reaches_every_worker(fraud_copy: FraudCopy, tmp_path: Path) -> None:
    """No Redis: each worker caches features in its own memory. A row written through one
    worker (which invalidates the card's cached features) is seen at once by every worker,
    though the cache's TTL is a minute: the supervisor passes the invalidation on."""
    token = "workers-token"
    server = _start(
        fraud_copy.home, tmp_path / "serve.log",
        STALWART_PROJECT=str(fraud_copy.settings.project), STALWART_ADMIN_TOKEN=token, STALWART_PYTHON_MODULES="examples",
    )
    try:
        card = recent_card(fraud_copy.frame)

        def features() -> tuple[int, dict[str, Any]]:
            response = httpx.post(server.url + "/v1/deployments/fraud/predict", json=predict_body(card), timeout=10)
            assert response.status_code == 200, response.text
            return _worker_of(server, response.headers["x-request-id"]), response.json()["features"][0]

        before = [features() for _ in range(20)]
        assert {worker for worker, _ in before} == {0, 1}  # both workers hold the card's features
        assert len({json.dumps(f, sort_keys=True) for _, f in before}) == 1
        old = before[0][1]
        row = {"card_id": card, "ts": time.time() - 1, "amount": 123.25, "merchant_category": "fuel", "is_fraud": 0}
        written = httpx.post(
            server.url + "/v1/sources/transactions/rows", json={"rows": [row]}, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert written.status_code == 200, written.text
        assert written.json()["invalidated"] is True
        time.sleep(0.2)  # the relay is asynchronous: a message to the supervisor, then to the other worker
        after = [features() for _ in range(20)]
        assert {worker for worker, _ in after} == {0, 1}
        assert [f["tx_count_1h"] for _, f in after] == [old["tx_count_1h"] + 1] * 20
        assert all(f["last_amount"] == 123.25 for _, f in after)
    finally:
        server.stop()
