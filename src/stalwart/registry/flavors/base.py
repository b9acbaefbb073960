"""What a flavor is: how one kind of model is saved, loaded, described and called.

A flavor turns a live model object into bytes (``serialize``), bytes back into a model
(``deserialize``, after the registry has verified their sha256), describes the model's
inputs and outputs (``signature``) and wraps it in a :class:`Predictor` that the serving
path calls with named numpy columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stalwart.errors import FlavorError, UntrustedArtifactError
from stalwart.pipeline import Arrays
from stalwart.registry.signature import Signature

__all__ = ["DEFAULT_POLICY", "Arrays", "LoadPolicy", "ModelFlavor", "Predictor", "Serialized", "as_matrix"]


@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """What loading an artifact may run, as the loading process's settings allow.

    ``allow_pickle``: whether versions registered with ``trust_pickle=True`` may be
    unpickled (``STALWART_ALLOW_PICKLE``). ``python_modules``: the module prefixes a
    python-flavor class may be imported from (``pkg`` allows ``pkg`` and ``pkg.*``); empty
    allows none. The registry resolves the setting's default (the project's package).
    """

    allow_pickle: bool = True
    python_modules: tuple[str, ...] = ()

    def check_pickle(self) -> None:
        """Refuse, unless pickles are allowed here."""
        if not self.allow_pickle:
            raise UntrustedArtifactError(
                "this version was registered with trust_pickle=True, and this server refuses "
                "pickles (STALWART_ALLOW_PICKLE=false); register the model again without "
                "trust_pickle, or allow pickles on this server if you trust every registrant"
            )

    def check_module(self, module: str) -> None:
        """Refuse, before anything is imported, a module outside the allowed prefixes."""
        if any(module == prefix or module.startswith(prefix + ".") for prefix in self.python_modules):
            return
        allowed = ", ".join(self.python_modules) or "none"
        raise UntrustedArtifactError(
            f"the model's class comes from '{module}', which is not an allowed module "
            f"(allowed: {allowed}); if you trust that code, allow its package with "
            f"STALWART_PYTHON_MODULES={module.split('.')[0]} where the model is loaded"
        )


DEFAULT_POLICY = LoadPolicy()


@dataclass(frozen=True, slots=True)
class Serialized:
    """A model as bytes, with what the flavor needs to load it again."""

    data: bytes
    options: dict[str, Any] = field(default_factory=dict)
    trust: str | None = None  # "pickle" when the user explicitly trusted a pickle


class Predictor(Protocol):
    """A loaded model, ready to be called on the serving path."""

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        """Compute the named ``outputs`` for a batch of rows.

        ``inputs`` are already checked against the signature: right names, datatypes and
        trailing shapes, the same number of rows each.
        """
        ...


class ModelFlavor(Protocol):
    """One kind of model (scikit-learn, ONNX, LightGBM, XGBoost, a Python class)."""

    name: str
    suffix: str

    def accepts(self, model: object) -> bool:
        """Whether ``model`` is a live object of this flavor (for automatic detection)."""
        ...

    def serialize(self, model: object, *, sample: object | None, options: Mapping[str, Any]) -> Serialized:
        """Bytes for ``model``; ``options`` are the user's (``trust_pickle``, ``trusted_types``)."""
        ...

    def deserialize(
        self, data: bytes, options: Mapping[str, Any], *, trust: str | None, policy: LoadPolicy = DEFAULT_POLICY
    ) -> object:
        """The model from verified bytes; must refuse anything not trusted, or not allowed
        by ``policy``."""
        ...

    def signature(self, model: object, sample: object | None, options: Mapping[str, Any]) -> Signature:
        """The model's signature, from a sample input where the model itself cannot tell."""
        ...

    def predictor(self, model: object, signature: Signature, options: Mapping[str, Any]) -> Predictor:
        """A :class:`Predictor` around the deserialised model."""
        ...


def as_matrix(inputs: Mapping[str, np.ndarray[Any, Any]], signature: Signature) -> np.ndarray[Any, Any]:
    """The rows as one 2-D array: the matrix input as is, or the columns side by side."""
    if not signature.is_columnar:
        return inputs[signature.inputs[0].name]
    columns = [inputs[spec.name] for spec in signature.inputs]
    if any(col.dtype == object for col in columns):
        raise FlavorError(
            "this flavor takes numeric inputs only; encode string features as numbers in the "
            "feature pipeline, or serve the model with the scikit-learn or python flavor"
        )
    return np.column_stack(columns)
