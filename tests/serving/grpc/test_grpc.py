"""The OIP gRPC service against a real server (the HTTP server's process and loop), driven
by Triton's gRPC client and by a bare grpc channel for what that client hides (typed
contents, trailing metadata, malformed messages)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from stalwart.serving.grpc import messages as m
from stalwart.serving.grpc.tensors import CONTENTS
from stalwart.serving.server import build_server
from stalwart.validation.schema import infer_schema
from tests import models
from tests.models import ALL_DATATYPES, Blocking, Echo
from tests.servers import LiveServer, free_port, start_server
from tests.serving.conftest import metric, poll

INFER = f"/{m.SERVICE}/ModelInfer"
RNG = np.random.default_rng(5)
SHOP = pd.DataFrame({"age": RNG.integers(18, 80, 200).astype(float), "income": RNG.lognormal(10, 0.5, 200)})
BLOCKING_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, boosted: Any, cancer: dict[str, Any]) -> Iterator[LiveServer]:
    """gRPC on a free port beside REST: echo models over every datatype (and every one with
    a typed contents field: all but FP16), a classifier
    of 30 FP64 columns, a model whose schema rejects ages out of range and clips incomes,
    and a model that waits to be released (limited to one call in flight)."""
    home: Path = tmp_path_factory.mktemp("grpc") / "home"
    settings = Settings(
        home=home, registry_poll_seconds=0.5, python_modules=("tests",), grpc_port=0,
        prediction_log_mode="sync", model_limits={"held": {"max_calls": 1}},
    )
    registry = Registry.open(settings)
    registry.register("echo", Echo(), sample=ALL_DATATYPES)
    registry.register("echo-typed", Echo(), sample={k: v for k, v in ALL_DATATYPES.items() if k != "FP16"})
    registry.register("breast-cancer", boosted, sample=cancer["x_train"][:20])
    shop = registry.register("shop", LogisticRegression().fit(SHOP, SHOP["age"] > 50), sample=SHOP)
    schema = infer_schema(SHOP).model_copy(update={"default_policy": "reject"})
    features = {**schema.features, "income": schema.features["income"].model_copy(update={"policy": "clip"})}
    registry.schemas.attach("shop", shop.version, schema.model_copy(update={"features": features}), note="strict age")
    for name in ("held", "slow"):
        registry.register(name, Blocking(), signature=BLOCKING_SIGNATURE)
    try:
        with start_server(settings, registry) as running:
            yield running
    finally:
        models.RELEASE.set()
        registry.db.dispose()


@pytest.fixture(scope="module")
def target(server: LiveServer) -> str:
    return f"127.0.0.1:{server.app.state.grpc.port}"


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(target) as running:
        yield running


@pytest.fixture(scope="module")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as running:
        yield running


def _infer(channel: grpc.Channel, request: m.ModelInferRequest | bytes, **kwargs: Any) -> tuple[m.ModelInferResponse, dict[str, Any]]:
    """ModelInfer on a bare channel: the response and the trailing metadata."""
    call = channel.unary_unary(INFER, request_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(), response_deserializer=m.ModelInferResponse.FromString)
    response, state = call.with_call(request, **kwargs)
    return response, dict(state.trailing_metadata())


def _refused(channel: grpc.Channel, request: m.ModelInferRequest | bytes, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _infer(channel, request, **kwargs)
    return caught.value


def _trailing(error: grpc.RpcError) -> dict[str, Any]:
    return dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]


def _input(name: str, values: np.ndarray[Any, Any], datatype: str | None = None) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), datatype or name)
    sent = np.array([v.encode() for v in values.ravel()], dtype=object).reshape(values.shape) if values.dtype == object else values
    tensor.set_data_from_numpy(sent)
    return tensor


def _typed(name: str, datatype: str, shape: list[int], values: list[Any]) -> m.ModelInferRequest.InferInputTensor:
    tensor = m.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, CONTENTS[datatype]).extend(values)
    return tensor


def _raw_row(model: str, row: np.ndarray[Any, Any], name: str = "input-0", datatype: str = "FP64", shape: list[int] | None = None) -> m.ModelInferRequest:
    request = m.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape or list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    return request


# --- every RPC ------------------------------------------------------------------------------


def test_every_rpc_answers_tritons_grpc_client(client: triton.InferenceServerClient) -> None:
    """ServerLive, ServerReady, ServerMetadata, ModelMetadata and ModelReady as Triton's
    gRPC client reads them, with the REST endpoints' answers."""
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "stalwart"
    assert "binary_tensor_data" in metadata.extensions
    model = client.get_model_metadata("breast-cancer")
    assert (model.name, list(model.versions), model.platform) == ("breast-cancer", ["1"], "sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input-0", "FP64", [-1, 30])]
    assert {t.name for t in model.outputs} == {"predict", "predict_proba"}
    assert client.is_model_ready("breast-cancer")
    assert client.is_model_ready("breast-cancer", model_version="1")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "model 'nope' is not registered" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("breast-cancer")  # Triton's own RPC, not the protocol's
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_server_ready_says_no_while_draining(server: LiveServer, client: triton.InferenceServerClient) -> None:
    """Draining (after SIGTERM, for STALWART_DRAIN_SECONDS), ServerReady answers false, as
    /v2/health/ready answers 503: a gRPC health check takes the replica out of rotation too."""
    drain = server.app.state.drain
    drain.begin()  # what the server does on SIGTERM
    try:
        assert not client.is_server_ready()
        assert server.get("/v2/health/ready").status_code == 503
        assert client.is_server_live()
    finally:
        drain.since = None  # a drain has no end; this module's server serves on
    assert client.is_server_ready()


