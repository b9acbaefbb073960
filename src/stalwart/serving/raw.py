"""Raw tensor bytes: how the binary tensor data extension (REST) and gRPC's raw contents
carry a tensor.

Little-endian, row-major, no padding; BOOL one byte (0 or 1) per element; BYTES each
element a 4-byte little-endian unsigned length then that many bytes (UTF-8 text here, as
BYTES are text in JSON). Sizes are checked against the declared shape and datatype before
anything is allocated (:func:`check_size`); decoding is then a view of the client's buffer
(``np.frombuffer``, no copy) when it is aligned for the datatype, else one copy. Arrays
decoded without a copy are read-only: a model that writes into its inputs must copy them.

The values are held to the JSON decoder's rules, so a request means the same whatever
encoding it came in: infinities are refused, NaN is a missing value (kept only when the
model has an input schema, whose policies decide), BOOL bytes other than 0 and 1 and
BYTES that are not UTF-8 are refused.

>>> raw = encode_raw(np.array([[1.0, 2.0]]), "FP64")
>>> check_size("x", "FP64", [1, 2], len(raw), "inputs[0]", "inputs[0].parameters.binary_data_size")
2
>>> decode_raw(memoryview(raw), "FP64", [1, 2], "inputs[0]", "inputs[0]").tolist()
[[1.0, 2.0]]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from stalwart.errors import RequestError
from stalwart.registry.signature import DATATYPES
from stalwart.serving.codec import MAX_DIMENSION, MAX_RANK, MAX_VALUES, shown

__all__ = ["check_floats", "check_size", "count_of", "decode_raw", "encode_raw", "itemsize"]

# The wire's dtype per datatype: numpy's, little-endian. BYTES has no fixed size.
_WIRE: dict[str, np.dtype[Any]] = {
    name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"
}
_LENGTH = struct.Struct("<I")


def itemsize(datatype: str) -> int | None:
    """Bytes per element of ``datatype`` on the wire (None: BYTES, whose elements vary)."""
    wire = _WIRE.get(datatype)
    return None if wire is None else wire.itemsize


def count_of(shape: Sequence[int], where: str) -> int:
    """The number of elements ``shape`` describes, once its rank and dimensions are within
    the JSON decoder's bounds (a RequestError naming ``where.shape`` otherwise)."""
    if len(shape) > MAX_RANK:
        raise RequestError(f"{where}.shape: rank {len(shape)} is over the limit of {MAX_RANK}", field=f"{where}.shape")
    for dim in shape:
        if not 0 <= dim <= MAX_DIMENSION:
            raise RequestError(
                f"{where}.shape: dimension {dim} is not between 0 and {MAX_DIMENSION}", field=f"{where}.shape"
            )
    count = math.prod(shape)
    if count > MAX_VALUES:
        raise RequestError(
            f"{where}.shape: {list(shape)} describes {count} values; a tensor holds at most {MAX_VALUES}",
            field=f"{where}.shape",
        )
    return count


def check_size(name: str, datatype: str, shape: Sequence[int], size: int, where: str, field: str) -> int:
    """The element count, once ``size`` bytes can hold input ``name``, a ``datatype``
    tensor of ``shape`` (exactly, or for BYTES at least a length prefix per element); else
    a RequestError naming ``field`` and the input. Nothing is allocated."""
    if datatype != "BYTES" and datatype not in _WIRE:
        raise RequestError(
            f"{where}.datatype: unknown datatype '{shown(datatype)}'; use one of {', '.join(DATATYPES)}",
            field=f"{where}.datatype",
        )
    count = count_of(shape, where)
    width = itemsize(datatype)
    if width is None:
        if size < _LENGTH.size * count:
            raise RequestError(
                f"{field}: input '{shown(name)}' of shape {list(shape)} has {count} BYTES elements, "
                f"which take at least {_LENGTH.size * count} bytes (a 4-byte length each, then its bytes); got {size}",
                field=field,
            )
    elif size != count * width:
        raise RequestError(
            f"{field}: input '{shown(name)}', {datatype} of shape {list(shape)}, takes "
            f"{count * width} bytes ({count} x {width}), got {size}",
            field=field,
        )
    return count


def decode_raw(
    data: memoryview, datatype: str, shape: Sequence[int], where: str, field: str, *, nulls: bool = False
) -> np.ndarray[Any, Any]:
    """``data`` (whose size :func:`check_size` accepted) as an array of ``datatype`` and
    ``shape``; values the JSON decoder would refuse are a RequestError naming ``field``
    (``nulls``: NaN, a missing value, is kept for validation to judge)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _strings(data, count, field).reshape(shape)
    wire = _WIRE[datatype]
    array: np.ndarray[Any, Any] = np.frombuffer(data, dtype=wire, count=count)
    if not wire.isnative:
        array = array.astype(wire.newbyteorder("="))  # a big-endian machine: one conversion
    elif not array.flags.aligned:
        # After a JSON header of any length the data rarely starts on an 8-byte boundary;
        # numpy copes with unaligned arrays, but compiled model code may not.
        array = array.copy()
    if datatype == "BOOL":
        if count and array.view(np.uint8).max() > 1:
            raise RequestError(f"{field}: BOOL data must be bytes 0 (false) or 1 (true)", field=field)
    else:
        check_floats(array, datatype, field, nulls=nulls)
    return array.reshape(shape)


def check_floats(array: np.ndarray[Any, Any], datatype: str, field: str, *, nulls: bool = False) -> None:
    """Refuse what JSON cannot carry in a float tensor: an infinity always, NaN unless
    ``nulls`` (a missing value, for the input schema's policies)."""
    if array.dtype.kind != "f" or not array.size or np.isfinite(array).all():
        return
    if np.isinf(array).any():
        raise RequestError(f"{field}: {datatype} data must be finite; a value is infinite", field=field)
    if not nulls:
        raise RequestError(
            f"{field}: {datatype} data holds NaN; send values (a model with an input schema "
            f"takes NaN as a missing value, for its policies to decide)",
            field=field,
        )


def encode_raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """``array`` as raw bytes of ``datatype`` (already its dtype, as the signature made it)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel().tolist():
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    wire = _WIRE[datatype]
    if array.dtype != wire:
        array = array.astype(wire)
    return np.ascontiguousarray(array).tobytes()


def _strings(data: memoryview, count: int, field: str) -> np.ndarray[Any, Any]:
    """``count`` length-prefixed UTF-8 strings filling ``data`` exactly."""
    out = np.empty(count, dtype=object)
    at = 0
    end = len(data)
    for index in range(count):
        if at + _LENGTH.size > end:
            raise RequestError(f"{field}: BYTES data ends inside element {index}'s length", field=field)
        (length,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        if at + length > end:
            raise RequestError(
                f"{field}: BYTES element {index} declares {length} bytes, only {end - at} remain", field=field
            )
        try:
            out[index] = str(data[at : at + length], "utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{field}: BYTES element {index} is not UTF-8 text", field=field) from None
        at += length
    if at != end:
        raise RequestError(f"{field}: {end - at} bytes follow the last of {count} BYTES elements", field=field)
    return out
