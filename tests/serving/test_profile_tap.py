"""Live profiles from a real server: what it answered, per column, in the database at
shutdown; rejected requests left out; off when switched off; and two server processes on
PostgreSQL merging to what one process builds from the same requests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.monitoring.live_profiles import merged_profile, oip_deployment
from stalwart.monitoring.profiles import FeatureProfile
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from stalwart.storage import Database
from tests.faults import Switchable, set_mode
from tests.models import Linear, Mixed
from tests.processes import ServeProcess
from tests.servers import start_server

MIXED_SAMPLE = {
    "age": np.array([30, 41], dtype=np.int32),
    "income": np.array([52000.0, 61000.0], dtype=np.float32),
    "city": np.array(["Oslo", "Amsterdam"], dtype=object),
}
CITIES = ("Oslo", "Lima", "Amsterdam", "Pune")


def _mixed_requests(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` /v2 bodies for the mixed model, 1 to 4 rows each."""
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(n):
        rows = int(rng.integers(1, 5))
        bodies.append({"inputs": [
            {"name": "age", "datatype": "INT32", "shape": [rows], "data": rng.integers(18, 90, rows).tolist()},
            {"name": "income", "datatype": "FP32", "shape": [rows], "data": np.round(rng.lognormal(10, 0.5, rows), 1).tolist()},
            {"name": "city", "datatype": "BYTES", "shape": [rows], "data": [str(c) for c in rng.choice(CITIES, rows)]},
        ]})
    return bodies


def _column(bodies: list[dict[str, Any]], name: str) -> list[Any]:
    return [v for body in bodies for tensor in body["inputs"] if tensor["name"] == name for v in tensor["data"]]


def _within_rank_error(profile: FeatureProfile, values: list[float]) -> None:
    exact = np.sort(np.asarray(values, dtype=np.float64))
    for q in (0.1, 0.5, 0.9):
        estimate = profile.quantile(q)
        assert estimate is not None
        # Ties: the estimate's rank is anywhere from below its first copy to its last.
        low, high = np.searchsorted(exact, estimate, side="left"), np.searchsorted(exact, estimate, side="right")
        error = profile.rank_error + 1 / len(exact)
        assert low / len(exact) - error <= q <= high / len(exact) + error, (q, low, high)


def test_a_server_leaves_profiles_of_what_it_answered(settings: Settings, registry: Registry) -> None:
    """Requests answered on /v2 are profiled per input and output column, under
    ``/v2/<model>``, and in the database once the server stops; a rejected request is not."""
    registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
    bodies = _mixed_requests(40, seed=1)
    since = time.time()
    with start_server(settings, registry) as server:
        assert server.app.state.live_profiles is not None
        for body in bodies:
            assert server.post("/v2/models/mixed/infer", json=body).status_code == 200
        bad = {"inputs": [{"name": "age", "datatype": "INT32", "shape": [1], "data": [1]}]}
        assert server.post("/v2/models/mixed/infer", json=bad).status_code == 400
    profile = merged_profile(registry.db, oip_deployment("mixed"), since=since - 60, until=time.time() + 60)
    ages, incomes, cities = _column(bodies, "age"), _column(bodies, "income"), _column(bodies, "city")
    assert profile.rows == len(ages)
    assert set(profile) == {"input:age", "input:income", "input:city", "output:score", "output:long_name"}
    assert (profile["input:age"].kind, profile["input:age"].count) == ("integer", len(ages))
    assert (profile["input:age"].min, profile["input:age"].max) == (min(ages), max(ages))
    assert profile["input:city"].frequencies() == dict(pd.Series(cities).value_counts())
    assert profile["input:income"].total == pytest.approx(sum(np.float32(v) for v in incomes), rel=1e-6)
    long_names = sum(len(c) > 5 for c in cities)
    assert (profile["output:long_name"].trues, profile["output:long_name"].falses) == (long_names, len(cities) - long_names)
    assert profile["output:score"].count == len(ages)


def test_a_deployment_is_profiled_by_feature_and_variant(settings: Settings, registry: Registry) -> None:
    """/v1 answers are profiled under the deployment and the variant that answered: the
    features as the model saw them (``feature:<name>``) and its outputs."""
    set_mode("profiled", "ok")
    source = RequestSource("txn", fields={"x": "float"})
    registry.register("profiled", Switchable("profiled", 2.0), sample=pd.DataFrame({"x": [float(i) for i in range(60)]}))
    project = Project.of(Deployment("scores", model="profiled", features=[source.x]), source)
    since = time.time()
    with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
        for x in (1.0, 2.0, 4.0):
            response = server.post("/v1/deployments/scores/predict", json={"entities": [{"id": 1}], "values": [{"x": x}]})
            assert response.status_code == 200, response.text
    profile = merged_profile(registry.db, "scores", variant="primary", since=since - 60, until=time.time() + 60)
    assert profile.rows == 3
    assert set(profile) == {"feature:x", "output:predict"}
    assert (profile["feature:x"].min, profile["feature:x"].max, profile["feature:x"].total) == (1.0, 4.0, 7.0)
    assert profile["output:predict"].total == 14.0