def test_every_datatype_round_trips_as_raw_contents(client: triton.InferenceServerClient) -> None:
    """All 13 datatypes (range edges, non-ASCII text) through Triton's client, which sends
    raw_input_contents and reads raw_output_contents; the request id is echoed."""
    result = client.infer("echo", [_input(name, values) for name, values in ALL_DATATYPES.items()], request_id="every")
    response = result.get_response()
    assert response.id == "every"
    assert len(response.raw_output_contents) == len(ALL_DATATYPES)
    for name, sent in ALL_DATATYPES.items():
        got = result.as_numpy(name)
        assert got is not None, name
        values = [v.decode() for v in got.tolist()] if name == "BYTES" else got.tolist()
        assert values == sent.tolist(), name


def test_typed_contents_are_answered_in_typed_contents(channel: grpc.Channel) -> None:
    """Every datatype with a typed field, sent as typed contents: answered in the same
    fields; FP16, which has none, must come raw."""
    request = m.ModelInferRequest(model_name="echo-typed", id="typed")
    for name, values in ALL_DATATYPES.items():
        if name == "FP16":
            continue
        sent = [v.encode() for v in values.tolist()] if name == "BYTES" else values.tolist()
        request.inputs.append(_typed(name, name, [2], sent))
    response, _ = _infer(channel, request)
    assert not response.raw_output_contents
    for output in response.outputs:
        got = list(getattr(output.contents, CONTENTS[output.datatype]))
        expected = ALL_DATATYPES[output.name]
        if output.name == "BYTES":
            got = [v.decode() for v in got]
        np.testing.assert_array_equal(np.array(got, dtype=expected.dtype), expected, err_msg=output.name)
    fp16 = m.ModelInferRequest(model_name="echo")
    fp16.inputs.add(name="FP16", datatype="FP16", shape=[2])
    error = _refused(channel, fp16)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field; send it in raw_input_contents" in error.details()


def test_a_classifier_answers_as_it_does_in_process(client: triton.InferenceServerClient, boosted: Any, cancer: dict[str, Any]) -> None:
    """Raw FP64 rows give the model's own numbers."""
    x = np.ascontiguousarray(cancer["x_test"][:9])
    result = client.infer("breast-cancer", [_input("input-0", x, "FP64")], outputs=[triton.InferRequestedOutput("predict_proba")])
    assert [o.name for o in result.get_response().outputs] == ["predict_proba"]
    np.testing.assert_allclose(result.as_numpy("predict_proba"), boosted.predict_proba(x))


