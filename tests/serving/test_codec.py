"""The Open Inference Protocol codec as a unit: JSON tensors to numpy and back, and requests
checked against a model's signature."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stalwart.errors import RequestError
from stalwart.registry.signature import DATATYPES, Signature, TensorSpec
from stalwart.serving.codec import (
    RequestInput,
    check_request,
    decode_request,
    decode_tensor,
    encode_error,
    encode_response,
    encode_tensor,
)

NUMERIC = [d for d in DATATYPES if d not in ("BYTES", "BOOL")]
INTEGER = [d for d in NUMERIC if not d.startswith("FP")]
FLOAT_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max)}

# Strings a JSON document can carry (no lone surrogates).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, datatype: str | None = None) -> tuple[str, np.ndarray[Any, Any]]:
    """A datatype and an array of it (finite values only: JSON has no NaN or infinity)."""
    datatype = datatype or draw(st.sampled_from(list(DATATYPES)))
    shape = draw(shapes)
    if datatype == "BYTES":
        values = draw(st.lists(text, min_size=math.prod(shape), max_size=math.prod(shape)))
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return datatype, array.reshape(shape)
    dtype = DATATYPES[datatype]
    elements = (
        hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)
        if dtype.kind == "f"
        else hnp.from_dtype(dtype)
    )
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def _wire(name: str, datatype: str, shape: list[int], data: Any) -> RequestInput:
    """A tensor as a client sends it: through real JSON bytes."""
    body = msgspec.json.encode({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})
    return decode_request(body).inputs[0]


def _decode(datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    return decode_tensor(_wire("x", datatype, shape, data), "inputs[0]")


def _refused(datatype: str, shape: list[int], data: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        _decode(datatype, shape, data)
    return info.value


def _same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tolist() == want.tolist()


# --- tensors: decode, encode, round trip -------------------------------------------------


@given(tensors())
def test_every_datatype_round_trips_through_json_flat(tensor: tuple[str, np.ndarray[Any, Any]]) -> None:
    """An array encoded as an output and sent back as an input is the same array, for
    every datatype (edge values of each range included)."""
    datatype, array = tensor
    encoded = encode_tensor("x", array, None)
    assert encoded["datatype"] == datatype
    assert encoded["shape"] == list(array.shape)
    assert len(encoded["data"]) == array.size  # flat, row-major
    _same(_decode(datatype, encoded["shape"], encoded["data"]), array)


@given(tensors())
def test_nested_data_decodes_row_major_like_flat(tensor: tuple[str, np.ndarray[Any, Any]]) -> None:
    """`data` may be nested as the shape is; it means the same as the flat list."""
    datatype, array = tensor
    _same(_decode(datatype, list(array.shape), array.tolist()), array)


@given(tensors(), st.integers(min_value=1, max_value=3))
def test_shape_must_match_the_number_of_values(tensor: tuple[str, np.ndarray[Any, Any]], extra: int) -> None:
    """A shape that does not multiply out to the number of values is refused, naming data."""
    datatype, array = tensor
    shape = [array.size + extra]
    error = _refused(datatype, shape, array.ravel().tolist())
    assert error.field == "inputs[0].data"
    assert f"has {array.size} values but shape {shape} needs {array.size + extra}" in error.message


@given(st.sampled_from(INTEGER), st.data())
def test_integers_outside_the_datatype_are_refused(datatype: str, data: st.DataObject) -> None:
    """An integer that does not fit the datatype is a 400 naming the range, never wrapped."""
    info = np.iinfo(DATATYPES[datatype])
    value = data.draw(
        st.one_of(st.integers(max_value=int(info.min) - 1), st.integers(min_value=int(info.max) + 1))
    )
    error = _refused(datatype, [2], [0, value])
    assert error.field == "inputs[0].data"
    assert f"out of range for {datatype}" in error.message


@given(st.sampled_from(INTEGER), st.data())
def test_integers_inside_the_datatype_are_exact(datatype: str, data: st.DataObject) -> None:
    """Values at both ends of an integer range decode exactly, whatever mixes with them
    (numpy alone would read [1, 2**63] as float64)."""
    info = np.iinfo(DATATYPES[datatype])
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=5))
    values += [int(info.min), int(info.max)]
    got = _decode(datatype, [len(values)], values)
    assert got.dtype == DATATYPES[datatype]
    assert got.tolist() == values


@given(st.sampled_from(["FP16", "FP32"]), st.data())
def test_floats_too_large_for_fp16_and_fp32_are_refused(datatype: str, data: st.DataObject) -> None:
    """A value that would become infinity in the datatype is refused (no RuntimeWarning)."""
    limit = FLOAT_MAX[datatype] * 1.001
    value = data.draw(st.floats(min_value=limit, max_value=1e308))
    sign = data.draw(st.sampled_from([1, -1]))
    error = _refused(datatype, [1], [sign * value])
    assert f"too large for {datatype}" in error.message


def test_huge_integers_for_float_datatypes() -> None:
    """A JSON integer beyond int64 is fine for FP64 when it fits, and refused when it does not."""
    assert _decode("FP64", [1], [2**70]).tolist() == [float(2**70)]
    assert "too large for FP32" in _refused("FP32", [1], [2**200]).message
    assert "too large for FP64" in _refused("FP64", [1], [10**400]).message


@given(st.sampled_from(NUMERIC), st.lists(st.booleans(), min_size=1, max_size=4))
def test_bools_are_not_numbers(datatype: str, values: list[bool]) -> None:
    """true/false sent for a numeric datatype is refused, and numbers for BOOL too."""
    assert _refused(datatype, [len(values)], values).field == "inputs[0].data"
    numbers = [int(v) for v in values]
    assert "BOOL data must be true or false" in _refused("BOOL", [len(numbers)], numbers).message


@given(st.lists(text, min_size=1, max_size=6))
def test_bytes_carry_unicode_text(values: list[str]) -> None:
    """BYTES are JSON strings: any Unicode text comes through unchanged."""
    got = _decode("BYTES", [len(values)], values)
    assert got.dtype == object
    assert got.tolist() == values


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP64", [[1.0, 2.0], [3.0]]),
        ("INT32", [[1], [2, 3]]),
        ("BOOL", [[True, False], [True]]),
        ("BYTES", [["a", "b"], ["c"]]),
        ("BYTES", [["a"], "b"]),
        ("FP32", [[[1.0]], [2.0]]),
    ],
)
def test_ragged_nested_lists_are_refused(datatype: str, data: list[Any]) -> None:
    """Nested data must be a regular array; ragged nesting is a 400, not a silent flatten."""
    error = _refused(datatype, [3], data)
    assert error.field == "inputs[0].data"
    assert "not a regular array" in error.message


def test_nesting_deeper_than_numpy_allows_is_refused() -> None:
    """A 70-deep nested list is a 400 naming the data, for numbers and strings alike."""
    deep: Any = 1.0
    for _ in range(70):
        deep = [deep]
    assert "nested more than 64 deep" in _refused("FP64", [1], deep).message
    deep_text: Any = "a"
    for _ in range(70):
        deep_text = [deep_text]
    assert _refused("BYTES", [1], deep_text).field == "inputs[0].data"


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP64", ["1.5"], "FP64 data must be numbers"),
        ("FP64", [None], "FP64 data must be numbers"),
        ("FP64", [{"a": 1}], "FP64 data must be numbers"),
        ("INT64", [1.5], "INT64 data must be whole numbers"),
        ("INT64", [1.0], "INT64 data must be whole numbers"),
        ("UINT8", ["7"], "UINT8 data must be numbers"),
        ("BOOL", ["true"], "BOOL data must be true or false"),
        ("BYTES", [1], "BYTES data must be strings"),
        ("BYTES", ["a", None], "BYTES data must be strings"),
        ("BYTES", [["a"], [2]], "BYTES data must be strings"),
    ],
)
def test_values_of_the_wrong_type_are_refused(datatype: str, data: list[Any], expected: str) -> None:
    """Every wrong JSON type for a datatype is a 400 that says what the data must be."""
    error = _refused(datatype, [len(data)], data)
    assert error.field == "inputs[0].data"
    assert expected in error.message


def test_unknown_datatype_and_impossible_shapes() -> None:
    """An unknown datatype names the valid ones; a shape numpy cannot hold is a 400 naming
    the shape (or the dimension beyond the bound)."""
    error = _refused("FLOAT", [1], [1.0])
    assert error.field == "inputs[0].datatype"
    assert "FP64" in error.message
    for shape in ([0, 2**64 - 1], [0] * 65):
        error = _refused("FP64", shape, [])
        assert error.field.startswith("inputs[0].shape"), shape


def test_empty_data_with_a_zero_dimension_decodes() -> None:
    """A tensor with a zero dimension and no data decodes to an empty array of its type."""
    got = _decode("INT16", [0, 3], [])
    assert got.shape == (0, 3)
    assert got.dtype == np.int16


def test_encode_casts_outputs_to_the_signature_datatype() -> None:
    """An output is reported in the signature's datatype (a model returning int64 labels
    for an INT32 signature), and BYTES outputs are text."""
    spec = TensorSpec("predict", "INT32", [-1])
    assert encode_tensor("predict", np.array([1, 2], dtype=np.int64), spec) == {
        "name": "predict",
        "datatype": "INT32",
        "shape": [2],
        "data": [1, 2],
    }
    labels = encode_tensor("label", np.array([b"yes", "no"], dtype=object), TensorSpec("label", "BYTES", [-1]))
    assert labels["data"] == ["yes", "no"]


def test_encode_response_and_error_bodies() -> None:
    """The response carries the model, version as a string, the request id and the outputs;
    an error body is {"error": ...} with any extra fields."""
    sig = Signature([TensorSpec("x", "FP64", [-1, 2])], [TensorSpec("predict", "FP64", [-1])])
    body = msgspec.json.decode(
        encode_response(model_name="m", model_version=3, request_id="r1", outputs={"predict": np.array([0.5])}, signature=sig)
    )
    assert body == {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [1], "data": [0.5]}],
    }
    assert msgspec.json.decode(encode_error("bad", field="inputs")) == {"error": "bad", "field": "inputs"}


# --- whole requests: decode_request ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b"", "body", "the request body is empty"),
        (b"{nope", "body", "not valid JSON"),
        (b"[]", "body", "expected `object`"),
        (b"{}", "body", "missing required field `inputs`"),
        (b'{"inputs": "no"}', "inputs", "expected `array`"),
        (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP64", "data": []}]}', "inputs[0].shape[0]", ">= 0"),
        (b'{"inputs": [{"name": 1, "shape": [1], "datatype": "FP64", "data": [1]}]}', "inputs[0].name", "expected `str`"),
        (b'{"inputs": [], "id": 5}', "id", "expected `str | null`, got `int`"),
        (b'{"inputs": [], "outputs": [{}]}', "outputs[0]", "missing required field `name`"),
    ],
)
def test_malformed_requests_name_the_field(body: bytes, field: str, fragment: str) -> None:
    """A body that is not an inference request is refused with the JSON path at fault."""
    with pytest.raises(RequestError) as info:
        decode_request(body)
    assert info.value.field == field
    assert fragment in info.value.message
    assert info.value.message.startswith(f"{field}: ")


# --- check_request against a signature ---------------------------------------------------

MATRIX = Signature(
    [TensorSpec("input-0", "FP64", [-1, 3])],
    [TensorSpec("predict", "INT64", [-1]), TensorSpec("predict_proba", "FP64", [-1, 2])],
)
COLUMNS = Signature(
    [TensorSpec("age", "INT32", [-1]), TensorSpec("city", "BYTES", [-1])],
    [TensorSpec("score", "FP32", [-1])],
)


def _request(*inputs: dict[str, Any], **extra: Any) -> Any:
    return decode_request(msgspec.json.encode({"inputs": list(inputs), **extra}))


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _check_refused(signature: Signature, *inputs: dict[str, Any], **extra: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        check_request(_request(*inputs, **extra), signature)
    return info.value


def test_a_matching_request_gives_arrays_rows_and_all_outputs() -> None:
    """A request that fits the signature gives named arrays, the row count and, without an
    `outputs` list, every output."""
    arrays, rows, outputs = check_request(_request(_tensor("input-0", "FP64", [2, 3], [1, 2, 3, 4, 5, 6])), MATRIX)
    assert arrays["input-0"].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert rows == 2
    assert outputs == ("predict", "predict_proba")


def test_columnar_inputs_of_mixed_datatypes() -> None:
    """Columns of different datatypes (numbers and strings) are checked one by one."""
    arrays, rows, _ = check_request(
        _request(_tensor("city", "BYTES", [2], ["Oslo", "Zürich"]), _tensor("age", "INT32", [2], [30, 41])), COLUMNS
    )
    assert rows == 2
    assert arrays["age"].dtype == np.int32
    assert arrays["city"].tolist() == ["Oslo", "Zürich"]


def test_unknown_duplicate_and_missing_inputs() -> None:
    """Input names must be the signature's, each once, all present."""
    age = _tensor("age", "INT32", [1], [30])
    city = _tensor("city", "BYTES", [1], ["Oslo"])
    error = _check_refused(COLUMNS, age, _tensor("town", "BYTES", [1], ["Oslo"]))
    assert error.field == "inputs[1].name"
    assert "the model has no input 'town'; it takes age, city" in error.message
    error = _check_refused(COLUMNS, age, city, age)
    assert error.field == "inputs[2].name"
    assert "given twice" in error.message
    error = _check_refused(COLUMNS, age)
    assert error.field == "inputs"
    assert "missing 'city'" in error.message


