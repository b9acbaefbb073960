"""scikit-learn models, saved with skops (no pickle unless the user explicitly trusts it).

skops refuses to load any type outside its allow-list. Types from scikit-learn's own
namespace (the Cython ``Tree`` of every tree ensemble, for instance) are trusted
automatically, because they come from the library itself; anything else, such as a
user's own transformer class, must be named in ``trusted_types`` at registration. The
trusted list is recorded on the version and is the only list used at load time.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.errors import FlavorError, UntrustedArtifactError
from stalwart.registry.flavors.base import (
    DEFAULT_POLICY,
    Arrays,
    LoadPolicy,
    Predictor,
    Serialized,
    as_matrix,
)
from stalwart.registry.signature import (
    Signature,
    TensorSpec,
    datatype_of,
    infer_tensors,
    sample_arrays,
)

__all__ = ["SklearnFlavor"]

_OUTPUT_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function")
_LIBRARY_PREFIXES = ("sklearn.", "numpy.")


class SklearnFlavor:
    name = "sklearn"
    suffix = ".skops"

    def accepts(self, model: object) -> bool:
        return type(model).__module__.split(".")[0] == "sklearn" or _is_estimator(model)

    def serialize(self, model: object, *, sample: object | None, options: Mapping[str, Any]) -> Serialized:
        sio = require("skops.io", extra="sklearn", purpose="saving scikit-learn models")
        if options.get("trust_pickle"):
            return Serialized(pickle.dumps(model, protocol=5), {}, trust="pickle")
        try:
            data = sio.dumps(model)
        except (TypeError, AttributeError) as exc:
            raise FlavorError(
                f"skops cannot save this {type(model).__name__}: {exc}. If you trust the "
                f"model's code, register it with trust_pickle=True"
            ) from exc
        untrusted = sio.get_untrusted_types(data=data)
        allowed = set(options.get("trusted_types") or [])
        library = {t for t in untrusted if t.startswith(_LIBRARY_PREFIXES)}
        unknown = sorted(set(untrusted) - allowed - library)
        if unknown:
            raise UntrustedArtifactError(
                f"the model contains types skops does not trust: {', '.join(unknown)}. "
                f"Check them, then register with trusted_types={unknown!r} "
                f"(or trust_pickle=True to save with pickle)"
            )
        return Serialized(data, {"trusted_types": sorted(library | (allowed & set(untrusted)))})

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        if trust == "pickle":
            # Reached only for versions the user registered with trust_pickle=True, and only
            # after the registry has verified the artifact's sha256. joblib reads both its
            # own files and plain pickles (it ships with scikit-learn). A hardened server
            # refuses even that: the trust is recorded in a row anyone with the registry
            # database could write.
            policy.check_pickle()
            joblib = require("joblib", extra="sklearn", purpose="loading trusted pickles")
            try:
                return joblib.load(io.BytesIO(data))
            except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                raise FlavorError(f"not a pickle or joblib file: {exc}") from exc
        sio = require("skops.io", extra="sklearn", purpose="loading scikit-learn models")
        trusted = list(options.get("trusted_types") or [])
        try:
            found = sio.get_untrusted_types(data=data)
        except zipfile.BadZipFile as exc:
            raise UntrustedArtifactError(
                "this is not a skops file; if it is a pickle or joblib file you trust, "
                "register it with trust_pickle=True (--trust-pickle on the command line)"
            ) from exc
        untrusted = set(found) - set(trusted)
        if untrusted:
            raise UntrustedArtifactError(
                f"the artifact contains types that were not trusted at registration: "
                f"{', '.join(sorted(untrusted))}; re-register the model naming them in trusted_types"
            )
        return sio.loads(data, trusted=trusted)

    def signature(self, model: object, sample: object | None, options: Mapping[str, Any]) -> Signature:
        if sample is not None:
            # Describe the outputs by calling the model the way serving will call it.
            inputs = infer_tensors(sample)
            methods = _methods(model)
            trial = Signature(inputs, [TensorSpec(m, "FP64", [-1]) for m in methods])
            produced = _SklearnPredictor(model, trial).predict(sample_arrays(sample, inputs), methods)
            outputs = [
                TensorSpec(m, datatype_of(out.dtype), [-1, *out.shape[1:]])
                for m, out in produced.items()
            ]
            return Signature(inputs=inputs, outputs=outputs)
        n_features = getattr(model, "n_features_in_", None)
        if n_features is None:
            raise FlavorError(
                "cannot tell this model's inputs: it is not fitted or does not record "
                "n_features_in_; pass sample= (a few training rows) or signature="
            )
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            inputs = [TensorSpec(str(n), "FP64", [-1]) for n in names]
        else:
            inputs = [TensorSpec("input-0", "FP64", [-1, int(n_features)])]
        classes = getattr(model, "classes_", None)
        outputs = []
        if classes is not None:
            outputs.append(TensorSpec("predict", datatype_of(np.asarray(classes).dtype), [-1]))
            for method in ("predict_proba", "predict_log_proba"):
                if hasattr(model, method):
                    outputs.append(TensorSpec(method, "FP64", [-1, len(classes)]))
        else:
            outputs.append(TensorSpec("predict", "FP64", [-1]))
        return Signature(inputs=inputs, outputs=outputs)

    def predictor(self, model: object, signature: Signature, options: Mapping[str, Any]) -> Predictor:
        return _SklearnPredictor(model, signature)


class _SklearnPredictor:
    def __init__(self, model: object, signature: Signature) -> None:
        self._signature = signature
        self._methods = {
            spec.name: getattr(model, spec.name)
            for spec in signature.outputs
            if spec.name in _OUTPUT_METHODS and hasattr(model, spec.name)
        }
        self._frame_columns: list[str] | None = None
        if signature.is_columnar and any(spec.datatype == "BYTES" for spec in signature.inputs):
            # String columns need a DataFrame (a ColumnTransformer selects them by name).
            self._frame_columns = signature.input_names
        elif getattr(model, "feature_names_in_", None) is not None:
            # Fitted on a DataFrame, served from numpy columns in the same order (the
            # signature came from those names): the warning says nothing we don't know.
            warnings.filterwarnings(
                "ignore", message="X does not have valid feature names", category=UserWarning
            )

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        if self._frame_columns is not None:
            pd = require("pandas", extra="sklearn", purpose="string features for scikit-learn")
            x: Any = pd.DataFrame({name: inputs[name] for name in self._frame_columns})
        else:
            x = as_matrix(inputs, self._signature)
        return {name: np.asarray(self._methods[name](x)) for name in outputs}


def _methods(model: object) -> list[str]:
    found = [m for m in ("predict", "predict_proba") if hasattr(model, m)]
    if not found:
        raise FlavorError(f"{type(model).__name__} has no predict method; it cannot be served")
    return found


def _is_estimator(model: object) -> bool:
    import sys

    base = sys.modules.get("sklearn.base")
    return base is not None and isinstance(model, base.BaseEstimator)
