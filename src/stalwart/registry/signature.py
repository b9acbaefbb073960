"""Model signatures: the named, typed, shaped tensors a model takes and returns.

Datatypes are the Open Inference Protocol's names (``FP64``, ``INT64``, ``BYTES``...), so a
signature is also what ``GET /v2/models/{m}`` reports. A dimension of ``-1`` is variable;
the first dimension of every input is the batch (rows).

>>> import numpy as np
>>> sig = infer_signature(np.zeros((3, 4)))
>>> [(t.name, t.datatype, t.shape) for t in sig.inputs]
[('input-0', 'FP64', [-1, 4])]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from stalwart.errors import FlavorError

__all__ = [
    "DATATYPES",
    "Signature",
    "TensorSpec",
    "datatype_of",
    "infer_signature",
    "infer_tensors",
    "numpy_dtype",
    "sample_arrays",
]

# OIP datatype -> numpy dtype. BYTES travel as Python str objects (JSON strings).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_BY_DTYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for an OIP datatype name."""
    return DATATYPES[datatype]


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The OIP datatype name for a numpy dtype (strings and objects are ``BYTES``)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise FlavorError(
            f"numpy dtype {dtype} has no Open Inference Protocol datatype; "
            f"cast the data to a supported type (bool, int8..int64, uint8..uint64, float16..float64, str)"
        ) from None


class TensorSpec(msgspec.Struct, frozen=True):
    """One named tensor: OIP datatype and shape (``-1`` marks a variable dimension)."""

    name: str
    datatype: str
    shape: list[int]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise FlavorError(
                f"tensor '{self.name}': unknown datatype '{self.datatype}'; "
                f"use one of {', '.join(DATATYPES)}"
            )
        if not self.shape or any(d < -1 or d == 0 for d in self.shape):
            raise FlavorError(
                f"tensor '{self.name}': shape {self.shape} must be non-empty, "
                f"with positive sizes or -1 for a variable dimension"
            )

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]


class Signature(msgspec.Struct, frozen=True):
    """What a model takes and returns.

    ``inputs`` are either one 2-D tensor of rows (``[-1, n_features]``) or one tensor per
    feature column (``[-1]``), named by the feature.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def is_columnar(self) -> bool:
        """True when each input is one feature column rather than one matrix of rows."""
        return not (len(self.inputs) == 1 and len(self.inputs[0].shape) == 2)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise FlavorError(f"invalid signature: {exc}") from exc


def infer_tensors(sample: object, *, prefix: str = "input") -> list[TensorSpec]:
    """Tensor specs that describe ``sample``: an array, a DataFrame or a mapping of columns.

    A 2-D array becomes one ``[-1, n]`` tensor; a 1-D array one ``[-1]`` tensor; a
    DataFrame or a mapping one ``[-1]`` tensor per column, named by the column.
    """
    columns = _columns_of(sample)
    if columns is not None:
        return [
            TensorSpec(str(name), datatype_of(arr.dtype), [-1, *arr.shape[1:]])
            for name, arr in columns.items()
        ]
    arr = np.asarray(sample)
    if arr.ndim == 0:
        raise FlavorError("the sample is a scalar; give at least one row")
    return [TensorSpec(f"{prefix}-0", datatype_of(arr.dtype), [-1, *arr.shape[1:]])]


def infer_signature(sample_input: object, sample_output: object | None = None) -> Signature:
    """A signature from a sample input and, optionally, the model's output for it."""
    outputs: list[TensorSpec] = []
    if sample_output is not None:
        if isinstance(sample_output, Mapping):
            outputs = infer_tensors(sample_output)
        else:
            outputs = infer_tensors(sample_output, prefix="output")
    return Signature(inputs=infer_tensors(sample_input), outputs=outputs)


def sample_arrays(sample: object, inputs: list[TensorSpec], n: int = 2) -> dict[str, np.ndarray[Any, Any]]:
    """The first ``n`` rows of ``sample`` as the named arrays a predictor takes."""
    columns = _columns_of(sample)
    if columns is None:
        columns = {inputs[0].name: np.asarray(sample)}
    return {spec.name: np.asarray(columns[spec.name][:n], dtype=spec.dtype) for spec in inputs}


def _columns_of(sample: object) -> dict[str, np.ndarray[Any, Any]] | None:
    """Columns of a DataFrame-like or mapping sample; None for array-likes."""
    if isinstance(sample, Mapping):
        return {str(k): np.asarray(v) for k, v in sample.items()}
    columns = getattr(sample, "columns", None)
    if columns is not None and hasattr(sample, "__getitem__"):
        # pandas and polars both answer df[name] with a column that numpy can take.
        return {str(name): _column_array(sample[name]) for name in columns}
    return None


def _column_array(column: object) -> np.ndarray[Any, Any]:
    to_numpy = getattr(column, "to_numpy", None)
    if not callable(to_numpy):
        return np.asarray(column)
    dtype = getattr(column, "dtype", None)
    if getattr(dtype, "na_value", None) is not None and getattr(column, "hasnans", False):
        # A pandas nullable column with missing values: NaN for numbers, None otherwise,
        # never pd.NA (which no numpy dtype cast accepts).
        if getattr(dtype, "kind", "O") in "iuf":
            return np.asarray(to_numpy(dtype="float64", na_value=np.nan))
        return np.asarray(to_numpy(dtype=object, na_value=None))
    return np.asarray(to_numpy())
