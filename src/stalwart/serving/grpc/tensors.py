"""``ModelInferRequest`` to tensors, and a model's outputs to ``ModelInferResponse``.

Inputs come either all as ``raw_input_contents`` (one entry per input, in order: raw bytes
as :mod:`~stalwart.serving.raw` reads them) or all as typed ``contents`` (the repeated field
of the datatype: ``fp64_contents`` for FP64, ``int_contents`` for INT8 to INT32...; FP16 has
none, so it travels raw). Every size and count is checked against the declared shape and
datatype before an array is made, and values are held to the JSON decoder's rules (range,
finiteness, UTF-8), so a request means the same over gRPC as over REST. protobuf's Python
API hands out a bytes field as a new copy on every read, so each raw input is read once
(one copy); numpy then reads that copy in place.

The response mirrors the request: raw in, ``raw_output_contents`` out (what Triton always
sends, and all its clients read); typed in, typed out, unless an output is FP16, which only
raw can carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from google.protobuf.message import DecodeError

from stalwart.errors import RequestError
from stalwart.registry.signature import DATATYPES, Signature
from stalwart.serving.codec import MAX_ID_LENGTH, MAX_TENSORS, NamedOutput, output_array, shown
from stalwart.serving.grpc.messages import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from stalwart.serving.raw import check_floats, check_size, count_of, decode_raw, encode_raw

__all__ = ["CONTENTS", "GrpcInput", "GrpcRequest", "grpc_request", "infer_response", "parse_infer_request"]

CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed ``contents`` field each datatype travels in (FP16 has none: raw only)."""

_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(slots=True)
class GrpcInput:
    """One input of a ``ModelInferRequest``: raw bytes or typed contents, sizes checked."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None
    contents: InferTensorContents | None
    field: str  # where its values are, for errors in them

    def to_array(self, where: str, *, nulls: bool = False) -> np.ndarray[Any, Any]:
        if self.raw is not None:
            return decode_raw(memoryview(self.raw), self.datatype, self.shape, where, self.field, nulls=nulls)
        if self.contents is None:  # pragma: no cover - grpc_request gives every input one or the other
            raise RequestError(f"{where}: input '{shown(self.name)}' has no contents", field=where)
        return _typed_array(self.contents, self.datatype, self.shape, self.field, nulls=nulls)


@dataclass(slots=True)
class GrpcRequest:
    """A ``ModelInferRequest`` as the data plane reads it; ``raw``: answer in raw contents."""

    inputs: list[GrpcInput]
    outputs: Sequence[NamedOutput] | None
    id: str | None
    raw: bool


def parse_infer_request(payload: bytes) -> ModelInferRequest:
    """The serialized ``ModelInferRequest`` (INVALID_ARGUMENT when it is not one)."""
    try:
        return ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise RequestError(f"request: not a ModelInferRequest message ({exc})", field="request") from None


def grpc_request(message: ModelInferRequest) -> GrpcRequest:
    """``message``'s tensors, each size checked against its shape and datatype."""
    if len(message.inputs) > MAX_TENSORS or len(message.outputs) > MAX_TENSORS:
        raise RequestError(f"inputs: at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs", field="inputs")
    if len(message.id) > MAX_ID_LENGTH:
        raise RequestError(f"id: at most {MAX_ID_LENGTH} characters, got {len(message.id)}", field="id")
    raw_contents = message.raw_input_contents
    raw = len(raw_contents) > 0
    if raw and len(raw_contents) != len(message.inputs):
        raise RequestError(
            f"raw_input_contents: {len(raw_contents)} entries for {len(message.inputs)} inputs; send one per input, in order",
            field="raw_input_contents",
        )
    inputs: list[GrpcInput] = []
    for index, tensor in enumerate(message.inputs):
        where = f"inputs[{index}]"
        if tensor.parameters:
            for key in _SHARED_MEMORY:
                if key in tensor.parameters:
                    field = f"{where}.parameters.{key}"
                    raise RequestError(f"{field}: the shared-memory extension is not supported; send the data in the request", field=field)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise RequestError(
                    f"{where}.contents: raw_input_contents is set, so no input may have typed contents",
                    field=f"{where}.contents",
                )
            field = f"raw_input_contents[{index}]"
            data = raw_contents[index]  # one read: each may copy the bytes out of the message
            check_size(tensor.name, tensor.datatype, shape, len(data), where, field)
            inputs.append(GrpcInput(tensor.name, tensor.datatype, shape, data, None, field))
        else:
            field = _check_contents(tensor.name, tensor.datatype, shape, tensor.contents, where)
            inputs.append(GrpcInput(tensor.name, tensor.datatype, shape, None, tensor.contents, field))
    outputs = list(message.outputs)
    for index, output in enumerate(outputs):
        if output.parameters and "classification" in output.parameters:
            field = f"outputs[{index}].parameters.classification"
            raise RequestError(f"{field}: the classification extension is not supported", field=field)
    return GrpcRequest(inputs, outputs, message.id or None, raw)


