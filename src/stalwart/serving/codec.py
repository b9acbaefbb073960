"""Open Inference Protocol (KServe v2) JSON: requests to numpy, numpy to responses.

Decoding checks everything a client can get wrong and says where, as ``RequestError``
with ``field`` set to the JSON path (``inputs[1].shape``): unknown datatypes, shapes that
do not match the data, values that do not fit the datatype, names, datatypes and shapes
that do not match the model's signature, unknown outputs.

>>> sig = Signature([TensorSpec("x", "FP64", [-1, 2])], [TensorSpec("predict", "INT64", [-1])])
>>> req = decode_request(b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}')
>>> arrays, rows, outputs = check_request(req, sig)
>>> arrays["x"].tolist(), rows, outputs
([[1.0, 2.0]], 1, ('predict',))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol, TypeVar

import msgspec
import numpy as np

from stalwart.errors import ModelError, RequestError
from stalwart.registry.signature import DATATYPES, Signature, TensorSpec, datatype_of

__all__ = [
    "MAX_DIMENSION",
    "MAX_ID_LENGTH",
    "MAX_RANK",
    "MAX_TENSORS",
    "MAX_VALUES",
    "InferenceRequest",
    "NamedOutput",
    "RequestInput",
    "RequestOutput",
    "TensorInput",
    "TensorRequest",
    "check_request",
    "decode_json",
    "decode_request",
    "decode_struct",
    "decode_tensor",
    "encode_error",
    "encode_response",
    "encode_tensor",
    "output_array",
    "shown",
]

T = TypeVar("T")

# Bounds on what a client chooses, checked while decoding, before any arithmetic on it: a
# shape of 50,000 dimensions of 2**63 - 1 once took seconds of the event loop to multiply
# out and describe. No model takes a rank beyond 32 (numpy's own limit is 64).
MAX_RANK = 32
MAX_DIMENSION = 2**31
MAX_VALUES = 2**31
"""Most values one tensor's shape may describe (the body limit bounds the data anyway)."""
MAX_TENSORS = 4096
"""Most inputs, or requested outputs, in one request."""
MAX_ID_LENGTH = 256
"""Longest request ``id``, which the response echoes."""
_SHOWN = 64  # characters of a client's string quoted back in an error message

Dimension = Annotated[int, msgspec.Meta(ge=0, le=MAX_DIMENSION)]


class TensorInput(Protocol):
    """One input tensor as a protocol decoded it (JSON ``data``, binary tensor data, gRPC
    contents): its name and datatype, and its values as numpy on demand."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    def to_array(self, where: str, *, nulls: bool = False) -> np.ndarray[Any, Any]:
        """The values as an array of the datatype and shape, or a RequestError naming
        ``where`` (``nulls``: missing values are kept, as NaN or None, for validation)."""
        ...


class NamedOutput(Protocol):
    @property
    def name(self) -> str: ...


class TensorRequest(Protocol):
    """An inference request as any protocol decodes it: what :func:`check_request` reads."""

    @property
    def id(self) -> str | None: ...

    @property
    def inputs(self) -> Sequence[TensorInput]: ...

    @property
    def outputs(self) -> Sequence[NamedOutput] | None: ...


class RequestInput(msgspec.Struct):
    name: str
    shape: Annotated[list[Dimension], msgspec.Meta(max_length=MAX_RANK)]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None

    def to_array(self, where: str, *, nulls: bool = False) -> np.ndarray[Any, Any]:
        return decode_tensor(self, where, nulls=nulls)


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(msgspec.Struct):
    inputs: Annotated[list[RequestInput], msgspec.Meta(max_length=MAX_TENSORS)]
    id: Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None = None
    parameters: dict[str, Any] | None = None
    outputs: Annotated[list[RequestOutput], msgspec.Meta(max_length=MAX_TENSORS)] | None = None


_decoder = msgspec.json.Decoder(InferenceRequest)
_encoder = msgspec.json.Encoder()

_INT_KINDS = frozenset("iu")
_NUMBER_KINDS = frozenset("iuf")


def decode_request(body: bytes) -> InferenceRequest:
    """Parse and type-check the JSON body (not yet against a model)."""
    if not body:
        raise RequestError("body: the request body is empty; send an inference request as JSON", field="body")
    return decode_struct(body, _decoder)


def decode_struct(body: bytes | memoryview, decoder: msgspec.json.Decoder[T]) -> T:
    """``body`` as ``decoder``'s type; a mismatch is a RequestError whose field is the JSON
    path at fault (``inputs[1].shape``), malformed JSON names the body."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(_describe_validation_error(exc), field=_path_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"body: not valid JSON ({exc})", field="body") from None
    except RecursionError:
        raise _too_deep() from None


