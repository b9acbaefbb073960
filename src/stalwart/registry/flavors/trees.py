"""Gradient-boosted trees in their native formats: LightGBM text and XGBoost UBJSON.

Both take a Booster or the scikit-learn style wrapper. For a classifier the flavor records
the class labels, so ``predict`` answers labels and ``predict_proba`` one column per class,
exactly as the scikit-learn wrapper would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.errors import FlavorError
from stalwart.registry.flavors.base import (
    DEFAULT_POLICY,
    Arrays,
    LoadPolicy,
    Predictor,
    Serialized,
    as_matrix,
)
from stalwart.registry.signature import Signature, TensorSpec, datatype_of, infer_tensors

__all__ = ["LightGBMFlavor", "XGBoostFlavor"]


class _TreeFlavor:
    """What LightGBM and XGBoost share; subclasses say how to save, load and score."""

    name = ""
    suffix = ""
    _module = ""

    def accepts(self, model: object) -> bool:
        return type(model).__module__.split(".")[0] == self._module

    def serialize(self, model: object, *, sample: object | None, options: Mapping[str, Any]) -> Serialized:
        classes = getattr(model, "classes_", None)
        booster = self._booster(model)
        opts: dict[str, Any] = {"objective": self._objective(booster)}
        if classes is not None:
            opts["classes"] = np.asarray(classes).tolist()
        return Serialized(self._save(booster), opts)

    def signature(self, model: object, sample: object | None, options: Mapping[str, Any]) -> Signature:
        booster = self._booster(model) if not self._is_booster(model) else model
        if sample is not None:
            inputs = infer_tensors(sample)
        else:
            names = self._feature_names(booster)
            if names:
                inputs = [TensorSpec(n, "FP64", [-1]) for n in names]
            else:
                inputs = [TensorSpec("input-0", "FP64", [-1, self._n_features(booster)])]
        classes = options.get("classes")
        if classes is None and (found := getattr(model, "classes_", None)) is not None:
            classes = np.asarray(found).tolist()
        if classes is not None:
            label_type = datatype_of(np.asarray(classes).dtype)
            outputs = [
                TensorSpec("predict", label_type, [-1]),
                TensorSpec("predict_proba", "FP64", [-1, len(classes)]),
            ]
        else:
            # A bare Booster answers one score per row, or one per class for a multiclass
            # objective: learn which by scoring one row of zeros.
            scored = self._score(booster, np.zeros((1, self._n_features(booster))))
            outputs = [TensorSpec("predict", "FP64", [-1, *scored.shape[1:]])]
        return Signature(inputs=inputs, outputs=outputs)

    def predictor(self, model: object, signature: Signature, options: Mapping[str, Any]) -> Predictor:
        classes = options.get("classes")
        return _TreePredictor(
            score=lambda x: self._score(model, x),
            signature=signature,
            classes=np.asarray(classes) if classes is not None else None,
        )

    # What each library does its own way.
    def _booster(self, model: object) -> Any:
        raise NotImplementedError

    def _is_booster(self, model: object) -> bool:
        raise NotImplementedError

    def _objective(self, booster: Any) -> str:
        raise NotImplementedError

    def _save(self, booster: Any) -> bytes:
        raise NotImplementedError

    def _feature_names(self, booster: Any) -> list[str] | None:
        raise NotImplementedError

    def _n_features(self, booster: Any) -> int:
        raise NotImplementedError

    def _score(self, booster: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        raise NotImplementedError


class LightGBMFlavor(_TreeFlavor):
    name = "lightgbm"
    suffix = ".lgb.txt"
    _module = "lightgbm"

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        lgb = require("lightgbm", extra="lightgbm", purpose="LightGBM models")
        try:
            return lgb.Booster(model_str=data.decode())
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
            raise FlavorError(f"LightGBM cannot load this model: {exc}") from exc

    def _is_booster(self, model: object) -> bool:
        return type(model).__name__ == "Booster"

    def _booster(self, model: object) -> Any:
        if self._is_booster(model):
            return model
        booster = getattr(model, "booster_", None)
        if booster is None:
            raise FlavorError(f"{type(model).__name__} is not fitted; fit it before registering")
        return booster

    def _objective(self, booster: Any) -> str:
        return str(booster.params.get("objective") or booster.dump_model().get("objective", ""))

    def _save(self, booster: Any) -> bytes:
        return booster.model_to_string().encode()  # type: ignore[no-any-return]

    def _feature_names(self, booster: Any) -> list[str] | None:
        names = [str(n) for n in booster.feature_name()]
        # LightGBM invents Column_<i> when trained on a bare array: those are not names.
        return None if all(n == f"Column_{i}" for i, n in enumerate(names)) else names

    def _n_features(self, booster: Any) -> int:
        return int(booster.num_feature())

    def _score(self, booster: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(booster.predict(x, num_threads=1))


class XGBoostFlavor(_TreeFlavor):
    name = "xgboost"
    suffix = ".ubj"
    _module = "xgboost"

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        xgb = require("xgboost", extra="xgboost", purpose="XGBoost models")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgb.core.XGBoostError as exc:
            raise FlavorError(f"XGBoost cannot load this model: {exc}") from exc
        booster.set_param({"nthread": 1})
        return booster

    def _is_booster(self, model: object) -> bool:
        return type(model).__name__ == "Booster"

    def _booster(self, model: object) -> Any:
        if self._is_booster(model):
            return model
        try:
            return model.get_booster()  # type: ignore[attr-defined]
        except (AttributeError, ValueError) as exc:
            raise FlavorError(f"{type(model).__name__} is not fitted; fit it before registering") from exc

    def _objective(self, booster: Any) -> str:
        return str(json.loads(booster.save_config())["learner"]["objective"]["name"])

    def _save(self, booster: Any) -> bytes:
        return bytes(booster.save_raw("ubj"))

    def _feature_names(self, booster: Any) -> list[str] | None:
        names = booster.feature_names
        return [str(n) for n in names] if names else None

    def _n_features(self, booster: Any) -> int:
        return int(booster.num_features())

    def _score(self, booster: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(booster.inplace_predict(x, validate_features=False))


class _TreePredictor:
    def __init__(self, score: Any, signature: Signature, classes: np.ndarray[Any, Any] | None) -> None:
        self._score = score
        self._signature = signature
        self._classes = classes

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        raw = self._score(as_matrix(inputs, self._signature))
        if self._classes is None:
            return {"predict": raw}
        proba = np.column_stack([1.0 - raw, raw]) if raw.ndim == 1 else raw
        result: Arrays = {}
        if "predict_proba" in outputs:
            result["predict_proba"] = proba.astype(np.float64, copy=False)
        if "predict" in outputs:
            result["predict"] = self._classes[np.argmax(proba, axis=1)]
        return result
