"""The HTTP surface end to end, through a real uvicorn server: every datatype, readiness while
loading and after a failed load, versions appearing while the server runs, unknown routes,
request ids, and every client mistake answered with the right 4xx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.registry.flavors import LoadPolicy
from tests.models import ALL_DATATYPES, Echo, Exploding, Linear, Mixed, Unencodable
from tests.servers import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[2]

MIXED_SAMPLE = {
    "age": np.array([30, 41], dtype=np.int32),
    "income": np.array([52000.0, 61000.0], dtype=np.float32),
    "city": np.array(["Oslo", "Amsterdam"], dtype=object),
}


def _column(name: str, values: np.ndarray[Any, Any], datatype: str | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype or name, "shape": [len(values)], "data": values.tolist()}


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def echo_server(settings: Settings, registry: Registry) -> Iterator[LiveServer]:
    """A server with an echo model over every datatype, a matrix model, a mixed-type
    columnar model and a model that raises."""
    registry.register("echo", Echo(), sample=ALL_DATATYPES)
    registry.register("linear", Linear(np.array([1.0, 2.0, 3.0]), 0.5), sample=np.ones((2, 3)))
    registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
    registry.register("exploding", Exploding(), signature={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    })
    with start_server(settings, registry) as server:
        yield server


# --- data through the wire ----------------------------------------------------------------


def test_every_datatype_round_trips_end_to_end(echo_server: LiveServer) -> None:
    """A model that returns its inputs gets back exactly what the client sent, for all 13
    datatypes (range edges, non-ASCII text), and the request's `id` is echoed."""
    body = {"id": "all-types", "inputs": [_column(name, values) for name, values in ALL_DATATYPES.items()]}
    response = echo_server.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["model_name"], result["model_version"], result["id"]) == ("echo", "1", "all-types")
    outputs = {o["name"]: o for o in result["outputs"]}
    assert set(outputs) == set(ALL_DATATYPES)
    for name, sent in ALL_DATATYPES.items():
        out = outputs[name]
        assert (out["datatype"], out["shape"]) == (name, [2]), name
        got = np.asarray(out["data"], dtype=sent.dtype)
        assert got.tolist() == sent.tolist(), name


def test_nested_and_column_shaped_data(echo_server: LiveServer) -> None:
    """Nested rows mean the same as flat data; a column may be sent as [n, 1]."""
    flat = echo_server.post("/v2/models/linear/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]})
    nested = echo_server.post("/v2/models/linear/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]})
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["outputs"] == nested.json()["outputs"]
    assert flat.json()["outputs"][0]["data"] == [14.5, 32.5]
    column = echo_server.post("/v2/models/mixed/infer", json={"inputs": [
        {"name": "age", "datatype": "INT32", "shape": [2, 1], "data": [[30], [41]]},
        {"name": "income", "datatype": "FP32", "shape": [2], "data": [52000, 61000]},
        {"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": [["Oslo"], ["Amsterdam"]]},
    ], "outputs": [{"name": "long_name"}]})
    assert column.status_code == 200, column.text
    assert column.json()["outputs"] == [{"name": "long_name", "datatype": "BOOL", "shape": [2], "data": [False, True]}]


def test_metadata_reports_each_version_and_the_latest(settings: Settings, registry: Registry) -> None:
    """/v2/models/{m} describes the latest version, /versions/{v} the one asked for."""
    registry.register("lin", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)), tags={"stage": "old"})
    registry.register("lin", Linear(np.ones(3), 0.0), sample=np.ones((2, 3)))
    with start_server(settings, registry) as server:
        latest = server.get("/v2/models/lin").json()
        first = server.get("/v2/models/lin/versions/1").json()
    assert (latest["versions"], latest["inputs"][0]["shape"]) == (["2"], [-1, 3])
    assert (first["versions"], first["inputs"][0]["shape"]) == (["1"], [-1, 2])
    assert first["parameters"]["tags"] == {"stage": "old"}
    assert len(first["parameters"]["sha256"]) == 64


# --- client mistakes ----------------------------------------------------------------------