def infer_response(
    *,
    model_name: str,
    model_version: int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    signature: Signature,
    raw: bool,
    parameters: Mapping[str, Any] | None = None,
) -> ModelInferResponse:
    """The response: outputs as raw contents (``raw``, or any output FP16) or typed."""
    specs = {spec.name: spec for spec in signature.outputs}
    converted = [(name, *output_array(name, array, specs.get(name))) for name, array in outputs.items()]
    raw = raw or any(datatype == "FP16" for _, _, datatype in converted)
    response = ModelInferResponse(model_name=model_name, model_version=str(model_version), id=request_id or "")
    for name, array, datatype in converted:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(encode_raw(array, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()
            )
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    for key, value in (parameters or {}).items():
        response.parameters[key].string_param = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return response


def _check_contents(name: str, datatype: str, shape: list[int], contents: InferTensorContents, where: str) -> str:
    """The typed field ``datatype`` travels in, once it holds as many values as ``shape``
    and no other field holds any; a RequestError otherwise."""
    if datatype not in DATATYPES:
        raise RequestError(
            f"{where}.datatype: unknown datatype '{shown(datatype)}'; use one of {', '.join(DATATYPES)}",
            field=f"{where}.datatype",
        )
    count = count_of(shape, where)
    expected = CONTENTS.get(datatype)
    if expected is None:
        raise RequestError(
            f"{where}.contents: {datatype} has no typed contents field; send it in raw_input_contents",
            field=f"{where}.contents",
        )
    field = f"{where}.contents.{expected}"
    for descriptor, values in contents.ListFields():
        if descriptor.name != expected and len(values):
            raise RequestError(
                f"{where}.contents.{descriptor.name}: input '{shown(name)}' is {datatype}, whose values go in {expected}",
                field=f"{where}.contents.{descriptor.name}",
            )
    got = len(getattr(contents, expected))
    if got != count:
        raise RequestError(f"{field}: has {got} values but shape {shape} needs {count}", field=field)
    return field


def _typed_array(
    contents: InferTensorContents, datatype: str, shape: list[int], field: str, *, nulls: bool
) -> np.ndarray[Any, Any]:
    values = getattr(contents, CONTENTS[datatype])
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        for index, value in enumerate(values):
            try:
                array[index] = value.decode()
            except UnicodeDecodeError:
                raise RequestError(f"{field}: element {index} is not UTF-8 text", field=field) from None
        return array.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # INT8/16 and UINT8/16 travel as 32-bit values: each must fit the datatype.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise RequestError(
                f"{field}: a value is out of range for {datatype} ({info.min} to {info.max})", field=field
            )
        return wide.astype(dtype).reshape(shape)
    array = np.array(values, dtype=dtype)
    check_floats(array, datatype, field, nulls=nulls)
    return array.reshape(shape)
