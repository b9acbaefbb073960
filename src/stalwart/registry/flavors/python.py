"""A plain Python class with ``predict``, saved without pickle.

The artifact is JSON: the class's import path and its instance attributes (numbers,
strings, lists, dicts and numpy arrays). Loading imports the class from the server's
own ``sys.path`` (code the operator installed), and only from modules the server allows
(``STALWART_PYTHON_MODULES``, checked before the import runs any of the module's code),
then restores the attributes, so no bytes from the artifact are ever executed. A class holding anything else can be registered with
``trust_pickle=True``.

``predict`` receives what the sample was: a 2-D array for a matrix signature, a dict of
columns for a columnar one. It returns an array (the ``predict`` output) or a dict of
named arrays.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from stalwart.config import is_module_path
from stalwart.errors import FlavorError
from stalwart.registry.flavors.base import DEFAULT_POLICY, Arrays, LoadPolicy, Predictor, Serialized
from stalwart.registry.signature import Signature, infer_tensors, sample_arrays

__all__ = ["PythonFlavor"]


class PythonFlavor:
    name = "python"
    suffix = ".json"

    def accepts(self, model: object) -> bool:
        return callable(getattr(model, "predict", None))

    def serialize(self, model: object, *, sample: object | None, options: Mapping[str, Any]) -> Serialized:
        if options.get("trust_pickle"):
            return Serialized(pickle.dumps(model, protocol=5), {}, trust="pickle")
        cls = type(model)
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise FlavorError(
                f"class {cls.__qualname__} is defined in a script or a function, so a server "
                f"cannot import it; move it into an importable module (or pass trust_pickle=True)"
            )
        try:
            state = msgspec.json.encode(vars(model), enc_hook=_encode_value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise FlavorError(
                f"cannot save {cls.__qualname__}'s attributes as data ({exc}); keep them to "
                f"numbers, strings, lists, dicts and numpy arrays, or pass trust_pickle=True"
            ) from exc
        document = {"class": f"{cls.__module__}:{cls.__qualname__}", "state": msgspec.Raw(state)}
        return Serialized(msgspec.json.encode(document))

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        if trust == "pickle":
            policy.check_pickle()
            return pickle.loads(data)  # noqa: S301 - explicit user trust, hash verified
        try:
            document = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise FlavorError(f"not a python-flavor artifact: {exc}") from exc
        if not isinstance(document, dict) or "class" not in document or "state" not in document:
            raise FlavorError("not a python-flavor artifact: expected a JSON object with 'class' and 'state'")
        module_name, qualname = _class_path(document["class"])
        # Before the import: importing runs the module's top-level code.
        policy.check_module(module_name)
        state = document["state"]
        if not isinstance(state, dict):
            raise FlavorError("not a python-flavor artifact: 'state' must be an object of attributes")
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise FlavorError(
                f"cannot import the model's class {module_name}:{qualname} ({exc}); install "
                f"the code that defines it where the server runs"
            ) from exc
        if not isinstance(target, type):
            raise FlavorError(f"{module_name}:{qualname} is not a class; the artifact must name the model's class")
        cls: Any = target  # a class of the user's; its own __new__ makes the instance
        instance = cls.__new__(cls)
        instance.__dict__.update({k: _decode_value(v) for k, v in state.items()})
        return instance

    def signature(self, model: object, sample: object | None, options: Mapping[str, Any]) -> Signature:
        if sample is None:
            raise FlavorError(
                "a python-flavor model cannot describe its own inputs; pass sample= "
                "(a few rows) or signature="
            )
        inputs = infer_tensors(sample)
        trial = Signature(inputs=inputs, outputs=[])
        produced = _PythonPredictor(model, trial).predict(sample_arrays(sample, inputs), [])
        outputs = infer_tensors(produced)
        return Signature(inputs=inputs, outputs=outputs)

    def predictor(self, model: object, signature: Signature, options: Mapping[str, Any]) -> Predictor:
        return _PythonPredictor(model, signature)


class _PythonPredictor:
    def __init__(self, model: Any, signature: Signature) -> None:
        self._predict = model.predict
        self._signature = signature

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        x: Any = (
            dict(inputs) if self._signature.is_columnar else inputs[self._signature.inputs[0].name]
        )
        result = self._predict(x)
        if isinstance(result, Mapping):
            produced = {str(k): np.asarray(v) for k, v in result.items()}
        else:
            produced = {"predict": np.asarray(result)}
        if not outputs:
            return produced
        return {name: produced[name] for name in outputs}


def _class_path(value: object) -> tuple[str, str]:
    """``(module, qualname)`` from an artifact's ``"module:Class"``, or a FlavorError.

    Only dotted identifiers pass, and no dunder attribute (``Model.__init__.__globals__``
    would walk from a class to whatever its module holds).
    """
    if isinstance(value, str):
        module_name, colon, qualname = value.partition(":")
        parts = qualname.split(".")
        if (
            colon
            and is_module_path(module_name)
            and all(p.isidentifier() and not (p.startswith("__") and p.endswith("__")) for p in parts)
        ):
            return module_name, qualname
    raise FlavorError(
        f"not a python-flavor artifact: 'class' must be 'module:Class' (like "
        f"'mypkg.models:Model'), not {value!r}"
    )


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not data")


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value and "dtype" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value