def test_datatype_must_match_the_signature() -> None:
    """Sending FP32 to an FP64 input is refused, naming both datatypes."""
    error = _check_refused(MATRIX, _tensor("input-0", "FP32", [1, 3], [1, 2, 3]))
    assert error.field == "inputs[0].datatype"
    assert "takes FP64, got FP32" in error.message


def test_fixed_dimensions_must_match() -> None:
    """A fixed dimension (3 features) must be exactly that; the batch dimension is free."""
    error = _check_refused(MATRIX, _tensor("input-0", "FP64", [2, 2], [1, 2, 3, 4]))
    assert error.field == "inputs[0].shape"
    assert "takes shape [-1, 3]" in error.message
    assert "got [2, 2]" in error.message
    error = _check_refused(MATRIX, _tensor("input-0", "FP64", [3], [1, 2, 3]))
    assert error.field == "inputs[0].shape"


def test_a_column_sent_as_n_by_1_is_the_same_column() -> None:
    """[n, 1] for a [-1] column is squeezed to [n]; [n, 2] is not a column."""
    arrays, rows, _ = check_request(
        _request(_tensor("age", "INT32", [2, 1], [[30], [41]]), _tensor("city", "BYTES", [2], ["a", "b"])), COLUMNS
    )
    assert arrays["age"].shape == (2,)
    assert rows == 2
    error = _check_refused(COLUMNS, _tensor("age", "INT32", [1, 2], [30, 41]), _tensor("city", "BYTES", [1], ["a"]))
    assert error.field == "inputs[0].shape"