def decode_json(body: bytes, decoder: msgspec.json.Decoder[T], *, field: str, hint: str) -> T:
    """A /v1 JSON body of ``decoder``'s type; a mismatch names ``field`` and ends with
    ``hint`` (what to send), malformed JSON names the body."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(f"body: {exc}; {hint}", field=field) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"body: not valid JSON ({exc})", field="body") from None
    except RecursionError:
        raise _too_deep() from None


def shown(text: str) -> str:
    """A client's string as quoted back in an error message: clipped, so a megabyte of name
    costs the response nothing."""
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def check_request(
    request: TensorRequest, signature: Signature, *, gaps: bool = False
) -> tuple[dict[str, np.ndarray[Any, Any]], int, tuple[str, ...]]:
    """The request's tensors (decoded by any protocol) as numpy arrays checked against
    ``signature``.

    Returns ``(arrays by input name, number of rows, requested output names)``. With
    ``gaps`` (the model has an input schema, whose policies decide what a missing value
    becomes), inputs may be left out and ``null`` values of FP and BYTES inputs are kept as
    NaN and None; validation then rejects, imputes or flags them.
    """
    specs = {spec.name: spec for spec in signature.inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    rows: int | None = None
    for index, tensor in enumerate(request.inputs):
        where = f"inputs[{index}]"
        spec = specs.get(tensor.name)
        if spec is None:
            raise RequestError(
                f"{where}.name: the model has no input '{shown(tensor.name)}'; it takes "
                f"{', '.join(specs)}",
                field=f"{where}.name",
            )
        if tensor.name in arrays:
            raise RequestError(f"{where}.name: input '{shown(tensor.name)}' is given twice", field=f"{where}.name")
        if tensor.datatype != spec.datatype:
            raise RequestError(
                f"{where}.datatype: input '{spec.name}' takes {spec.datatype}, got {shown(tensor.datatype)}",
                field=f"{where}.datatype",
            )
        array = _fit_shape(tensor.to_array(where, nulls=gaps), spec, where)
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise RequestError(
                f"{where}.shape: input '{spec.name}' has {array.shape[0]} rows but "
                f"'{request.inputs[0].name}' has {rows}; every input needs the same number of rows",
                field=f"{where}.shape",
            )
        arrays[tensor.name] = array
    missing = [name for name in specs if name not in arrays]
    if missing and not (gaps and arrays):
        raise RequestError(
            f"inputs: missing {', '.join(repr(m) for m in missing)}; the model takes "
            f"{', '.join(specs)}",
            field="inputs",
        )
    if not rows:
        raise RequestError("inputs: send at least one row", field="inputs")
    return arrays, rows, _requested_outputs(request.outputs, signature)


def decode_tensor(tensor: RequestInput, where: str = "input", *, nulls: bool = False) -> np.ndarray[Any, Any]:
    """One tensor's ``data`` as a numpy array of its datatype and shape (``nulls``: a
    ``null`` in FP data is NaN, in BYTES data None; other datatypes cannot hold one)."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise RequestError(
            f"{where}.datatype: unknown datatype '{shown(tensor.datatype)}'; use one of {', '.join(DATATYPES)}",
            field=f"{where}.datatype",
        )
    # Decoding bounded the rank and each dimension, so this product is a few hundred bits
    # at most: microseconds, and a number short enough to print.
    expected = math.prod(tensor.shape)
    if expected > MAX_VALUES:
        raise RequestError(
            f"{where}.shape: {tensor.shape} describes {expected} values; a tensor holds at most {MAX_VALUES}",
            field=f"{where}.shape",
        )
    if tensor.datatype == "BYTES":
        array = _bytes_array(tensor.data, where, nulls=nulls)
    else:
        array = _numeric_array(tensor.data, tensor.datatype, dtype, where, nulls=nulls)
    if array.size != expected:
        raise RequestError(
            f"{where}.data: has {array.size} values but shape {tensor.shape} needs {expected}",
            field=f"{where}.data",
        )
    try:
        return array.reshape(tensor.shape)
    except (ValueError, OverflowError):
        # Only an empty tensor gets here with an absurd shape ([0, 2**64 - 1], 65 dims).
        raise RequestError(
            f"{where}.shape: {tensor.shape} is not a shape numpy can hold",
            field=f"{where}.shape",
        ) from None


