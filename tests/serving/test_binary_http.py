"""Triton's HTTP client, with its defaults (binary tensor data), against a real server:
every endpoint, every datatype, mixed JSON and binary inputs, and each client mistake."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.validation.schema import infer_schema
from tests.models import ALL_DATATYPES, Echo
from tests.servers import LiveServer, start_server
from tests.serving.test_binary import binary_bodies


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, boosted: Any, cancer: dict[str, Any]) -> Iterator[LiveServer]:
    """An echo model over every datatype and a scikit-learn classifier of 30 FP64 columns,
    without and with an input schema."""
    home: Path = tmp_path_factory.mktemp("binary") / "home"
    config = Settings(home=home, registry_poll_seconds=0.5, python_modules=("tests",), max_body_bytes=64 * 1024)
    registry = Registry.open(config)
    registry.register("echo", Echo(), sample=ALL_DATATYPES)
    registry.register("breast-cancer", boosted, sample=cancer["x_train"][:20])
    # An input schema whose policy imputes missing values.
    frame = cancer["frame_train"][["mean radius", "mean texture"]].iloc[:100]
    validated = registry.register("validated", LogisticRegression().fit(frame, cancer["y_train"][:100]), sample=frame)
    schema = infer_schema(frame).model_copy(update={"default_policy": "impute"})
    registry.schemas.attach("validated", validated.version, schema, note="impute")
    try:
        with start_server(config, registry) as running:
            yield running
    finally:
        registry.db.dispose()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as running:
        yield running


def _input(name: str, values: np.ndarray[Any, Any], *, binary: bool = True, datatype: str | None = None) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), datatype or name)
    # Triton's client takes BYTES as bytes objects (str with binary_data=False).
    sent = np.array([v.encode() for v in values.ravel()], dtype=object).reshape(values.shape) if values.dtype == object and binary else values
    tensor.set_data_from_numpy(sent, binary_data=binary)
    return tensor


def _as_sent(name: str, got: np.ndarray[Any, Any]) -> list[Any]:
    if name == "BYTES":
        return [v.decode() if isinstance(v, bytes) else v for v in got.ravel().tolist()]
    return got.tolist()


def test_every_endpoint_answers_tritons_client(client: triton.InferenceServerClient) -> None:
    """Liveness, readiness, server and model metadata as Triton's client reads them; the
    server lists the binary tensor data extension."""
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("breast-cancer")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("breast-cancer")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert client.get_model_metadata("breast-cancer", model_version="1")["versions"] == ["1"]


def test_every_datatype_round_trips_with_the_clients_defaults(client: triton.InferenceServerClient) -> None:
    """All 13 datatypes, range edges and non-ASCII text, sent and answered as binary data
    (the client's default): the echo model gives back exactly what was sent."""
    result = client.infer("echo", [_input(name, values) for name, values in ALL_DATATYPES.items()], request_id="every")
    response = result.get_response()
    assert (response["id"], response["model_version"]) == ("every", "1")
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    for name, sent in ALL_DATATYPES.items():
        got = result.as_numpy(name)
        assert got is not None, name
        assert got.shape == sent.shape, name
        assert _as_sent(name, got) == sent.tolist(), name


def test_json_and_binary_inputs_mix_and_outputs_choose_their_form(client: triton.InferenceServerClient) -> None:
    """Some inputs as JSON, others binary, in one request; each output answered as JSON or
    binary as it asks."""
    names = list(ALL_DATATYPES)
    inputs = [
        _input(name, ALL_DATATYPES[name], binary=index % 2 == 0 or name == "FP16")
        for index, name in enumerate(names)
    ]
    outputs = [triton.InferRequestedOutput(name, binary_data=index % 3 == 0) for index, name in enumerate(names)]
    result = client.infer("echo", inputs, outputs=outputs)
    response = {o["name"]: o for o in result.get_response()["outputs"]}
    for index, name in enumerate(names):
        assert ("data" in response[name]) == (index % 3 != 0), name
        assert _as_sent(name, result.as_numpy(name)) == ALL_DATATYPES[name].tolist(), name


def test_a_classifier_answers_binary_rows_as_it_answers_json(client: triton.InferenceServerClient, server: LiveServer, cancer: dict[str, Any], boosted: Any) -> None:
    """Binary FP64 rows give the model's own numbers, and the same answer as JSON."""
    x = np.ascontiguousarray(cancer["x_test"][:7])
    result = client.infer("breast-cancer", [_input("input-0", x, datatype="FP64")])
    assert result.as_numpy("predict").tolist() == boosted.predict(x).tolist()
    np.testing.assert_allclose(result.as_numpy("predict_proba"), boosted.predict_proba(x))
    as_json = server.post("/v2/models/breast-cancer/infer", json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [7, 30], "data": x.ravel().tolist()}]})
    proba = next(o for o in as_json.json()["outputs"] if o["name"] == "predict_proba")
    assert proba["data"] == result.as_numpy("predict_proba").ravel().tolist()


def test_the_response_carries_the_extensions_headers(server: LiveServer) -> None:
    """On the wire: Inference-Header-Content-Length and application/octet-stream, the JSON
    then each binary output in order."""
    x = np.arange(30, dtype="<f8").reshape(1, 30)
    head = json.dumps({
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "parameters": {"binary_data_size": 240}}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}],
    }).encode()
    response = server.post(
        "/v2/models/breast-cancer/infer", content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:length])
    assert document["outputs"] == [{"name": "predict_proba", "datatype": "FP64", "shape": [1, 2], "parameters": {"binary_data_size": 16}}]
    assert len(response.content) == length + 16
    assert sum(struct.unpack("<2d", response.content[length:])) == pytest.approx(1.0)