def test_fields_declared_sensitive_are_not_profiled(home: Path, registry: Registry) -> None:
    """A feature the prediction log must drop or hash (server-wide or in the deployment's
    ``log`` policy) is in no profile, so its values are nowhere in the database; the
    other columns are profiled."""
    settings = Settings(home=home, registry_poll_seconds=0.2, python_modules=("tests",), prediction_log_redact={"x": "hash"})
    set_mode("secretive", "ok")
    source = RequestSource("txn", fields={"x": "float", "y": "float"})
    registry.register("secretive", Switchable("secretive", 2.0), sample=pd.DataFrame({"x": [float(i) for i in range(60)], "y": [1.0] * 60}))
    project = Project.of(
        Deployment("scores", model="secretive", features=[source.x, source.y]),
        Deployment("private", model="secretive", features=[source.x, source.y], log={"redact": {"y": "drop"}}),
        source,
    )
    since = time.time()
    with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
        for name in ("scores", "private"):
            body = {"entities": [{"id": 1}], "values": [{"x": 123456.75, "y": 654321.25}]}
            assert server.post(f"/v1/deployments/{name}/predict", json=body).status_code == 200
    span = {"since": since - 60, "until": time.time() + 60}
    assert set(merged_profile(registry.db, "scores", **span)) == {"feature:y", "output:predict"}
    assert set(merged_profile(registry.db, "private", **span)) == {"output:predict"}
    with registry.db.read() as conn:
        stored = " ".join(str(row) for row in conn.exec_driver_sql("SELECT profile FROM profile_buckets").all())
    assert "123456.75" not in stored


def test_matrix_inputs_and_outputs_are_profiled_column_by_column(settings: Settings, registry: Registry) -> None:
    """A matrix tensor's columns are profiled one by one as ``input:<name>[<j>]``."""
    registry.register("linear", Linear(np.array([1.0, 2.0, 3.0]), 0.5), sample=np.ones((2, 3)))
    since = time.time()
    with start_server(settings, registry) as server:
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
        assert server.post("/v2/models/linear/infer", json=body).status_code == 200
    profile = merged_profile(registry.db, oip_deployment("linear"), since=since - 60, until=time.time() + 60)
    assert [(name, profile[name].min, profile[name].max) for name in profile] == [
        ("input:input-0[0]", 1.0, 4.0), ("input:input-0[1]", 2.0, 5.0), ("input:input-0[2]", 3.0, 6.0),
        ("output:predict", 14.5, 32.5),
    ]


def test_live_profiles_off_profiles_nothing(home: Path, registry: Registry) -> None:
    """``STALWART_LIVE_PROFILES=off``: no tap, no worker, no rows."""
    settings = Settings(home=home, live_profiles="off", registry_poll_seconds=0.2, python_modules=("tests",))
    registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
    with start_server(settings, registry) as server:
        assert server.app.state.live_profiles is None
        assert server.post("/v2/models/mixed/infer", json=_mixed_requests(1, seed=2)[0]).status_code == 200
    with registry.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM profile_buckets").scalar_one() == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_two_server_processes_on_postgresql_merge_to_what_one_process_builds(pg_url: str, home: Path, tmp_path: Path) -> None:
    """The same requests, split over two `stalwart serve` processes sharing PostgreSQL, and
    all sent to one server process, read back as the same profile: counts, extremes, sums and
    frequencies equal; quantiles within the sketch's rank error of the exact values."""
    settings = Settings(home=home, db_url=pg_url, python_modules=("tests",))
    registry = Registry.open(settings)
    try:
        registry.register("mixed", Mixed(), sample=MIXED_SAMPLE)
        registry.register("mixed-solo", Mixed(), sample=MIXED_SAMPLE)
    finally:
        registry.db.dispose()
    env = {
        "STALWART_HOME": str(home), "STALWART_DB_URL": pg_url, "STALWART_PYTHON_MODULES": "tests",
        "STALWART_PREDICTION_LOG": "off",
    }
    a, b = (ServeProcess(env, tmp_path / f"{name}.log") for name in ("a", "b"))
    bodies = _mixed_requests(150, seed=3)
    since = time.time()
    try:
        a.start()
        b.start()
        # The one-process reference: a server in this process, on the same database.
        with start_server(settings.model_copy(update={"prediction_log": "off"})) as solo:
            a.wait_ready(timeout=180)  # the machine may be busy: loading is slow, not wrong
            b.wait_ready(timeout=180)
            for i, body in enumerate(bodies):
                assert (a if i % 2 else b).post("/v2/models/mixed/infer", json=body).status_code == 200
                assert solo.post("/v2/models/mixed-solo/infer", json=body).status_code == 200
    finally:
        a.stop()  # SIGTERM: each writes its open minutes as it shuts down
        b.stop()
    db = Database(pg_url)
    try:
        span = {"since": since - 60, "until": time.time() + 60}
        two = merged_profile(db, oip_deployment("mixed"), **span)
        one = merged_profile(db, oip_deployment("mixed-solo"), **span)
        with db.read() as conn:
            replicas = conn.exec_driver_sql(
                "SELECT deployment, count(DISTINCT replica) FROM profile_buckets GROUP BY deployment ORDER BY deployment"
            ).all()
    finally:
        db.dispose()
    assert [tuple(r) for r in replicas] == [("/v2/mixed", 2), ("/v2/mixed-solo", 1)]
    assert two.rows == one.rows == len(_column(bodies, "age"))
    assert set(two) == set(one)
    for name in two:
        got, want = two[name], one[name]
        assert (got.kind, got.count, got.nulls, got.nan, got.min, got.max) == (want.kind, want.count, want.nulls, want.nan, want.min, want.max), name
        assert got.total == pytest.approx(want.total, rel=1e-12), name
        assert got.frequencies() == want.frequencies(), name
        assert got.distinct() == pytest.approx(want.distinct(), rel=0.05), name
    assert two["input:city"].frequencies() == dict(pd.Series(_column(bodies, "city")).value_counts())
    for profile in (two, one):
        _within_rank_error(profile["input:income"], _column(bodies, "income"))
        _within_rank_error(profile["input:age"], _column(bodies, "age"))