def output_array(name: str, array: np.ndarray[Any, Any], spec: TensorSpec | None) -> tuple[np.ndarray[Any, Any], str]:
    """An output as the signature declares it: the array in the spec's dtype (a ModelError
    when it does not convert) and its datatype (the array's own without a spec)."""
    if spec is None:
        return array, datatype_of(array.dtype)
    if array.dtype != spec.dtype:
        try:
            array = array.astype(spec.dtype)
        except (ValueError, TypeError) as exc:
            raise ModelError(
                f"output '{name}' is {array.dtype}, which does not convert to the signature's "
                f"{spec.datatype}: {exc}"
            ) from exc
    return array, spec.datatype


def encode_tensor(name: str, array: np.ndarray[Any, Any], spec: TensorSpec | None) -> dict[str, Any]:
    """One output tensor as OIP JSON (flat, row-major ``data``)."""
    array, datatype = output_array(name, array, spec)
    flat = array.ravel()
    data = [_text(v) for v in flat.tolist()] if datatype == "BYTES" else flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_response(
    *,
    model_name: str,
    model_version: int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    signature: Signature,
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """The inference response body."""
    specs = {spec.name: spec for spec in signature.outputs}
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": str(model_version),
        "outputs": [encode_tensor(name, arr, specs.get(name)) for name, arr in outputs.items()],
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    return _encoder.encode(body)


def encode_error(message: str, **extra: Any) -> bytes:
    """``{"error": message, ...}``, the body of every error response."""
    return _encoder.encode({"error": message, **extra})


def _requested_outputs(requested: Sequence[NamedOutput] | None, signature: Signature) -> tuple[str, ...]:
    available = signature.output_names
    if not requested:
        return tuple(available)
    names: list[str] = []
    for index, output in enumerate(requested):
        if output.name not in available:
            raise RequestError(
                f"outputs[{index}].name: the model has no output '{shown(output.name)}'; it returns "
                f"{', '.join(available)}",
                field=f"outputs[{index}].name",
            )
        if output.name not in names:
            names.append(output.name)
    return tuple(names)


def _fit_shape(array: np.ndarray[Any, Any], spec: TensorSpec, where: str) -> np.ndarray[Any, Any]:
    expected = spec.shape
    if len(expected) == 1 and array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)  # a column sent as [n, 1] is the same column
    if array.ndim != len(expected) or any(
        want != -1 and got != want for got, want in zip(array.shape, expected, strict=True)
    ):
        raise RequestError(
            f"{where}.shape: input '{spec.name}' takes shape {expected} (-1: any size), "
            f"got {list(array.shape)}",
            field=f"{where}.shape",
        )
    return array


def _numeric_array(
    data: list[Any], datatype: str, dtype: np.dtype[Any], where: str, *, nulls: bool = False
) -> np.ndarray[Any, Any]:
    try:
        raw = np.array(data)
    except (ValueError, OverflowError):
        raise _irregular(where) from None
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(dtype)
    if kind == "O" and nulls and dtype.kind == "f":
        with_nan = _nulls_as_nan(raw, dtype, datatype, where)
        if with_nan is not None:
            return with_nan
    if datatype == "BOOL":
        if kind != "b":
            raise _wrong_values(where, datatype, "true or false")
        return raw
    if kind == "O" or (kind == "f" and dtype.kind in _INT_KINDS):
        # numpy falls back to object, or to float64 (rounding them), when the integers do not
        # share one numpy int type ([2**64], [1, 2**63]): decide on the exact Python ints.
        exact = raw if kind == "O" else np.array(data, dtype=object)
        if _all_ints(exact):
            return _exact_ints(exact, datatype, dtype, where)
    if kind == "b" or kind not in _NUMBER_KINDS:
        raise _wrong_values(where, datatype, "numbers")
    if dtype.kind in _INT_KINDS:
        if kind not in _INT_KINDS:
            raise _wrong_values(where, datatype, "whole numbers")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _out_of_range(where, datatype, info)
        return raw.astype(dtype)
    return _finite(raw, datatype, dtype, where)