def test_inputs_must_have_the_same_rows_and_at_least_one() -> None:
    """Columns of different lengths are refused; so is a request with zero rows."""
    error = _check_refused(COLUMNS, _tensor("age", "INT32", [2], [1, 2]), _tensor("city", "BYTES", [1], ["a"]))
    assert error.field == "inputs[1].shape"
    assert "has 1 rows but 'age' has 2" in error.message
    error = _check_refused(MATRIX, _tensor("input-0", "FP64", [0, 3], []))
    assert error.field == "inputs"
    assert "at least one row" in error.message
    error = _check_refused(COLUMNS, _tensor("age", "INT32", [0], []), _tensor("city", "BYTES", [0], []))
    assert "at least one row" in error.message


def test_outputs_select_what_is_computed() -> None:
    """`outputs` picks outputs by name, in the client's order, once each; an unknown name
    is refused listing the real ones."""
    x = _tensor("input-0", "FP64", [1, 3], [1, 2, 3])
    _, _, outputs = check_request(_request(x, outputs=[{"name": "predict_proba"}, {"name": "predict"}, {"name": "predict_proba"}]), MATRIX)
    assert outputs == ("predict_proba", "predict")
    _, _, outputs = check_request(_request(x, outputs=[]), MATRIX)
    assert outputs == ("predict", "predict_proba")
    error = _check_refused(MATRIX, x, outputs=[{"name": "predict"}, {"name": "proba"}])
    assert error.field == "outputs[1].name"
    assert "no output 'proba'; it returns predict, predict_proba" in error.message


@given(st.data())
def test_any_request_is_either_accepted_or_a_request_error(data: st.DataObject) -> None:
    """Whatever JSON-shaped tensor a client sends, checking it either succeeds or raises a
    RequestError (a 400) naming a field: never another exception (a 500)."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
        lambda inner: st.lists(inner, max_size=3),
        max_leaves=8,
    )
    tensor = {
        "name": data.draw(st.sampled_from(["age", "city", "other"])),
        "datatype": data.draw(st.sampled_from([*DATATYPES, "NOPE"])),
        "shape": data.draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)),
        "data": data.draw(st.lists(json_values, max_size=6)),
    }
    error: RequestError | None = None
    try:
        check_request(_request(tensor, _tensor("city", "BYTES", [1], ["x"])), COLUMNS)
    except RequestError as exc:
        error = exc
    if error is not None:
        assert error.field
        assert error.message.startswith(error.field.split("[")[0])