_AGE = {"name": "age", "datatype": "INT32", "shape": [1], "data": [30]}
_INCOME = {"name": "income", "datatype": "FP32", "shape": [1], "data": [1.5]}
_CITY = {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["Oslo"]}


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"inputs": [{**_AGE, "shape": [2]}, _INCOME, _CITY]}, "inputs[0].data", "has 1 values but shape [2] needs 2"),
        ({"inputs": [{**_AGE, "data": [2**31]}, _INCOME, _CITY]}, "inputs[0].data", "out of range for INT32"),
        ({"inputs": [_AGE, {**_INCOME, "data": [1e39]}, _CITY]}, "inputs[1].data", "too large for FP32"),
        ({"inputs": [{**_AGE, "data": [True]}, _INCOME, _CITY]}, "inputs[0].data", "INT32 data must be numbers"),
        ({"inputs": [_AGE, _INCOME, {**_CITY, "data": [7]}]}, "inputs[2].data", "BYTES data must be strings"),
        ({"inputs": [{**_AGE, "shape": [2], "data": [[1, 2], [3]]}, _INCOME, _CITY]}, "inputs[0].data", "not a regular array"),
        ({"inputs": [_AGE, {**_INCOME, "datatype": "FP64"}, _CITY]}, "inputs[1].datatype", "takes FP32, got FP64"),
        ({"inputs": [_AGE, _INCOME, _CITY, _AGE]}, "inputs[3].name", "given twice"),
        ({"inputs": [_AGE, _INCOME]}, "inputs", "missing 'city'"),
        ({"inputs": [_AGE, _INCOME, {**_CITY, "name": "town"}]}, "inputs[2].name", "no input 'town'"),
        ({"inputs": [{**_AGE, "shape": [1, 2], "data": [1, 2]}, _INCOME, _CITY]}, "inputs[0].shape", "takes shape [-1]"),
        ({"inputs": [{**_AGE, "shape": [0], "data": []}, {**_INCOME, "shape": [0], "data": []}, {**_CITY, "shape": [0], "data": []}]}, "inputs", "at least one row"),
        ({"inputs": [_AGE, _INCOME, _CITY], "outputs": [{"name": "price"}]}, "outputs[0].name", "no output 'price'"),
        ({"inputs": [_AGE, _INCOME, _CITY], "id": 12}, "id", "expected `str | null`"),
        ({"inputs": [{**_AGE, "shape": [-1]}, _INCOME, _CITY]}, "inputs[0].shape[0]", "expected `int` >= 0"),
        ({"inputs": {"age": [1]}}, "inputs", "expected `array`, got `object`"),
    ],
)
def test_client_mistakes_are_400_naming_the_field(echo_server: LiveServer, body: dict[str, Any], field: str, fragment: str) -> None:
    """Each mistake is a 400 whose body says which field is wrong and how."""
    response = echo_server.post("/v2/models/mixed/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")
    assert fragment in error["error"]


def test_unknown_models_and_versions_are_404(echo_server: LiveServer) -> None:
    """An unknown model or version is a 404 on every model endpoint, saying how to list them."""
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/versions/1"):
        response = echo_server.get(path)
        assert response.status_code == 404
        assert "model 'nope' is not registered" in response.json()["error"]
    for version in ("2", "0", "x", "99999999999"):
        response = echo_server.get(f"/v2/models/echo/versions/{version}")
        assert response.status_code == 404, version
        assert f"has no version {version}" in response.json()["error"]
    response = echo_server.post("/v2/models/echo/versions/3/infer", json={"inputs": []})
    assert response.status_code == 404
    bad_name = echo_server.get("/v2/models/a%00b")  # not a possible model name at all
    assert bad_name.status_code == 404


def test_a_model_that_raises_is_a_500_naming_the_model(echo_server: LiveServer) -> None:
    """A model that fails for every request is our fault, not the client's: a JSON 500 that
    names the model version and the exception's class and points at the log by request id,
    never the model's own message (it can hold anything) and never a traceback."""
    response = echo_server.post(
        "/v2/models/exploding/infer",
        json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]},
        headers={"X-Request-ID": "boom-1"},
    )
    assert response.status_code == 500
    assert response.json() == {
        "error": "model exploding:1 raised ZeroDivisionError; the model's own message is in the server log under request boom-1"
    }
    assert "divided" not in response.text