def _exact_ints(exact: np.ndarray[Any, Any], datatype: str, dtype: np.dtype[Any], where: str) -> np.ndarray[Any, Any]:
    """Python ints (in an object array) as ``dtype``, refusing any that do not fit."""
    if dtype.kind in _INT_KINDS:
        info = np.iinfo(dtype)
        values = exact.ravel().tolist()
        if min(values) < info.min or max(values) > info.max:
            raise _out_of_range(where, datatype, info)
        return exact.astype(dtype)
    try:
        as_float = exact.astype(np.float64)
    except OverflowError:
        raise _too_large(where, datatype) from None
    return _finite(as_float, datatype, dtype, where)


def _finite(raw: np.ndarray[Any, Any], datatype: str, dtype: np.dtype[Any], where: str) -> np.ndarray[Any, Any]:
    # A value beyond the float type's range becomes inf; that is the client's mistake to
    # report, not a RuntimeWarning for the server's log.
    if raw.dtype == dtype:
        # Already float64: every value came from JSON, which msgspec only decodes when it
        # fits a double, so nothing here can be inf or NaN.
        return raw
    else:
        with np.errstate(over="ignore"):
            converted = raw.astype(dtype)
    if not np.isfinite(converted).all():
        raise _too_large(where, datatype)
    return converted


def _nulls_as_nan(raw: np.ndarray[Any, Any], dtype: np.dtype[Any], datatype: str, where: str) -> np.ndarray[Any, Any] | None:
    """Numbers and nulls (an object array) as ``dtype`` with NaN for null; None when there
    is no null or something else is among them (the usual errors then say what)."""
    values = raw.ravel().tolist()
    if not any(v is None for v in values) or not all(v is None or type(v) in (int, float) for v in values):
        return None
    try:
        floats = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except OverflowError:  # an integer beyond any double
        raise _too_large(where, datatype) from None
    with np.errstate(over="ignore"):
        converted = floats.reshape(raw.shape).astype(dtype)
    if np.isinf(converted).any():
        raise _too_large(where, datatype)
    return converted


def _bytes_array(data: list[Any], where: str, *, nulls: bool = False) -> np.ndarray[Any, Any]:
    flat: list[Any] = data
    if any(isinstance(item, list) for item in data):
        # Nested: numpy lays out a regular nesting row-major; a ragged one leaves lists
        # among the values, which are refused below.
        try:
            flat = np.array(data, dtype=object).ravel().tolist()
        except ValueError:
            raise _irregular(where) from None
        if any(isinstance(item, list) for item in flat):
            raise _irregular(where)
    if not all(isinstance(item, str) or (nulls and item is None) for item in flat):
        raise _wrong_values(where, "BYTES", "strings")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _all_ints(raw: np.ndarray[Any, Any]) -> bool:
    return all(type(v) is int for v in raw.ravel().tolist())


def _wrong_values(where: str, datatype: str, expected: str) -> RequestError:
    return RequestError(f"{where}.data: {datatype} data must be {expected}", field=f"{where}.data")


def _out_of_range(where: str, datatype: str, info: np.iinfo[Any]) -> RequestError:
    return RequestError(
        f"{where}.data: a value is out of range for {datatype} ({info.min} to {info.max})",
        field=f"{where}.data",
    )


def _too_large(where: str, datatype: str) -> RequestError:
    return RequestError(f"{where}.data: a value is too large for {datatype}", field=f"{where}.data")


def _irregular(where: str) -> RequestError:
    return RequestError(
        f"{where}.data: nested lists are not a regular array (uneven lengths, or nested more "
        f"than 64 deep); send flat data or a regular nested array",
        field=f"{where}.data",
    )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _too_deep() -> RequestError:
    return RequestError(
        "body: JSON nested too deeply; send flat data or a shallow nesting", field="body"
    )


def _path_of(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    marker = " - at `$"
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`").lstrip(".") or "body"
    return "body"


def _describe_validation_error(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    marker = " - at `$"
    if marker in message:
        problem, path = message.split(marker, 1)
        path = path.rstrip("`").lstrip(".") or "body"
        return f"{path}: {problem[0].lower()}{problem[1:]}"
    return f"body: {message[0].lower()}{message[1:]}"
