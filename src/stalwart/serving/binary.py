"""The binary tensor data extension of the Open Inference Protocol over REST, as Triton's
clients (``tritonclient.http``, whose default it is) speak it.

A request whose ``Inference-Header-Content-Length`` header is set is that many bytes of
JSON, then the raw data (:mod:`~stalwart.serving.raw`) of each input whose
``parameters.binary_data_size`` is set, in the order of ``inputs``; other inputs carry JSON
``data`` as usual. Every size is checked against the input's shape and datatype, and all of
them against the bytes that follow the JSON, before any array is made; a mismatch is a 400
naming the input.

An output is answered in binary when its ``parameters.binary_data`` is true, or when the
request's ``parameters.binary_data_output`` is and the output does not say otherwise. Then
the response is its JSON (those outputs with ``parameters.binary_data_size`` instead of
``data``) followed by their raw data, with ``Inference-Header-Content-Length`` giving the
JSON's length and ``Content-Type: application/octet-stream``; with no binary output it is
plain JSON.

Not supported (a 400 saying so): the shared-memory extension's parameters. Compressed
bodies (``Content-Encoding``) are not decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import msgspec
import numpy as np

from stalwart.errors import RequestError
from stalwart.registry.signature import Signature
from stalwart.serving.codec import (
    MAX_ID_LENGTH,
    MAX_RANK,
    MAX_TENSORS,
    Dimension,
    InferenceRequest,
    RequestInput,
    RequestOutput,
    TensorInput,
    decode_request,
    decode_struct,
    encode_response,
    encode_tensor,
    output_array,
    shown,
)
from stalwart.serving.raw import check_size, decode_raw, encode_raw

__all__ = [
    "HEADER_LENGTH",
    "BinaryRequest",
    "RawInput",
    "decode_binary_request",
    "decode_json_request",
    "encode_rest_response",
    "header_length",
    "request_decoder",
]

HEADER_LENGTH = "inference-header-content-length"
"""The request and response header giving the JSON's length (lowercase, as ASGI has it)."""

_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_JSON = [(b"content-type", b"application/json")]


class _HeaderInput(msgspec.Struct):
    name: str
    shape: Annotated[list[Dimension], msgspec.Meta(max_length=MAX_RANK)]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class _Header(msgspec.Struct):
    inputs: Annotated[list[_HeaderInput], msgspec.Meta(max_length=MAX_TENSORS)]
    id: Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None = None
    parameters: dict[str, Any] | None = None
    outputs: Annotated[list[RequestOutput], msgspec.Meta(max_length=MAX_TENSORS)] | None = None


_header_decoder = msgspec.json.Decoder(_Header)


@dataclass(slots=True)
class RawInput:
    """An input sent as binary data: a view of the request body, checked for size."""

    name: str
    datatype: str
    shape: list[int]
    data: memoryview
    field: str  # where its data is, for errors in it

    def to_array(self, where: str, *, nulls: bool = False) -> np.ndarray[Any, Any]:
        return decode_raw(self.data, self.datatype, self.shape, where, self.field, nulls=nulls)


@dataclass(slots=True)
class BinaryRequest:
    """A request in the binary form: JSON inputs and binary ones, in the client's order."""

    inputs: list[TensorInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class _Preferences(Protocol):
    """What says which outputs are answered in binary: the request's parameters and the
    requested outputs' (an :class:`InferenceRequest` or a :class:`BinaryRequest`)."""

    @property
    def parameters(self) -> dict[str, Any] | None: ...

    @property
    def outputs(self) -> Sequence[RequestOutput] | None: ...


def header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header's value (None when absent)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise RequestError(
            f"header Inference-Header-Content-Length: {shown(value)!r} is not a length in bytes",
            field="Inference-Header-Content-Length",
        )
    return int(value)


def request_decoder(length: int | None) -> Callable[[bytes], InferenceRequest | BinaryRequest]:
    """How to decode a REST body: JSON without the header, the binary form with it."""
    if length is None:
        return decode_json_request
    return lambda body: decode_binary_request(body, length)


def decode_json_request(body: bytes) -> InferenceRequest:
    """A JSON request, its binary output parameters checked (it may ask for binary outputs)."""
    request = decode_request(body)
    _check_preferences(request)
    return request


