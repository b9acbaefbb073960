"""/openapi.json documents exactly the routes the server has, and is valid OpenAPI 3.1."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from starlette.routing import Route

import stalwart
from stalwart.serving.app import create_app
from stalwart.serving.openapi import openapi_document
from tests.servers import LiveServer

# Starlette answers HEAD on every GET route by itself; OpenAPI documents do not list it.
_IMPLICIT = {"HEAD"}


def _served_operations(app: object) -> set[tuple[str, str]]:
    operations = set()
    for route in app.routes:  # type: ignore[attr-defined]
        if route.path == "/ui" or route.path.startswith("/ui/"):
            continue  # the web console's HTML pages and assets (docs/console.md): not the API
        assert isinstance(route, Route), f"unexpected route type {type(route).__name__}"
        for method in (route.methods or set()) - _IMPLICIT:
            operations.add((route.path, method.lower()))
    return operations


def _documented_operations(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(path, method) for path, item in paths.items() for method in item if method in {"get", "post", "put", "patch", "delete"}}


@pytest.fixture
def document(served: LiveServer) -> dict[str, object]:
    response = served.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    return body


def test_every_route_is_documented_and_every_documented_route_exists(served: LiveServer, document: dict[str, object]) -> None:
    """The document and the router list the same paths with the same methods."""
    served_ops = _served_operations(served.app)
    documented = _documented_operations(document)
    assert served_ops - documented == set(), "routes missing from /openapi.json"
    assert documented - served_ops == set(), "documented routes the server does not have"
    assert len(served_ops) == 26  # with the routes and rollout endpoints of /v1/deployments/{name}, and /v1/resources


def test_the_document_is_valid_openapi_3_1(document: dict[str, object]) -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)  # raises on any violation


def test_the_served_document_is_the_built_one(document: dict[str, object]) -> None:
    """What /openapi.json serves is the document the code builds, at this release."""
    assert document == openapi_document()
    info = document["info"]
    assert isinstance(info, dict)
    assert info["version"] == stalwart.__version__


def test_path_parameters_are_declared_for_every_template(document: dict[str, object]) -> None:
    """Each {parameter} in a path is declared as a required path parameter of its operations."""
    paths = document["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, method)
            assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path")


def test_an_app_built_from_settings_alone_has_the_same_routes(settings: object) -> None:
    """create_app without a registry builds the same routes (nothing depends on what is registered)."""
    app = create_app(settings)  # type: ignore[arg-type]
    try:
        assert _served_operations(app) == _documented_operations(openapi_document())
    finally:
        app.state.registry.db.dispose()
