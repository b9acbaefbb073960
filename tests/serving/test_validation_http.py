"""Validation on both entrypoints, through a real server: 422 bodies listing every
violation, imputed/clipped/flagged values reported, schemas swapped while serving, and
random payloads never answered with a 5xx."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from stalwart.config import Settings
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.validation.schema import infer_schema
from tests.servers import LiveServer, start_server

RNG = np.random.default_rng(4)
FRAME = pd.DataFrame({
    "age": RNG.integers(18, 80, 300).astype(float),
    "income": RNG.lognormal(10, 0.5, 300),
    "plan": RNG.choice(["free", "pro", "team"], 300),
})
TXN = RequestSource("txn", fields={"age": "float", "income": "float"})


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A model on two numeric features whose schema rejects age, clips income; a
    deployment that overrides income to impute."""
    home = tmp_path_factory.mktemp("validation") / "home"
    cfg = Settings(home=home, registry_poll_seconds=0.2)
    registry = Registry.open(cfg)
    x = FRAME[["age", "income"]]
    model = LogisticRegression().fit(x, (FRAME["age"] > 50).astype(int))
    mv = registry.register("shop", model, sample=x)
    schema = infer_schema(x).model_copy(update={"default_policy": "reject"})
    features = dict(schema.features)
    features["income"] = features["income"].model_copy(update={"policy": "clip"})
    registry.schemas.attach("shop", mv.version, schema.model_copy(update={"features": features}), note="strict age")
    project = Project.of(Deployment("shop", model="shop", features=[TXN.age, TXN.income], validation={"features": {"income": "impute"}}), TXN)
    from stalwart.serving.app import create_app

    with start_server(cfg, app=create_app(cfg, registry=registry, project=project)) as server:
        yield server, registry, mv, schema


def _v2(age: list[Any], income: list[Any]) -> dict[str, Any]:
    return {"inputs": [
        {"name": "age", "shape": [len(age)], "datatype": "FP64", "data": age},
        {"name": "income", "shape": [len(income)], "datatype": "FP64", "data": income},
    ]}


def test_v2_rejects_with_every_violation_listed(shop: Any) -> None:
    """A reject-policy violation answers 422 with machine-readable violations."""
    server, *_ = shop
    response = server.post("/v2/models/shop/infer", json=_v2([30.0, 500.0, 900.0], [20000.0, 20000.0, 20000.0]))
    assert response.status_code == 422, response.text
    body = response.json()
    violations = body["violations"]
    assert [(v["row"], v["feature"], v["rule"]) for v in violations] == [(1, "age", "range"), (2, "age", "range")]
    assert violations[0]["value"] == 500.0
    assert "expected" in violations[0]
    assert "age" in body["error"]


def test_v2_clips_and_reports_what_it_changed(shop: Any) -> None:
    """A clip-policy violation is fixed, served, and the response says which value."""
    server = shop[0]
    response = server.post("/v2/models/shop/infer", json=_v2([30.0, 40.0], [20000.0, 1e12]))
    assert response.status_code == 200, response.text
    report = response.json()["parameters"]["stalwart_validation"]
    assert report == {"clipped": {"income": [1]}}


def test_the_access_line_names_the_features_never_the_values(shop: Any) -> None:
    """A request's values stay out of the access log: its line counts the violations and
    names the features, the values (and per-row lists) are in the response and the record."""
    server = shop[0]
    with structlog.testing.capture_logs() as logs:
        response = server.post("/v2/models/shop/infer", json=_v2([30.0, 40.0], [20000.0, 987654321.5]))
    assert response.status_code == 200, response.text
    (line,) = [entry for entry in logs if entry.get("path") == "/v2/models/shop/infer"]
    assert line["validation"] == {"violations": 1, "rejected": 0, "features": ["income"]}
    assert "987654321" not in repr(line)


def test_deployment_overrides_the_schema_policy(shop: Any) -> None:
    """The deployment says impute for income: the same bad value is imputed there."""
    server, *_ = shop
    response = server.post("/v1/deployments/shop/predict", json={"entities": [{"id": 1}], "values": [{"age": 30.0, "income": 1e12}]})
    assert response.status_code == 200, response.text
    assert response.json()["validation"] == {"imputed": {"income": [0]}}
    rejected = server.post("/v1/deployments/shop/predict", json={"entities": [{"id": 1}], "values": [{"age": 900.0, "income": 1.0}]})
    assert rejected.status_code == 422
    assert rejected.json()["violations"][0]["feature"] == "age"


def test_metrics_count_violations_by_feature_rule_and_policy(shop: Any) -> None:
    server, *_ = shop
    server.post("/v2/models/shop/infer", json=_v2([30.0], [1e12]))
    text = server.get("/metrics").text
    assert 'stalwart_validation_violations_total{deployment="model:shop",feature="income",policy="clip",rule="range"}' in text


