"""Model flavors, looked up by name and imported only when used.

Keeping the table as import paths means ``import stalwart`` never imports scikit-learn,
onnxruntime, LightGBM or XGBoost; each is imported the first time a model of its flavor is
saved or loaded.
"""

from __future__ import annotations

import importlib

from stalwart.errors import FlavorError
from stalwart.registry.flavors.base import LoadPolicy, ModelFlavor, Predictor, Serialized

__all__ = ["FLAVORS", "LoadPolicy", "ModelFlavor", "Predictor", "Serialized", "detect_flavor", "get_flavor"]

# name -> "module:class"; the order is the detection order (python, the catch-all, last).
FLAVORS: dict[str, str] = {
    "sklearn": "stalwart.registry.flavors.sklearn:SklearnFlavor",
    "onnx": "stalwart.registry.flavors.onnx:OnnxFlavor",
    "lightgbm": "stalwart.registry.flavors.trees:LightGBMFlavor",
    "xgboost": "stalwart.registry.flavors.trees:XGBoostFlavor",
    "python": "stalwart.registry.flavors.python:PythonFlavor",
}

_loaded: dict[str, ModelFlavor] = {}


def get_flavor(name: str) -> ModelFlavor:
    """The flavor called ``name``."""
    if name not in FLAVORS:
        raise FlavorError(f"unknown flavor '{name}'; use one of {', '.join(FLAVORS)}")
    flavor = _loaded.get(name)
    if flavor is None:
        module_name, _, class_name = FLAVORS[name].partition(":")
        flavor = getattr(importlib.import_module(module_name), class_name)()
        _loaded[name] = flavor
    return flavor


def detect_flavor(model: object) -> ModelFlavor:
    """The flavor of a live model object, from its type (LightGBM's and XGBoost's
    scikit-learn wrappers are their own flavors, not scikit-learn's)."""
    root = type(model).__module__.split(".")[0]
    if root in ("lightgbm", "xgboost", "onnx"):
        return get_flavor(root)
    for name in FLAVORS:
        flavor = get_flavor(name)
        if flavor.accepts(model):
            return flavor
    raise FlavorError(
        f"cannot tell how to serve a {type(model).__name__}; pass flavor= "
        f"(one of {', '.join(FLAVORS)})"
    )