def decode_binary_request(body: bytes, length: int) -> BinaryRequest:
    """The request in ``body``: ``length`` bytes of JSON, then the binary inputs' data."""
    if length > len(body):
        raise RequestError(
            f"header Inference-Header-Content-Length: {length} is longer than the body ({len(body)} bytes)",
            field="Inference-Header-Content-Length",
        )
    if length == 0:
        raise RequestError(
            "header Inference-Header-Content-Length: 0; the body must start with the JSON request",
            field="Inference-Header-Content-Length",
        )
    whole = memoryview(body)
    header = decode_struct(whole[:length], _header_decoder)
    data = whole[length:]
    at = 0
    inputs: list[TensorInput] = []
    for index, tensor in enumerate(header.inputs):
        where = f"inputs[{index}]"
        size = _binary_size(tensor, where)
        if size is None:
            if tensor.data is None:
                raise RequestError(
                    f"{where}: input '{shown(tensor.name)}' has neither data nor parameters.binary_data_size",
                    field=f"{where}.data",
                )
            inputs.append(RequestInput(tensor.name, tensor.shape, tensor.datatype, tensor.data, tensor.parameters))
            continue
        field = f"{where}.parameters.binary_data_size"
        check_size(tensor.name, tensor.datatype, tensor.shape, size, where, field)
        if size > len(data) - at:
            raise RequestError(
                f"{field}: input '{shown(tensor.name)}' declares {size} bytes, but only "
                f"{len(data) - at} bytes of binary data follow",
                field=field,
            )
        inputs.append(RawInput(tensor.name, tensor.datatype, tensor.shape, data[at : at + size], f"{where}.data"))
        at += size
    if at != len(data):
        raise RequestError(
            f"body: {len(data) - at} bytes follow the binary data of the last input; check "
            f"Inference-Header-Content-Length and each binary_data_size",
            field="body",
        )
    request = BinaryRequest(inputs, header.id, header.parameters, header.outputs)
    _check_preferences(request)
    return request


def encode_rest_response(
    request: object,
    *,
    model_name: str,
    model_version: int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    signature: Signature,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its headers: JSON, or JSON and binary outputs when the
    request (decoded by :func:`request_decoder`) asked for any."""
    binary = _binary_outputs(request, outputs) if isinstance(request, InferenceRequest | BinaryRequest) else None
    if not binary:
        body = encode_response(
            model_name=model_name, model_version=model_version, request_id=request_id,
            outputs=outputs, signature=signature, parameters=parameters,
        )
        return body, _JSON
    specs = {spec.name: spec for spec in signature.outputs}
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        if name not in binary:
            tensors.append(encode_tensor(name, array, specs.get(name)))
            continue
        converted, datatype = output_array(name, array, specs.get(name))
        raw = encode_raw(converted, datatype)
        tensors.append({
            "name": name, "datatype": datatype, "shape": list(converted.shape),
            "parameters": {"binary_data_size": len(raw)},
        })
        blobs.append(raw)
    document: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version), "outputs": tensors}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = dict(parameters)
    head = msgspec.json.encode(document)
    headers = [(b"content-type", b"application/octet-stream"), (HEADER_LENGTH.encode(), str(len(head)).encode())]
    return b"".join([head, *blobs]), headers


def _binary_size(tensor: _HeaderInput, where: str) -> int | None:
    parameters = tensor.parameters
    if not parameters:
        return None
    for key in _SHARED_MEMORY:
        if key in parameters:
            raise RequestError(
                f"{where}.parameters.{key}: the shared-memory extension is not supported; send the "
                f"data as JSON or binary data",
                field=f"{where}.parameters.{key}",
            )
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    field = f"{where}.parameters.binary_data_size"
    if type(size) is not int or size < 0:
        raise RequestError(f"{field}: must be a whole number of bytes, got {shown(str(size))}", field=field)
    if tensor.data is not None:
        raise RequestError(
            f"{where}: input '{shown(tensor.name)}' has both data and binary_data_size; send one", field=field
        )
    return size


def _check_preferences(request: _Preferences) -> None:
    """Refuse a binary output parameter that is not true or false (before the model runs)."""
    if request.parameters:
        _flag(request.parameters, "binary_data_output", "parameters.binary_data_output")
    for index, output in enumerate(request.outputs or ()):
        if output.parameters:
            _flag(output.parameters, "binary_data", f"outputs[{index}].parameters.binary_data")
            if "classification" in output.parameters:
                field = f"outputs[{index}].parameters.classification"
                raise RequestError(f"{field}: the classification extension is not supported", field=field)


def _binary_outputs(request: _Preferences, outputs: Mapping[str, Any]) -> frozenset[str]:
    everything = _flag(request.parameters, "binary_data_output", "") if request.parameters else None
    chosen = set(outputs) if everything else set()
    for output in request.outputs or ():
        flag = _flag(output.parameters, "binary_data", "") if output.parameters else None
        if flag is not None and output.name in outputs:
            if flag:
                chosen.add(output.name)
            else:
                chosen.discard(output.name)
    return frozenset(chosen)


def _flag(parameters: Mapping[str, Any], key: str, field: str) -> bool | None:
    value = parameters.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise RequestError(f"{field}: must be true or false, got {shown(str(value))}", field=field)