# --- client mistakes ------------------------------------------------------------------------


def test_client_mistakes_are_invalid_argument_naming_the_field(client: triton.InferenceServerClient, channel: grpc.Channel) -> None:
    """Wrong shape, datatype, input or output name: INVALID_ARGUMENT with REST's message;
    unknown model or version: NOT_FOUND. The field is in the trailing metadata."""
    row = np.zeros((1, 30))
    cases = [
        (lambda: client.infer("breast-cancer", [_input("input-0", np.zeros((1, 29)), "FP64")]), "INVALID_ARGUMENT", "inputs[0].shape"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row.astype(np.float32), "FP32")]), "INVALID_ARGUMENT", "inputs[0].datatype"),
        (lambda: client.infer("breast-cancer", [_input("x", row, "FP64")]), "INVALID_ARGUMENT", "inputs[0].name"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row, "FP64")], outputs=[triton.InferRequestedOutput("nope")]), "INVALID_ARGUMENT", "outputs[0].name"),
        (lambda: client.infer("nope", [_input("input-0", row, "FP64")]), "NOT_FOUND", "model 'nope' is not registered"),
        (lambda: client.infer("breast-cancer", [_input("input-0", row, "FP64")], model_version="9"), "NOT_FOUND", "has no version 9"),
    ]
    for call, code, text in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == f"StatusCode.{code}", (text, caught.value)
        assert text in caught.value.message(), (text, caught.value.message())
    error = _refused(channel, _raw_row("breast-cancer", np.zeros((1, 29)), shape=[1, 30]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0]: input 'input-0', FP64 of shape [1, 30], takes 240 bytes (30 x 8), got 232" in error.details()
    assert _trailing(error)["stalwart-field"] == "raw_input_contents[0]"


@pytest.mark.parametrize(
    ("build", "field", "message"),
    [
        (lambda r: r.inputs.append(_typed("input-0", "FP64", [1, 30], [1.0] * 29)), "inputs[0].contents.fp64_contents", "has 29 values but shape [1, 30] needs 30"),
        (lambda r: r.inputs.append(_typed("input-0", "INT64", [1, 30], [1] * 30)), "inputs[0].datatype", "takes FP64, got INT64"),
        (lambda r: (r.inputs.append(_typed("input-0", "FP64", [1, 30], [1.0] * 30)), r.inputs[0].contents.int_contents.append(1)), "inputs[0].contents.int_contents", "whose values go in fp64_contents"),
        (lambda r: (r.inputs.append(_typed("input-0", "FP64", [1, 30], [1.0] * 30)), r.raw_input_contents.append(b"")), "inputs[0].contents", "no input may have typed contents"),
        (lambda r: (r.inputs.add(name="input-0", datatype="FP64", shape=[1, 30]), r.inputs.add(name="b", datatype="FP64", shape=[1]), r.raw_input_contents.append(b"\x00" * 240)), "raw_input_contents", "1 entries for 2 inputs"),
        (lambda r: r.inputs.append(_typed("input-0", "FP64", [1, 30], [float("inf")] + [1.0] * 29)), "inputs[0].contents.fp64_contents", "a value is infinite"),
        (lambda r: r.inputs.append(_typed("input-0", "FP64", [-1, 30], [1.0] * 30)), "inputs[0].shape", "dimension -1 is not between"),
        (lambda r: r.inputs.add(name="input-0", datatype="WAT", shape=[1]), "inputs[0].datatype", "unknown datatype 'WAT'"),
        (lambda r: setattr(r, "id", "x" * 300), "id", "at most 256 characters"),
    ],
)
def test_malformed_tensors_are_invalid_argument(channel: grpc.Channel, build: Any, field: str, message: str) -> None:
    """Counts that disagree with the shape, contents in the wrong field, raw and typed
    mixed, non-finite values, bad shapes and datatypes: INVALID_ARGUMENT naming the field."""
    request = m.ModelInferRequest(model_name="breast-cancer")
    build(request)
    error = _refused(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()
    assert _trailing(error)["stalwart-field"] == field


def test_typed_small_integers_must_fit_their_datatype(channel: grpc.Channel) -> None:
    """INT8 travels in 32-bit int_contents: a value beyond -128..127 is refused."""
    request = m.ModelInferRequest(model_name="echo-typed")
    for name, values in ALL_DATATYPES.items():
        if name not in ("FP16", "INT8"):
            sent = [v.encode() for v in values.tolist()] if name == "BYTES" else values.tolist()
            request.inputs.append(_typed(name, name, [2], sent))
    request.inputs.append(_typed("INT8", "INT8", [2], [1, 300]))
    error = _refused(channel, request)
    assert "out of range for INT8 (-128 to 127)" in error.details()


def test_a_malformed_message_is_invalid_argument(channel: grpc.Channel) -> None:
    """Bytes that are not a ModelInferRequest: the client's mistake, not an internal error."""
    error = _refused(channel, b"\xff\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: not a ModelInferRequest message" in error.details()


# --- the same data plane --------------------------------------------------------------------


def test_validation_rejects_and_clips_as_over_rest(channel: grpc.Channel) -> None:
    """The model's schema applies: a rejected age is INVALID_ARGUMENT with every violation
    in the trailing metadata; a clipped income is served and reported in the response."""
    def request(age: list[float], income: list[float]) -> m.ModelInferRequest:
        message = m.ModelInferRequest(model_name="shop")
        message.inputs.append(_typed("age", "FP64", [len(age)], age))
        message.inputs.append(_typed("income", "FP64", [len(income)], income))
        return message

    error = _refused(channel, request([30.0, 500.0], [20000.0, 20000.0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = json.loads(_trailing(error)["stalwart-violations-bin"])
    assert [(v["row"], v["feature"], v["rule"]) for v in violations] == [(1, "age", "range")]
    response, _ = _infer(channel, request([30.0, 40.0], [20000.0, 1e12]))
    assert json.loads(response.parameters["stalwart_validation"].string_param) == {"clipped": {"income": [1]}}


def test_requests_are_logged_counted_and_batched(server: LiveServer, channel: grpc.Channel) -> None:
    """A ModelInfer leaves a prediction record under the client's x-request-id (and a
    refused one too), is counted in stalwart_requests under its RPC, and goes through
    the model's batcher; its id and traceparent come back in the trailing metadata."""
    before = server.get("/metrics").text
    row = np.asarray([[float(i) for i in range(30)]])
    response, trailing = _infer(channel, _raw_row("breast-cancer", row), metadata=(("x-request-id", "grpc-logged-1"),))
    assert trailing["x-request-id"] == "grpc-logged-1"
    assert trailing["traceparent"].startswith("00-")
    assert len(response.raw_output_contents) == 2
    refused = _refused(channel, _raw_row("breast-cancer", row[:, :29], shape=[1, 29]), metadata=(("x-request-id", "grpc-logged-2"),))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    admin = {"Authorization": f"Bearer {server.app.state.settings.resolved_admin_token()}"}

    def stored(request_id: str) -> dict[str, Any] | None:
        # On disk before the answer (sync mode); in the database a moment later.
        response = server.get(f"/v1/predictions/{request_id}", headers=admin)
        return response.json() if response.status_code == 200 else None

    record = poll(lambda: stored("grpc-logged-1"), timeout=10)
    assert record is not None
    assert (record["status"], record["model"], record["version"], record["rows"]) == (200, "breast-cancer", 1, 1)
    assert record["inputs"]["input-0"] == [row[0].tolist()]
    failed = poll(lambda: stored("grpc-logged-2"), timeout=10)
    assert failed is not None
    assert failed["status"] == 400
    after = server.get("/metrics").text
    for status in ("200", "400"):
        labels = {"model": "breast-cancer", "version": "1", "endpoint": INFER, "status": status}
        assert metric(after, "stalwart_requests_total", **labels) == metric(before, "stalwart_requests_total", **labels) + 1
    batched = {"model": "breast-cancer", "version": "1"}
    assert metric(after, "stalwart_batch_requests_count", **batched) > metric(before, "stalwart_batch_requests_count", **batched)


def test_the_clients_deadline_is_the_requests_deadline(server: LiveServer, client: triton.InferenceServerClient) -> None:
    """A call whose model never answers: the client's 0.5 s deadline reaches the data
    plane, which gives up on it just before (counted as REST's 504, not as a cancelled
    499), and the client hears DEADLINE_EXCEEDED by its deadline."""
    models.RELEASE.clear()
    try:
        start = time.monotonic()
        with pytest.raises(InferenceServerException) as caught:
            client.infer("slow", [_input("x", np.ones((1, 2)), "FP64")], client_timeout=0.5)
        elapsed = time.monotonic() - start
    finally:
        models.RELEASE.set()
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert elapsed < 1.5

    def timed_out() -> float:
        return metric(server.get("/metrics").text, "stalwart_requests_total", model="slow", version="1", endpoint=INFER, status="504")

    deadline = time.monotonic() + 5
    while timed_out() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert timed_out() == 1


def test_overload_is_unavailable_with_retry_info(channel: grpc.Channel) -> None:
    """A version over its calls in flight (max_calls 1): UNAVAILABLE at once, with
    retry-after and grpc-retry-pushback-ms (gRPC's own retry policy reads it)."""
    request = m.ModelInferRequest(model_name="held")
    request.inputs.append(_typed("x", "FP64", [1, 2], [1.0, 2.0]))
    models.RELEASE.clear()
    with ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(_infer, channel, request, timeout=20)
            time.sleep(0.3)  # the first call is in the model
            start = time.monotonic()
            error = _refused(channel, request, timeout=20)
            assert time.monotonic() - start < 1.0
        finally:
            models.RELEASE.set()
        first.result()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    trailing = _trailing(error)
    assert int(trailing["retry-after"]) >= 1
    assert trailing["grpc-retry-pushback-ms"] == str(int(trailing["retry-after"]) * 1000)


# --- limits and lifecycle -------------------------------------------------------------------


def test_limits_hold_over_grpc(tmp_path: Path) -> None:
    """A message over STALWART_MAX_BODY_BYTES is RESOURCE_EXHAUSTED; RPCs in flight beyond
    STALWART_MAX_CONNECTIONS are RESOURCE_EXHAUSTED at once."""
    settings = Settings(home=tmp_path / "home", python_modules=("tests",), grpc_port=0, max_body_bytes=64 * 1024, max_connections=2)
    registry = Registry.open(settings)
    registry.register("held", Blocking(), signature=BLOCKING_SIGNATURE)
    models.RELEASE.clear()
    try:
        with start_server(settings, registry) as server, grpc.insecure_channel(f"127.0.0.1:{server.app.state.grpc.port}") as channel:
            big = _raw_row("held", np.zeros((5000, 2)), name="x")  # 80,000 bytes
            error = _refused(channel, big)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in error.details()
            small = m.ModelInferRequest(model_name="held")
            small.inputs.append(_typed("x", "FP64", [1, 2], [1.0, 2.0]))
            with ThreadPoolExecutor(2) as pool:
                held = [pool.submit(_infer, channel, small, timeout=20) for _ in range(2)]
                time.sleep(0.3)
                extra = _refused(channel, small, timeout=20)
                models.RELEASE.set()
                for call in held:
                    call.result()
            assert extra.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        models.RELEASE.set()
        registry.db.dispose()


def test_no_grpc_port_no_grpc_server(settings: Settings) -> None:
    """gRPC is off by default: nothing listens, and grpc is not even imported for it."""
    app = create_app(settings)
    assert app.state.grpc is None


def test_a_taken_grpc_port_stops_the_server_from_starting(settings: Settings) -> None:
    """The gRPC port held by another socket: start-up fails (as for a taken HTTP port);
    nothing shares the port silently."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        app = create_app(settings.model_copy(update={"grpc_port": taken}))
        server = build_server(app, settings, host="127.0.0.1", port=free_port())
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert not server.started