def _refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_client_mistakes_are_4xx_naming_the_field(client: triton.InferenceServerClient) -> None:
    """Wrong shape, datatype, input name or output name, and an unknown model: Triton's
    client raises with the status and the server's message, which names the field."""
    row = np.zeros((1, 30))
    cases = [
        (lambda: client.infer("breast-cancer", [_input("input-0", np.zeros((1, 29)), datatype="FP64")]), "400", "inputs[0].shape"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row.astype(np.float32), datatype="FP32")]), "400", "inputs[0].datatype"),
        (lambda: client.infer("breast-cancer", [_input("x", row, datatype="FP64")]), "400", "inputs[0].name"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row, datatype="FP64")], outputs=[triton.InferRequestedOutput("nope")]), "400", "outputs[0].name"),
        (lambda: client.infer("nope", [_input("input-0", row, datatype="FP64")]), "404", "model 'nope' is not registered"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row, datatype="FP64")], model_version="9"), "404", "has no version 9"),
    ]
    for call, status, text in cases:
        error = _refused(call)
        assert error.status() == status, (text, error)
        assert text in error.message(), (text, error.message())


def test_a_size_that_does_not_match_the_shape_is_a_400_naming_the_input(server: LiveServer) -> None:
    """binary_data_size disagreeing with shape x datatype, or with the bytes sent: 400
    naming the input, before any array is made."""
    def post(size: int, data: bytes) -> httpx.Response:
        head = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "parameters": {"binary_data_size": size}}]}).encode()
        return server.post("/v2/models/breast-cancer/infer", content=head + data, headers={"Inference-Header-Content-Length": str(len(head))})

    short = post(232, b"\x00" * 232)
    assert short.status_code == 400
    assert short.json()["field"] == "inputs[0].parameters.binary_data_size"
    assert "input 'input-0', FP64 of shape [1, 30], takes 240 bytes (30 x 8), got 232" in short.json()["error"]
    missing = post(240, b"\x00" * 100)
    assert missing.status_code == 400
    assert "only 100 bytes of binary data follow" in missing.json()["error"]
    bad_header = server.post("/v2/models/breast-cancer/infer", content=b"{}", headers={"Inference-Header-Content-Length": "ten"})
    assert (bad_header.status_code, bad_header.json()["field"]) == (400, "Inference-Header-Content-Length")


def test_a_body_over_the_size_limit_is_a_413(client: triton.InferenceServerClient) -> None:
    """The body limit (64 KiB here) holds for binary bodies too."""
    big = np.zeros((300, 30))  # 72,000 bytes of data
    error = _refused(lambda: client.infer("breast-cancer", [_input("input-0", big, datatype="FP64")]))
    assert error.status() == "413"
    assert "over the limit of 65536 bytes" in error.message()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(case=binary_bodies(), model=st.sampled_from(["echo", "breast-cancer"]))
def test_fuzzed_binary_bodies_are_never_a_5xx(server: LiveServer, case: tuple[bytes, int], model: str) -> None:
    """Random JSON headers, sizes, shapes, datatypes and bytes, with any
    Inference-Header-Content-Length, against the real server: a 4xx naming the field (or an
    answer), never a 5xx."""
    body, length = case
    response = server.post(f"/v2/models/{model}/infer", content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code < 500, (body[:200], response.text[:300])
    if response.status_code == 400:
        assert response.json()["field"]


def _nan_requests(inputs: list[tuple[str, list[float | None]]]) -> tuple[dict[str, Any], bytes, int]:
    """The same inputs as JSON (None: null) and in binary (None: NaN)."""
    as_json = {"inputs": [{"name": n, "datatype": "FP64", "shape": [len(v)], "data": v} for n, v in inputs]}
    head = json.dumps({"inputs": [
        {"name": n, "datatype": "FP64", "shape": [len(v)], "parameters": {"binary_data_size": 8 * len(v)}} for n, v in inputs
    ]}).encode()
    data = b"".join(np.array([np.nan if x is None else x for x in v], dtype="<f8").tobytes() for _, v in inputs)
    return as_json, head + data, len(head)


def test_nan_in_binary_data_is_what_null_is_in_json(server: LiveServer, cancer: dict[str, Any]) -> None:
    """A missing value: NaN in binary data, null in JSON. Without an input schema both are
    refused (400 naming the data); with one, its policy decides (here: impute), alike."""
    row: list[float | None] = [float(v) for v in cancer["x_test"][0]]
    row[3] = None
    cases = [
        ("breast-cancer", [("input-0", row)]),
        ("validated", [("mean radius", [14.0, None]), ("mean texture", [20.0, 21.0])]),
    ]
    for model, inputs in cases:
        as_json, body, length = _nan_requests(inputs)
        if model == "breast-cancer":  # one row of 30 columns, not 30 rows
            as_json["inputs"][0]["shape"] = [1, 30]
            body = body.replace(b'"shape": [30]', b'"shape": [1, 30]', 1)
            length = body.index(b"}]}") + 3
        by_json = server.post(f"/v2/models/{model}/infer", json=as_json)
        binary = server.post(f"/v2/models/{model}/infer", content=body, headers={"Inference-Header-Content-Length": str(length)})
        assert binary.status_code == by_json.status_code, (model, binary.text, by_json.text)
        if model == "breast-cancer":
            assert binary.status_code == 400
            assert binary.json()["field"] == by_json.json()["field"] == "inputs[0].data"
        else:
            assert binary.status_code == 200, binary.text
            assert binary.json() == by_json.json()
            assert binary.json()["parameters"]["stalwart_validation"] == {"imputed": {"mean radius": [1]}}