def test_an_unexpected_crash_is_a_json_500_pointing_at_the_log(settings: Settings, registry: Registry) -> None:
    """Anything that escapes every handler (here: model output JSON cannot carry) becomes a
    JSON 500 giving the request id to look for in the log, never a traceback."""
    registry.register("unencodable", Unencodable(), signature={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
        "outputs": [{"name": "predict", "datatype": "BYTES", "shape": [-1]}],
    })
    with start_server(settings, registry) as server:
        response = server.post("/v2/models/unencodable/infer", json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}, headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "crash-1"
    assert response.json() == {"error": "internal error; find request crash-1 in the server log"}


def test_unknown_routes_and_methods_are_json(echo_server: LiveServer) -> None:
    """A path that is not a route is a JSON 404; a method a route does not take is a JSON
    405 with Allow; both carry a request id."""
    missing = echo_server.get("/v3/anything")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no route /v3/anything; see /openapi.json"}
    assert missing.headers["x-request-id"]
    wrong = echo_server.get("/v2/models/echo/infer")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert wrong.headers["allow"] == "POST"
    assert wrong.json() == {"error": "GET is not allowed on /v2/models/echo/infer; see /openapi.json"}
    assert echo_server.client.delete("/v2").status_code == 405


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("trace-abc_123", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("a\tb", False),
        ("has space", False),
        ("", False),
        ("caf\xe9", False),
    ],
)
def test_request_id_taken_from_the_client_only_when_sane(echo_server: LiveServer, sent: str, echoed: bool) -> None:
    """X-Request-ID is echoed when it is 1-128 printable ASCII characters without spaces;
    otherwise the server generates one, so logs never carry a client's junk."""
    response = echo_server.client.get("/v2/health/live", headers=[("X-Request-ID", sent.encode("latin-1"))])
    got = response.headers["x-request-id"]
    if echoed:
        assert got == sent
    else:
        assert got != sent
        assert len(got) == 32
        assert all(c in "0123456789abcdef" for c in got)


def test_413_for_a_body_over_the_default_limit(echo_server: LiveServer) -> None:
    """The default limit is 8 MiB: a bigger body is refused with 413 before it is parsed."""
    response = echo_server.post("/v2/models/echo/infer", content=b" " * (8 * 1024 * 1024 + 1), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["field"] == "body"
    assert response.headers["x-request-id"]


# --- readiness ----------------------------------------------------------------------------


def _gated_module(directory: Path, gate: Path) -> str:
    """A module whose import waits until ``gate`` exists: a model that loads slowly, for as
    long as the test wants."""
    name = f"gated_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(
        "import pathlib, time\n"
        f"GATE = pathlib.Path({str(gate)!r})\n"
        "while not GATE.exists():\n"
        "    time.sleep(0.01)\n\n"
        "class Gated:\n"
        "    def predict(self, x):\n"
        "        return x.sum(axis=1)\n"
    )
    return name


