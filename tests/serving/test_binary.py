"""The binary tensor data extension's codec: raw tensor bytes, the request's binary form,
and the response's, without a server."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.errors import RequestError
from stalwart.registry.signature import Signature, TensorSpec
from stalwart.serving.binary import (
    BinaryRequest,
    RawInput,
    decode_binary_request,
    decode_json_request,
    encode_rest_response,
    header_length,
)
from stalwart.serving.codec import InferenceRequest, RequestInput, check_request
from stalwart.serving.raw import check_size, decode_raw, encode_raw
from tests.models import ALL_DATATYPES


def _body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def _binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def _decode_all(body: bytes, length: int, *, nulls: bool = False) -> None:
    """Decode the request and make every input's array."""
    request = decode_binary_request(body, length)
    for index, tensor in enumerate(request.inputs):
        tensor.to_array(f"inputs[{index}]", nulls=nulls and index % 2 == 0)


def _error(body: bytes, length: int) -> RequestError:
    with pytest.raises(RequestError) as caught:
        _decode_all(body, length)
    return caught.value


# --- raw tensor bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(ALL_DATATYPES))
def test_every_datatype_round_trips_through_raw_bytes(datatype: str) -> None:
    """Each datatype's values at the edges of its range come back exactly, in shape."""
    values = ALL_DATATYPES[datatype].reshape(2, 1)
    raw = encode_raw(values, datatype)
    count = check_size("x", datatype, [2, 1], len(raw), "inputs[0]", "size")
    decoded = decode_raw(memoryview(raw), datatype, [2, 1], "inputs[0]", "data")
    assert count == 2
    assert decoded.shape == (2, 1)
    assert decoded.tolist() == values.tolist()


def test_raw_numbers_are_little_endian_row_major() -> None:
    """The layout the extension specifies: little-endian, row-major, no padding."""
    raw = encode_raw(np.array([[1, 2], [3, 4]], dtype=np.int32), "INT32")
    assert raw == struct.pack("<4i", 1, 2, 3, 4)
    assert encode_raw(np.array([True, False]), "BOOL") == b"\x01\x00"
    assert encode_raw(np.array(["ab", "é"], dtype=object), "BYTES") == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"


def test_aligned_data_is_a_view_and_unaligned_data_is_copied() -> None:
    """Aligned data is read in place (no copy, read-only); data at an odd offset is copied
    once into an aligned array."""
    unaligned = b"\x00" + struct.pack("<3d", 1.5, 2.5, 3.5)
    copied = decode_raw(memoryview(unaligned)[1:], "FP64", [3], "inputs[0]", "data")
    assert copied.flags.aligned
    assert copied.flags.writeable
    assert not np.shares_memory(copied, np.frombuffer(unaligned, dtype=np.uint8))
    assert copied.tolist() == [1.5, 2.5, 3.5]
    aligned = unaligned[1:]
    inplace = decode_raw(memoryview(aligned), "FP64", [3], "inputs[0]", "data")
    assert inplace.flags.aligned
    assert not inplace.flags.writeable
    assert np.shares_memory(inplace, np.frombuffer(aligned, dtype=np.uint8))
    assert inplace.tolist() == [1.5, 2.5, 3.5]


@pytest.mark.parametrize(
    ("datatype", "shape", "size", "message"),
    [
        ("FP64", [2, 3], 40, "takes 48 bytes (6 x 8), got 40"),
        ("FP64", [2, 3], 56, "takes 48 bytes (6 x 8), got 56"),
        ("BOOL", [3], 4, "takes 3 bytes"),
        ("BYTES", [3], 11, "3 BYTES elements, which take at least 12 bytes"),
        ("WAT", [1], 8, "unknown datatype 'WAT'"),
        ("FP32", [2**31, 2], 8, "a tensor holds at most"),
        ("FP32", [1] * 33, 4, "rank 33 is over the limit"),
    ],
)
def test_a_size_that_does_not_fit_the_shape_is_refused_before_allocation(datatype: str, shape: list[int], size: int, message: str) -> None:
    """The declared size is checked against shape x datatype, naming the input and field."""
    with pytest.raises(RequestError) as caught:
        check_size("x", datatype, shape, size, "inputs[0]", "inputs[0].parameters.binary_data_size")
    assert message in caught.value.message
    assert caught.value.field in ("inputs[0].parameters.binary_data_size", "inputs[0].datatype", "inputs[0].shape")


