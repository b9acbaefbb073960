"""Declaring a deployment: a named endpoint that binds a model to the features it needs.

>>> fraud = Deployment("fraud", model="fraud")          # the latest registered version
>>> pinned = Deployment("fraud-v3", model="fraud:3")    # one version, whatever comes later

Without ``features=``, a deployment serves the features the model was trained with (its
training set's feature list), and refuses to serve when the project's definition of one of
them is not the version the model saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart.errors import ConfigError

__all__ = ["Deployment"]


@dataclass(frozen=True, eq=False)
class Deployment:
    """A named endpoint, ``POST /v1/deployments/{name}/predict``."""

    name: str
    model: str
    features: Sequence[Any] | None = None
    description: str = ""
    model_name: str = field(init=False)
    model_version: int | None = field(init=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "_").replace("_", "a").isalnum():
            raise ConfigError(f"deployment name {self.name!r} may hold only letters, digits, '-' and '_'")
        name, sep, version = self.model.partition(":")
        if not name or (sep and not version.isdigit()):
            raise ConfigError(f"deployment '{self.name}': model {self.model!r} must be 'name' or 'name:version'")
        object.__setattr__(self, "model_name", name)
        object.__setattr__(self, "model_version", int(version) if sep else None)
