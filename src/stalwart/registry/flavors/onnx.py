"""ONNX models, run by onnxruntime.

Accepts an ``onnx.ModelProto``, the bytes of one, or a scikit-learn model to convert with
skl2onnx (``register_model(..., flavor="onnx", sample=X)``). The signature comes from the
graph itself; the batch dimension is always variable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.errors import FlavorError
from stalwart.registry.flavors.base import DEFAULT_POLICY, Arrays, LoadPolicy, Predictor, Serialized
from stalwart.registry.signature import Signature, TensorSpec

__all__ = ["OnnxFlavor"]

_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxFlavor:
    name = "onnx"
    suffix = ".onnx"

    def accepts(self, model: object) -> bool:
        return type(model).__module__.split(".")[0] == "onnx"

    def serialize(self, model: object, *, sample: object | None, options: Mapping[str, Any]) -> Serialized:
        if isinstance(model, bytes | bytearray):
            data = bytes(model)
        elif hasattr(model, "SerializeToString"):
            data = model.SerializeToString()
        elif type(model).__module__.split(".")[0] == "sklearn":
            data = _convert_sklearn(model, sample)
        else:
            raise FlavorError(
                f"the onnx flavor takes an onnx.ModelProto, its bytes, or a scikit-learn "
                f"model to convert; got {type(model).__name__}"
            )
        self.deserialize(data, {}, trust=None)  # refuse a graph onnxruntime cannot load now
        threads = options.get("intra_op_threads")
        return Serialized(data, {"intra_op_threads": threads} if threads else {})

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        ort = require("onnxruntime", extra="onnx", purpose="ONNX models")
        session_options = ort.SessionOptions()
        # One thread per call by default: the server runs calls side by side and batches
        # rows, so intra-op threads would only compete with each other for the cores.
        session_options.intra_op_num_threads = int(options.get("intra_op_threads") or 1)
        session_options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(
                data, sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise FlavorError(f"onnxruntime cannot load this model: {exc}") from exc

    def signature(self, model: object, sample: object | None, options: Mapping[str, Any]) -> Signature:
        session = model if hasattr(model, "get_inputs") else self.deserialize(
            self.serialize(model, sample=sample, options=options).data, options, trust=None
        )
        return Signature(
            inputs=[_spec(node) for node in session.get_inputs()],  # type: ignore[attr-defined]
            outputs=[_spec(node) for node in session.get_outputs()],  # type: ignore[attr-defined]
        )

    def predictor(self, model: object, signature: Signature, options: Mapping[str, Any]) -> Predictor:
        return _OnnxPredictor(model)


class _OnnxPredictor:
    def __init__(self, session: Any) -> None:
        self._session = session

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        results = self._session.run(list(outputs), dict(inputs))
        return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}


def _spec(node: Any) -> TensorSpec:
    datatype = _ONNX_TYPES.get(node.type)
    if datatype is None:
        raise FlavorError(
            f"ONNX tensor '{node.name}' has type {node.type}, which the Open Inference "
            f"Protocol cannot carry; export the model with tensor inputs and outputs "
            f"(for scikit-learn classifiers: options={{'zipmap': False}})"
        )
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or [-1])]
    return TensorSpec(node.name, datatype, [-1, *dims[1:]])


def _convert_sklearn(model: object, sample: object | None) -> bytes:
    skl2onnx = require("skl2onnx", extra="onnx", purpose="converting scikit-learn models to ONNX")
    if sample is None:
        raise FlavorError("converting a scikit-learn model to ONNX needs sample= (a few rows)")
    x = np.asarray(sample, dtype=np.float32)[:1]
    options: dict[int, dict[str, Any]] = {}
    if hasattr(model, "predict_proba"):
        options[id(model)] = {"zipmap": False}
    try:
        proto = skl2onnx.to_onnx(model, x, options=options, target_opset=None)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        raise FlavorError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc
    return proto.SerializeToString()  # type: ignore[no-any-return]
