"""Stalwart: run machine-learning models in production.

The public surface is small and lazy: ``import stalwart`` loads none of numpy, SQLAlchemy,
Starlette or any model library; each name below is imported on first use.

>>> import stalwart
>>> mv = stalwart.register_model("churn", model, sample=X_train[:100])  # doctest: +SKIP
>>> mv.version                                                          # doctest: +SKIP
1
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stalwart._version import __version__

# name -> module that defines it; resolved by __getattr__ on first access.
_EXPORTS: dict[str, str] = {
    "Registry": "stalwart.registry",
    "ModelVersion": "stalwart.registry",
    "Signature": "stalwart.registry",
    "TensorSpec": "stalwart.registry",
    "Settings": "stalwart.config",
    "StalwartError": "stalwart.errors",
    "create_app": "stalwart.serving.app",
    "register_model": "stalwart.api",
    "get_model": "stalwart.api",
    "Alert": "stalwart.project",
    "Deployment": "stalwart.project",
    "Entity": "stalwart.project",
    "SqlSource": "stalwart.project",
    "FileSource": "stalwart.project",
    "RequestSource": "stalwart.project",
    "CallableSource": "stalwart.project",
    "FeatureSet": "stalwart.project",
    "Latest": "stalwart.project",
    "Window": "stalwart.project",
    "Transform": "stalwart.project",
    "TrainingSet": "stalwart.features",
    "build_training_set": "stalwart.offline",
    "Project": "stalwart.project",
    "load_project": "stalwart.project",
    "read_predictions": "stalwart.monitoring.prediction_reads",
}

__all__ = [
    "Alert",
    "CallableSource",
    "Deployment",
    "Entity",
    "FeatureSet",
    "FileSource",
    "Latest",
    "ModelVersion",
    "Project",
    "Registry",
    "RequestSource",
    "Settings",
    "Signature",
    "SqlSource",
    "StalwartError",
    "TensorSpec",
    "TrainingSet",
    "Transform",
    "Window",
    "__version__",
    "build_training_set",
    "create_app",
    "get_model",
    "load_project",
    "read_predictions",
    "register_model",
]

if TYPE_CHECKING:
    from stalwart.api import get_model, register_model
    from stalwart.config import Settings
    from stalwart.errors import StalwartError
    from stalwart.features import TrainingSet
    from stalwart.monitoring.prediction_reads import read_predictions
    from stalwart.offline import build_training_set
    from stalwart.project import (
        Alert,
        CallableSource,
        Deployment,
        Entity,
        FeatureSet,
        FileSource,
        Latest,
        Project,
        RequestSource,
        SqlSource,
        Transform,
        Window,
        load_project,
    )
    from stalwart.registry import ModelVersion, Registry, Signature, TensorSpec
    from stalwart.serving.app import create_app


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stalwart' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
