"""schemathesis against /openapi.json of a real server: whatever it sends, the server never
answers 5xx, and every response matches the document (status, content type, body)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.openapi import openapi_document
from tests.models import Mixed
from tests.servers import LiveServer, start_server
from tests.serving.test_limits import LIVE_WITHIN, HealthProbe

MODELS = ["breast-cancer", "mixed"]


@schemathesis.check
def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """not_a_server_error, except the documented 503 of a readiness probe ("not ready yet":
    asking about a version that is not loaded starts loading it)."""
    if response.status_code == 503 and case.path.endswith("/ready"):
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, logistic: Any, cancer: dict[str, Any]) -> Iterator[LiveServer]:
    """A server with a scikit-learn classifier (two versions) and a columnar python model
    over mixed datatypes, one of them BYTES."""
    settings = Settings(home=tmp_path_factory.mktemp("fuzz") / "home", registry_poll_seconds=0.5, python_modules=("tests",))
    registry = Registry.open(settings)
    registry.register("breast-cancer", logistic, sample=cancer["x_train"][:5])
    registry.register("breast-cancer", logistic, sample=cancer["x_train"][:5], tags={"note": "again"})
    registry.register("mixed", Mixed(), sample={
        "age": np.array([30, 41], dtype=np.int32),
        "income": np.array([52000.0, 61000.0], dtype=np.float32),
        "city": np.array(["Oslo", "Amsterdam"], dtype=object),
    })
    try:
        with start_server(settings, registry) as server:
            yield server
    finally:
        registry.db.dispose()


# A valid request for the mixed model: the examples phase sends it, so successful inference
# responses are checked against the document too, not only errors.
MIXED_REQUEST = {
    "id": "fuzz",
    "inputs": [
        {"name": "age", "datatype": "INT32", "shape": [2], "data": [30, 41]},
        {"name": "income", "datatype": "FP32", "shape": [2, 1], "data": [[52000.5], [61000]]},
        {"name": "city", "datatype": "BYTES", "shape": [2], "data": ["Oslo", "Zürich"]},
    ],
    "outputs": [{"name": "score"}, {"name": "long_name"}],
}


def _steered(document: dict[str, Any]) -> dict[str, Any]:
    """The served document, with the model and version path parameters steered toward
    names that exist (as well as any string), so requests reach the models, not only 404s,
    and with a valid inference example. Only request generation changes; responses are
    checked against the document as served."""
    steered = copy.deepcopy(document)
    for item in steered["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path":
                    continue
                known = MODELS if parameter["name"] == "model" else ["1", "2"]
                parameter["schema"] = {"anyOf": [{"enum": known}, {"type": "string"}]}
                parameter["example"] = "mixed" if parameter["name"] == "model" else "1"
            if "requestBody" in operation:
                operation["requestBody"]["content"]["application/json"]["example"] = MIXED_REQUEST
    return steered


def _schema() -> Any:
    # Built from the document the code serves (tests/serving/test_openapi.py checks that they
    # are the same), at import: schemathesis.pytest.from_fixture cannot run under pytest 9
    # (it reads Function._nodeid, which pytest 9 removed).
    loaded = schemathesis.openapi.from_dict(_steered(openapi_document()))
    loaded.config.generation.update(max_examples=25, modes=["positive", "negative"], database="none")
    loaded.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    return loaded


schema = _schema()


@schema.parametrize()
def test_no_5xx_and_every_response_matches_the_document(case: schemathesis.Case, fuzz_server: LiveServer) -> None:
    """Valid and invalid requests alike: never a 5xx; status, content type, headers and body
    always as documented."""
    case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS)


def test_every_operation_is_collected_under_its_own_id(request: pytest.FixtureRequest) -> None:
    """Each operation of the document is a test of its own id, so pytest-xdist runs them all
    (with one shared id it ran one of 26; tests/conftest.py gives each its id)."""
    fuzzed = [item.nodeid for item in request.session.items if item.name.startswith("test_no_5xx_and_every_response_matches_the_document[")]
    operations = [result.ok().label for result in schema.get_all_operations()]
    assert len(operations) >= 20
    expected = {f"{__name__.replace('.', '/')}.py::test_no_5xx_and_every_response_matches_the_document[{label}]" for label in operations}
    # -k or --lf may have deselected some: those collected must each have their own id.
    assert len(set(fuzzed)) == len(fuzzed)
    assert set(fuzzed) <= expected


# -- edge values: raw JSON a generator of valid documents never sends ---------------------

# Numbers at the edges of doubles and int64, literals JSON does not have, nulls, unicode,
# and values no shape or key may take.
EDGE_VALUES = [
    "1e308", "-1e308", "1.7976931348623157e308", "5e-324", "-5e-324", "2.2250738585072014e-308",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "1180591620717411303424", "9" * 400, "1e400", "-0.0", "-0", "0",
    "NaN", "Infinity", "-Infinity", "nan", "null", "true", "false", "[]", "{}", "[[]]",
    '"\\u0000"', '"\\ud800"', '"é😀"', '"\\u202e"', '""', '"' + "x" * 300 + '"',
]
edge = st.sampled_from(EDGE_VALUES)
shapes = st.one_of(
    st.lists(edge, min_size=0, max_size=4),
    st.lists(st.sampled_from(["1", "30", "2147483648", "9223372036854775807", "0"]), min_size=30, max_size=80),
).map(lambda dims: "[" + ",".join(dims) + "]")
datatypes = st.sampled_from(['"FP64"', '"INT64"', '"INT32"', '"UINT8"', '"FP16"', '"BOOL"', '"BYTES"', '"é"', "null", "7"])
names = st.sampled_from(['"input-0"', '"age"', '"city"', '"income"', '"é😀"', '"\\u0000"', "null", '""'])


@st.composite
def raw_infer_bodies(draw: st.DrawFn) -> bytes:
    data = "[" + ",".join(draw(st.lists(edge, max_size=8))) + "]"
    if draw(st.booleans()):
        data = "[" + ",".join([data] * draw(st.integers(1, 3))) + "]"
    tensor = f'{{"name": {draw(names)}, "shape": {draw(shapes)}, "datatype": {draw(datatypes)}, "data": {data}}}'
    extras = draw(st.sampled_from(["", ', "id": ' + draw(edge), ', "parameters": {"a": ' + draw(edge) + "}", ', "inputs": []', ', "outputs": [{"name": ' + draw(names) + "}]"]))
    return f'{{"inputs": [{tensor}]{extras}}}'.encode()  # "inputs" may come twice: duplicate keys


@st.composite
def raw_predict_bodies(draw: st.DrawFn) -> bytes:
    key = draw(edge)
    value = draw(edge)
    entity = draw(st.sampled_from([f'{{"card_id": {key}}}', f'{{"card_id": {key}, "card_id": 7}}', key]))
    values = draw(st.sampled_from([f'[{{"amount": {value}, "merchant_category": {draw(edge)}}}]', "null", value]))
    return f'{{"entities": [{entity}], "values": {values}, "return_features": {draw(edge)}}}'.encode()


@pytest.fixture(scope="module")
def probe(fuzz_server: LiveServer) -> Iterator[HealthProbe]:
    with HealthProbe(fuzz_server.url) as running:
        yield running


def _no_5xx_and_live(response: httpx.Response, probe: HealthProbe, body: bytes) -> None:
    assert response.status_code < 500, (body[:300], response.text[:300])
    assert probe.slowest < LIVE_WITHIN, f"/v2/health/live took {probe.slowest * 1000:.1f} ms"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(body=raw_infer_bodies(), model=st.sampled_from(MODELS))
def test_edge_values_on_v2_are_never_a_5xx(fuzz_server: LiveServer, probe: HealthProbe, body: bytes, model: str) -> None:
    """Edge numbers, literals JSON lacks, nulls, unicode, duplicate keys, huge shapes and
    ranks at /v2 infer: never a 5xx, and liveness within LIVE_WITHIN throughout."""
    response = fuzz_server.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"})
    _no_5xx_and_live(response, probe, body)


@pytest.fixture(scope="module")
def fraud_probe(fraud_home: dict[str, Any]) -> Iterator[tuple[LiveServer, HealthProbe]]:
    """The fraud example's server and a probe of its liveness, started once it is up (and
    after the /v2 fuzz server's probe: a server starting in this process holds the GIL)."""
    with start_server(fraud_home["settings"]) as server, HealthProbe(server.url) as running:
        yield server, running


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(body=raw_predict_bodies())
def test_edge_values_on_v1_are_never_a_5xx(fraud_probe: tuple[LiveServer, HealthProbe], body: bytes) -> None:
    """The same at /v1 predict (entity keys and request values at the edges): never a
    5xx, liveness within LIVE_WITHIN."""
    fraud_server, probe = fraud_probe
    response = fraud_server.post("/v1/deployments/fraud/predict", content=body, headers={"content-type": "application/json"})
    _no_5xx_and_live(response, probe, body)
