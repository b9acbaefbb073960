"""Stalwart's errors as gRPC statuses: the REST table read through HTTP's mapping, with
REST's message and extras in the trailing metadata."""

from __future__ import annotations

import json

import grpc
import pytest

from stalwart import errors as e
from stalwart.serving.grpc.status import grpc_error


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (e.RequestError("inputs[0].shape: no", field="inputs[0].shape"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (e.ValidationFailed("age out of range", [{"row": 1, "feature": "age", "rule": "range"}]), grpc.StatusCode.INVALID_ARGUMENT, 422),
        (e.ModelNotFound("model 'x' is not registered"), grpc.StatusCode.NOT_FOUND, 404),
        (e.PayloadTooLarge(100), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (e.Overloaded("over capacity", retry_after=2.2), grpc.StatusCode.UNAVAILABLE, 503),
        (e.NotReady("loading"), grpc.StatusCode.UNAVAILABLE, 503),
        (e.CallTimeout("past the deadline"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (e.ModelError("model m:1 raised ValueError", detail="secret"), grpc.StatusCode.INTERNAL, 500),
        (e.StorageError("postgresql://user@db:5432/registry is down"), grpc.StatusCode.UNAVAILABLE, 503),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_each_error_has_the_status_its_rest_twin_implies(error: BaseException, code: grpc.StatusCode, http: int) -> None:
    """Every class of the REST table maps to the gRPC code of its HTTP status."""
    mapped = grpc_error(error, "req-1")
    assert (mapped.code, mapped.http_status) == (code, http)


def test_the_details_and_metadata_say_what_rest_says() -> None:
    """The field, the violations and retry timing travel in the trailing metadata; a
    model's own message and a database's address never reach the client."""
    field = dict(grpc_error(e.RequestError("inputs[0].shape: no", field="inputs[0].shape"), "r").trailing)
    assert field == {"stalwart-field": "inputs[0].shape"}
    violations = dict(grpc_error(e.ValidationFailed("rejected", [{"row": 1, "feature": "age"}]), "r").trailing)
    assert json.loads(violations["stalwart-violations-bin"]) == [{"row": 1, "feature": "age"}]
    retry = dict(grpc_error(e.Overloaded("over capacity", retry_after=2.2), "r").trailing)
    assert retry == {"retry-after": "3", "grpc-retry-pushback-ms": "3000"}
    model = grpc_error(e.ModelError("model m:1 raised ValueError", detail="secret=/etc/shadow"), "req-9")
    assert "secret" not in model.details
    assert "server log under request req-9" in model.details
    storage = grpc_error(e.StorageError("postgresql://user@db:5432/registry is down"), "req-9")
    assert "postgresql" not in storage.details
    assert grpc_error(RuntimeError("a bug"), "req-9").details == "internal error; find request req-9 in the server log"