def test_not_ready_while_models_load(settings: Settings, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the models load, the server is live (200) but not ready (503), and inference is
    a 503 that says so; once loaded, all three answer normally."""
    import importlib

    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    module = _gated_module(tmp_path, gate)
    model = importlib.import_module(module).Gated()
    registry.register("slow", model, sample=np.ones((2, 2)))
    registry.policy = LoadPolicy(python_modules=("tests", module))  # the server may import it
    gate.unlink()
    monkeypatch.delitem(sys.modules, module)  # the server imports it afresh, and waits

    with start_server(settings, registry, wait_ready=False) as server:
        assert server.get("/v2/health/live").json() == {"live": True}
        ready = server.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "error": "the server is still loading its models"}
        infer = server.post("/v2/models/slow/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]})
        assert infer.status_code == 503
        assert "still loading" in infer.json()["error"]

        gate.touch()
        _wait_for(lambda: server.get("/v2/health/ready").status_code == 200)
        infer = server.post("/v2/models/slow/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]})
        assert infer.status_code == 200
        assert infer.json()["outputs"][0]["data"] == [3.0]


def test_a_model_that_cannot_load_is_503_with_its_error(settings: Settings, registry: Registry, logistic: Any, boosted: Any, cancer: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tampered artifact, a missing one, a class that no longer imports, a module that
    raises on import: the server still becomes ready, the other models serve, and each broken
    one answers 503 with the reason on infer and /ready."""
    import importlib

    tampered = registry.register("tampered", logistic, sample=cancer["x_train"][:5])
    path = registry.artifacts.path_of(tampered.artifact_file)
    path.write_bytes(path.read_bytes() + b"!")
    missing = registry.register("missing", boosted, sample=cancer["x_train"][:5])
    registry.artifacts.path_of(missing.artifact_file).unlink()
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    module = _gated_module(tmp_path, gate)
    registry.register("gone", importlib.import_module(module).Gated(), sample=np.ones((2, 2)))
    (tmp_path / f"{module}.py").unlink()
    monkeypatch.delitem(sys.modules, module)
    broken = _gated_module(tmp_path, gate)
    registry.register("broken", importlib.import_module(broken).Gated(), sample=np.ones((2, 2)))
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('this module is broken')\n")
    monkeypatch.delitem(sys.modules, broken)
    registry.register("fine", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
    registry.policy = LoadPolicy(python_modules=("tests", module, broken))  # the server may import them

    x = cancer["x_test"][:1]
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": x.ravel().tolist()}]}
    with start_server(settings, registry) as server:
        failures = (
            ("tampered", tampered.sha256),
            ("missing", "is missing"),
            ("gone", "cannot import the model's class"),
            ("broken", "loading model broken:1 raised RuntimeError: this module is broken"),
        )
        for name, reason in failures:
            infer = server.post(f"/v2/models/{name}/infer", json=body)
            assert infer.status_code == 503, (name, infer.text)
            assert reason in infer.json()["error"], name
            ready = server.get(f"/v2/models/{name}/ready")
            assert ready.status_code == 503
            assert ready.json()["ready"] is False
            assert reason in ready.json()["error"], name
            assert server.get(f"/v2/models/{name}").status_code == 200  # its record is still there
        assert server.get("/v2/models/fine/ready").json() == {"name": "fine", "ready": True}
        metrics = server.get("/metrics").text
    assert 'stalwart_model_load_failures_total{model="tampered",version="1"}' in metrics


def test_readiness_of_an_unloaded_version_warms_it(settings: Settings, registry: Registry) -> None:
    """Only the latest version loads at start; asking whether an older one is ready answers
    503 "loading" and starts loading it, so it soon answers 200."""
    registry.register("lin", Linear(np.ones(2), 1.0), sample=np.ones((2, 2)))
    registry.register("lin", Linear(np.ones(2), 2.0), sample=np.ones((2, 2)))
    with start_server(settings, registry) as server:
        assert server.get("/v2/models/lin/versions/2/ready").json() == {"name": "lin", "ready": True}
        first = server.get("/v2/models/lin/versions/1/ready")
        assert first.status_code == 503
        assert first.json() == {"name": "lin", "ready": False, "error": "model lin:1 is loading"}
        _wait_for(lambda: server.get("/v2/models/lin/versions/1/ready").status_code == 200)
        assert 'stalwart_model_load_seconds_count{model="lin",version="1"} 1.0' in server.get("/metrics").text


def test_a_version_registered_elsewhere_becomes_the_latest(any_db_settings: Settings, any_registry: Registry) -> None:
    """Another process registers version 2 while the server runs (on SQLite and on
    PostgreSQL): the server notices (it polls the registry), loads it, and unversioned
    requests move to it; version 1 still answers when asked for by number."""
    any_registry.register("lin", Linear(np.ones(2), 1.0), sample=np.ones((2, 2)))
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}]}
    with start_server(any_db_settings, any_registry) as server:
        assert server.post("/v2/models/lin/infer", json=body).json()["model_version"] == "1"
        assert server.get("/v2/models/a%00b").status_code == 404  # PostgreSQL refuses NUL bytes
        script = (
            "import numpy as np\n"
            "from pathlib import Path\n"
            "from stalwart.config import Settings\n"
            "from stalwart.registry import Registry\n"
            "from tests.models import Linear\n"
            f"settings = Settings(home=Path({str(any_db_settings.home)!r}), db_url={any_db_settings.resolved_db_url()!r})\n"
            "Registry.open(settings).register('lin', Linear(np.ones(2), 10.0), sample=np.ones((2, 2)))\n"
        )
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)

        def moved() -> bool:
            return bool(server.post("/v2/models/lin/infer", json=body).json()["model_version"] == "2")

        _wait_for(moved)
        assert server.post("/v2/models/lin/infer", json=body).json()["outputs"][0]["data"] == [12.0]
        old = server.post("/v2/models/lin/versions/1/infer", json=body).json()
        assert (old["model_version"], old["outputs"][0]["data"]) == ("1", [3.0])
        assert server.get("/v2/models/lin").json()["versions"] == ["2"]