@pytest.mark.parametrize(
    ("datatype", "raw", "message"),
    [
        ("FP64", struct.pack("<2d", 1.0, float("inf")), "a value is infinite"),
        ("FP32", struct.pack("<2f", 1.0, float("nan")), "holds NaN"),
        ("BOOL", b"\x01\x02", "bytes 0 (false) or 1 (true)"),
        ("BYTES", b"\x02\x00\x00\x00\xff\xfe\x00\x00\x00\x00", "element 0 is not UTF-8"),
        ("BYTES", b"\x09\x00\x00\x00abc\x00\x00\x00\x00", "element 0 declares 9 bytes"),
        ("BYTES", b"\x00\x00\x00\x00\x00\x00\x00\x00zz", "2 bytes follow the last"),
    ],
)
def test_values_json_could_not_carry_are_refused(datatype: str, raw: bytes, message: str) -> None:
    """Infinities, NaN without a schema, BOOL bytes other than 0/1, BYTES that are not
    UTF-8 or do not add up: 400 naming the data, as the JSON decoder refuses them."""
    with pytest.raises(RequestError) as caught:
        decode_raw(memoryview(raw), datatype, [2], "inputs[0]", "inputs[0].data")
    assert message in caught.value.message
    assert caught.value.field == "inputs[0].data"


def test_nan_is_a_missing_value_when_a_schema_will_judge_it() -> None:
    """With an input schema (nulls), NaN is kept for its policies, as JSON null becomes NaN."""
    decoded = decode_raw(memoryview(struct.pack("<2d", 1.0, float("nan"))), "FP64", [2], "inputs[0]", "data", nulls=True)
    assert np.isnan(decoded[1])


# --- the request's binary form --------------------------------------------------------------


