"""schemathesis against /openapi.json of a real server: whatever it sends, the server never
answers 5xx, and every response matches the document (status, content type, body)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
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