@pytest.mark.postgres
def test_serving_survives_the_registry_database_going_away(pg_url: str, home: Path) -> None:
    """While PostgreSQL refuses connections, loaded models keep answering and the registry
    poll keeps trying; when it is back, a new version is picked up as usual."""
    import psycopg

    settings = Settings(home=home, db_url=pg_url, registry_poll_seconds=0.1, python_modules=("tests",))  # type: ignore[arg-type]
    registry = Registry.open(settings)
    registry.register("lin", Linear(np.ones(2), 1.0), sample=np.ones((2, 2)))
    registry.db.dispose()
    database = pg_url.rsplit("/", 1)[1]
    admin_url = pg_url.rsplit("/", 1)[0] + "/postgres"
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}]}
    with start_server(settings) as server, psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        try:
            time.sleep(0.5)  # several polls fail meanwhile
            during = server.post("/v2/models/lin/infer", json=body)
            assert during.status_code == 200
            assert during.json()["outputs"][0]["data"] == [3.0]
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        registry = Registry.open(settings)
        try:
            registry.register("lin", Linear(np.ones(2), 5.0), sample=np.ones((2, 2)))
        finally:
            registry.db.dispose()
        _wait_for(lambda: server.post("/v2/models/lin/infer", json=body).json()["model_version"] == "2")


def test_a_model_registered_after_start_is_served_on_first_request(settings: Settings, registry: Registry) -> None:
    """A model the server has never heard of is looked up in the registry on its first
    request, without waiting for the poll."""
    slow_poll = settings.model_copy(update={"registry_poll_seconds": 300.0})
    with start_server(slow_poll, registry) as server:
        registry.register("late", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
        response = server.post("/v2/models/late/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [2, 3]}]})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [5.0]


def test_an_old_version_asked_for_first_does_not_become_the_latest(settings: Settings, registry: Registry) -> None:
    """Versions registered after start, before the next poll: asking for version 1 by number
    first must not make it what unversioned requests get; they get version 2."""
    slow_poll = settings.model_copy(update={"registry_poll_seconds": 300.0})
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}]}
    with start_server(slow_poll, registry) as server:
        registry.register("lin", Linear(np.ones(2), 1.0), sample=np.ones((2, 2)))
        registry.register("lin", Linear(np.ones(2), 2.0), sample=np.ones((2, 2)))
        assert server.post("/v2/models/lin/versions/1/infer", json=body).json()["model_version"] == "1"
        assert server.post("/v2/models/lin/infer", json=body).json()["model_version"] == "2"
        assert server.get("/v2/models/lin").json()["versions"] == ["2"]


def test_concurrent_first_requests_load_a_version_once(settings: Settings, registry: Registry) -> None:
    """Many requests for a version that is not loaded yet share one load."""
    registry.register("lin", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
    no_preload = settings.model_copy(update={"preload": False})
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    with start_server(no_preload, registry) as server:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(8) as pool, httpx.Client(base_url=server.url) as client:
            statuses = list(pool.map(lambda _: client.post("/v2/models/lin/infer", json=body).status_code, range(16)))
        assert statuses == [200] * 16
        assert 'stalwart_model_load_seconds_count{model="lin",version="1"} 1.0' in server.get("/metrics").text