def test_mixed_json_and_binary_inputs_decode_in_order() -> None:
    """Binary inputs take their bytes in order; a JSON input between them takes none."""
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    flags = np.array([True, False])
    body, length = _body(
        {
            "id": "r1",
            "inputs": [
                _binary_input("x", "FP64", [2, 3], 48),
                {"name": "n", "datatype": "INT32", "shape": [2], "data": [7, 8]},
                _binary_input("b", "BOOL", [2], 2),
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        x.tobytes(), flags.tobytes(),
    )
    request = decode_binary_request(body, length)
    assert request.id == "r1"
    assert [type(t) for t in request.inputs] == [RawInput, RequestInput, RawInput]
    assert request.inputs[0].to_array("inputs[0]").tolist() == x.tolist()
    assert request.inputs[1].to_array("inputs[1]").tolist() == [7, 8]
    assert request.inputs[2].to_array("inputs[2]").tolist() == [True, False]


def test_check_request_reads_binary_inputs_against_the_signature() -> None:
    """A binary request goes through the same signature checks as JSON."""
    signature = Signature([TensorSpec("x", "FP64", [-1, 3])], [TensorSpec("y", "FP64", [-1])])
    x = np.ones((4, 3))
    body, length = _body({"inputs": [_binary_input("x", "FP64", [4, 3], 96)]}, x.tobytes())
    arrays, rows, outputs = check_request(decode_binary_request(body, length), signature)
    assert (rows, outputs) == (4, ("y",))
    assert arrays["x"].shape == (4, 3)
    wrong, length = _body({"inputs": [_binary_input("x", "FP64", [2, 6], 96)]}, x.tobytes())
    with pytest.raises(RequestError, match=r"inputs\[0\]\.shape: input 'x' takes shape \[-1, 3\]"):
        check_request(decode_binary_request(wrong, length), signature)


@pytest.mark.parametrize(
    ("header", "blobs", "length", "field", "message"),
    [
        ({"inputs": [_binary_input("x", "FP64", [2], 16)]}, [b"\x00" * 8], None, "inputs[0].parameters.binary_data_size", "only 8 bytes of binary data follow"),
        ({"inputs": [_binary_input("x", "FP64", [2], 16)]}, [b"\x00" * 24], None, "body", "8 bytes follow the binary data"),
        ({"inputs": [_binary_input("x", "FP64", [2], 12)]}, [b"\x00" * 12], None, "inputs[0].parameters.binary_data_size", "input 'x', FP64 of shape [2], takes 16 bytes"),
        ({"inputs": [_binary_input("x", "FP64", [2], -1)]}, [], None, "inputs[0].parameters.binary_data_size", "whole number of bytes"),
        ({"inputs": [_binary_input("x", "FP64", [2], True)]}, [], None, "inputs[0].parameters.binary_data_size", "whole number of bytes"),
        ({"inputs": [{**_binary_input("x", "FP64", [1], 8), "data": [1.0]}]}, [b"\x00" * 8], None, "inputs[0].parameters.binary_data_size", "both data and binary_data_size"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1]}]}, [], None, "inputs[0].data", "neither data nor parameters.binary_data_size"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "parameters": {"shared_memory_region": "r"}}]}, [], None, "inputs[0].parameters.shared_memory_region", "not supported"),
        ({"inputs": [], "parameters": {"binary_data_output": "yes"}}, [], None, "parameters.binary_data_output", "true or false"),
        ({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, [], None, "outputs[0].parameters.binary_data", "true or false"),
        ({"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}, [], None, "outputs[0].parameters.classification", "not supported"),
        ({"inputs": []}, [b"x"], 10_000, "Inference-Header-Content-Length", "longer than the body"),
        ({"inputs": []}, [], 0, "Inference-Header-Content-Length", "must start with the JSON"),
        ({"inputs": "no"}, [], None, "inputs", "expected `array`"),
    ],
)
def test_every_malformed_binary_request_is_a_400_naming_the_field(
    header: dict[str, Any], blobs: list[bytes], length: int | None, field: str, message: str
) -> None:
    """Sizes that disagree with the shape or the body, data given twice or not at all,
    unsupported extensions and badly typed parameters: a RequestError naming the field."""
    body, json_length = _body(header, *blobs)
    error = _error(body, json_length if length is None else length)
    assert error.field == field
    assert message in error.message


def test_header_length_must_be_a_number() -> None:
    """The header is a decimal byte count; anything else is a 400 naming it."""
    assert header_length(None) is None
    assert header_length("42") == 42
    for bad in ("-1", "4.2", "0x10", "", "9" * 40, "٣"):
        with pytest.raises(RequestError) as caught:
            header_length(bad)
        assert caught.value.field == "Inference-Header-Content-Length"


def test_a_json_request_may_still_ask_for_binary_outputs() -> None:
    """Without the header the body is JSON, and its output parameters are checked too."""
    request = decode_json_request(b'{"inputs": [], "parameters": {"binary_data_output": true}}')
    assert isinstance(request, InferenceRequest)
    with pytest.raises(RequestError, match="binary_data_output"):
        decode_json_request(b'{"inputs": [], "parameters": {"binary_data_output": 3}}')


# --- the response's binary form ---------------------------------------------------------


SIGNATURE = Signature(
    [TensorSpec("x", "FP64", [-1])],
    [TensorSpec("label", "INT64", [-1]), TensorSpec("proba", "FP32", [-1, 2]), TensorSpec("name", "BYTES", [-1])],
)
OUTPUTS = {
    "label": np.array([1, 0]),
    "proba": np.array([[0.25, 0.75], [0.5, 0.5]]),
    "name": np.array(["oui", "ñon"], dtype=object),
}


def _encode(request: object) -> tuple[bytes, dict[bytes, bytes]]:
    body, headers = encode_rest_response(
        request, model_name="m", model_version=3, request_id="r", outputs=OUTPUTS, signature=SIGNATURE
    )
    return body, dict(headers)


def _split(body: bytes, headers: dict[bytes, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    length = int(headers[b"inference-header-content-length"])
    document = json.loads(body[:length])
    blobs: dict[str, bytes] = {}
    at = length
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = body[at : at + size]
            at += size
    assert at == len(body)
    return document, blobs


def test_binary_data_output_answers_every_output_in_binary() -> None:
    """`binary_data_output: true`: every output is raw data after the JSON, in the
    signature's dtype, with Inference-Header-Content-Length and application/octet-stream."""
    body, headers = _encode(BinaryRequest([], parameters={"binary_data_output": True}))
    assert headers[b"content-type"] == b"application/octet-stream"
    document, blobs = _split(body, headers)
    assert (document["model_name"], document["model_version"], document["id"]) == ("m", "3", "r")
    assert all("data" not in o for o in document["outputs"])
    assert np.frombuffer(blobs["label"], "<i8").tolist() == [1, 0]
    assert np.frombuffer(blobs["proba"], "<f4").reshape(2, 2).tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert blobs["name"] == encode_raw(OUTPUTS["name"], "BYTES")


def test_an_output_parameter_overrides_the_request_wide_one() -> None:
    """`binary_data` on an output wins over `binary_data_output`, both ways."""
    request = msgspec.json.decode(
        b'{"inputs": [], "parameters": {"binary_data_output": true}, "outputs": [{"name": "proba", "parameters": {"binary_data": false}}]}',
        type=InferenceRequest,
    )
    document, blobs = _split(*_encode(request))
    assert set(blobs) == {"label", "name"}
    proba = next(o for o in document["outputs"] if o["name"] == "proba")
    assert proba["data"] == [0.25, 0.75, 0.5, 0.5]
    only = msgspec.json.decode(b'{"inputs": [], "outputs": [{"name": "name", "parameters": {"binary_data": true}}]}', type=InferenceRequest)
    _, blobs = _split(*_encode(only))
    assert set(blobs) == {"name"}


def test_without_binary_outputs_the_response_is_plain_json() -> None:
    """Nobody asked for binary: the JSON response, no length header."""
    body, headers = _encode(InferenceRequest(inputs=[]))
    assert headers == {b"content-type": b"application/json"}
    assert json.loads(body)["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}


# --- fuzz: whatever the header and sizes, a RequestError, never anything else -------------

_DATATYPES = st.sampled_from(["FP64", "FP32", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "WAT", ""])
_SIZES = st.one_of(st.integers(-2, 64), st.sampled_from([2**31, 2**63, 2**64, 1.5, True, None, "8"]))
_SHAPES = st.lists(st.one_of(st.integers(-1, 5), st.sampled_from([2**31, 2**40])), max_size=4)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """A binary-form body (JSON header, then bytes) and a header length, mostly wrong: the
    JSON cut anywhere, sizes and shapes of every kind, unknown datatypes, data given twice."""
    inputs = []
    for index in range(draw(st.integers(0, 3))):
        tensor: dict[str, Any] = {"name": f"x{index}", "datatype": draw(_DATATYPES), "shape": draw(_SHAPES)}
        if draw(st.booleans()):
            tensor["parameters"] = {"binary_data_size": draw(_SIZES)}
        if draw(st.integers(0, 3)) == 0:
            tensor["data"] = draw(st.lists(st.integers(-3, 3), max_size=4))
        inputs.append(tensor)
    header = json.dumps({"inputs": inputs}).encode()
    if draw(st.booleans()):
        header = header[: draw(st.integers(0, len(header)))]  # a header cut anywhere
    tail = draw(st.binary(max_size=96))
    length = draw(st.one_of(st.just(len(header)), st.integers(0, len(header) + len(tail) + 4)))
    return header + tail, length


@settings(max_examples=400, deadline=None, database=None)
@given(case=binary_bodies())
def test_fuzzedbinary_bodies_are_a_request_error_or_a_request(case: tuple[bytes, int]) -> None:
    """Random headers, sizes, shapes and bytes: decoding (and making every array) either
    succeeds or raises RequestError (the client's 400), never another exception (a 500)."""
    body, length = case
    try:
        _decode_all(body, length, nulls=True)
    except RequestError as exc:
        field = exc.field
    else:
        field = "(decoded)"
    assert field  # every refusal names what is at fault