def test_an_attached_schema_takes_effect_without_a_restart(shop: Any) -> None:
    """Editing the schema (here: widening age) changes what the server accepts within a
    poll interval."""
    server, registry, mv, schema = shop
    assert server.post("/v2/models/shop/infer", json=_v2([500.0], [20000.0])).status_code == 422
    features = dict(schema.features)
    features["age"] = features["age"].model_copy(update={"max": 1000.0})
    registry.schemas.attach("shop", mv.version, schema.model_copy(update={"features": features}), note="older customers")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if server.post("/v2/models/shop/infer", json=_v2([500.0], [20000.0])).status_code == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the attached schema was not picked up")
    registry.schemas.activate("shop", mv.version, 1)


_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    values=st.lists(st.dictionaries(st.sampled_from(["age", "income", "plan", "élan", ""]), _value, max_size=4), min_size=1, max_size=3),
    entities=st.lists(st.one_of(st.dictionaries(st.text(max_size=3), _value, max_size=2), st.integers(), st.none()), min_size=0, max_size=3),
)
def test_random_payloads_never_get_a_5xx(shop: Any, values: list[dict[str, Any]], entities: list[Any]) -> None:
    """Random types, NaN-free garbage, huge numbers, unicode, missing and extra fields:
    always a 2xx or a 4xx with a JSON error, never a 5xx."""
    server: LiveServer = shop[0]
    response = server.post("/v1/deployments/shop/predict", json={"entities": entities, "values": values})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()
    raw = server.post(
        "/v2/models/shop/infer",
        json={"inputs": [{"name": k or "x", "shape": [1], "datatype": "FP64", "data": [v]} for k, v in values[0].items()]},
    )
    assert raw.status_code < 500, raw.text


@pytest.fixture
def gappy(tmp_path: Any) -> Any:
    """The shop model and deployment on a server of their own (no other test swaps its
    schema): age under reject, income under clip, the deployment imputing income."""
    cfg = Settings(home=tmp_path / "home", registry_poll_seconds=0.2)
    registry = Registry.open(cfg)
    x = FRAME[["age", "income"]]
    mv = registry.register("shop", LogisticRegression().fit(x, (FRAME["age"] > 50).astype(int)), sample=x)
    schema = infer_schema(x).model_copy(update={"default_policy": "reject"})
    features = dict(schema.features)
    features["income"] = features["income"].model_copy(update={"policy": "clip"})
    registry.schemas.attach("shop", mv.version, schema.model_copy(update={"features": features}), note="strict age")
    project = Project.of(Deployment("shop", model="shop", features=[TXN.age, TXN.income], validation={"features": {"income": "impute"}}), TXN)
    from stalwart.serving.app import create_app

    with start_server(cfg, app=create_app(cfg, registry=registry, project=project)) as server:
        yield server
    registry.db.dispose()


def test_v2_missing_inputs_and_nulls_follow_the_features_policy(gappy: LiveServer) -> None:
    """A null (or a whole missing input) is the schema's to judge, as any other value: the
    reject policy on age answers 422 naming it, income's policy fixes it and says so."""
    server = gappy
    nulls = server.post("/v2/models/shop/infer", json=_v2([30.0, 40.0], [20000.0, None]))
    assert nulls.status_code == 200, nulls.text
    assert nulls.json()["parameters"]["stalwart_validation"] == {"imputed": {"income": [1]}}
    missing = server.post("/v2/models/shop/infer", json={"inputs": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [30.0, 40.0]}]})
    assert missing.status_code == 200, missing.text
    assert missing.json()["parameters"]["stalwart_validation"] == {"imputed": {"income": [0, 1]}}
    rejected = server.post("/v2/models/shop/infer", json=_v2([30.0, None], [20000.0, 20000.0]))
    assert rejected.status_code == 422, rejected.text
    assert [(v["row"], v["feature"]) for v in rejected.json()["violations"]] == [(1, "age")]


def test_v1_missing_and_null_request_values_follow_the_features_policy(gappy: LiveServer) -> None:
    """On a deployment too: a missing or null request value goes to validation (income is
    imputed under the deployment's override), not a 400 before it."""
    server = gappy
    response = server.post("/v1/deployments/shop/predict", json={"entities": [{"id": 1}, {"id": 2}], "values": [{"age": 30.0}, {"age": 40.0, "income": None}]})
    assert response.status_code == 200, response.text
    assert response.json()["validation"] == {"imputed": {"income": [0, 1]}}
    rejected = server.post("/v1/deployments/shop/predict", json={"entities": [{"id": 1}], "values": [{"income": 20000.0}]})
    assert rejected.status_code == 422, rejected.text
    assert rejected.json()["violations"][0]["feature"] == "age"


def test_without_a_schema_nulls_are_refused_before_the_model(served: LiveServer) -> None:
    """A model with no input schema has nothing to decide what a null means: 400 naming the
    field, never a NaN handed to the model."""
    row: list[Any] = [1.0] * 30
    row[3] = None
    response = served.post("/v2/models/breast-cancer/infer", json={"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": row}]})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "inputs[0].data"
