"""A project file: the Python module that declares entities, sources, feature sets,
deployments and alerts. The training script and the server import the same file, so both see the
same definitions (and the same FeatureSet versions).

Loading runs the file (its module-level code, nothing more); the project it returns is
plain declarations.
"""

from __future__ import annotations

import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stalwart.errors import ConfigError, DeploymentNotFound
from stalwart.project.alerts import Alert
from stalwart.project.deployment import Deployment
from stalwart.project.entities import Entity
from stalwart.project.feature_sets import FeatureRef, FeatureSet, feature_refs
from stalwart.project.sources import RequestField, RequestSource, Source

__all__ = ["Project", "load_project"]


@dataclass
class Project:
    """Everything a project file declares, by name."""

    root: Path = field(default_factory=Path.cwd)
    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    feature_sets: dict[str, FeatureSet] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)

    @classmethod
    def of(cls, *items: Any, root: Path | None = None) -> Project:
        """A project from definitions (sources of feature sets are added automatically)."""
        project = cls(root=root or Path.cwd())
        for item in items:
            project.add(item)
        return project

    def add(self, item: Any) -> None:
        if isinstance(item, FeatureSet):
            self._put(self.feature_sets, item.name, item, "feature set")
            self.add(item.source)
            self.add(item.entity)
        elif isinstance(item, Source):
            self._put(self.sources, item.name, item, "source")
            offline = getattr(item, "offline", None)
            if isinstance(offline, Source):
                self.add(offline)
        elif isinstance(item, Entity):
            self._put(self.entities, item.name, item, "entity")
        elif isinstance(item, Deployment):
            self._put(self.deployments, item.name, item, "deployment")
        elif isinstance(item, Alert):
            self._put(self.alerts, item.name, item, "alert")

    def check_alerts(self) -> None:
        """Refuse an alert on a deployment the project does not declare (a typo would
        otherwise be an alert that never fires)."""
        for alert in self.alerts.values():
            if alert.deployment not in self.deployments:
                known = ", ".join(sorted(self.deployments)) or "none"
                raise ConfigError(
                    f"alert '{alert.name}' deployment: {alert.deployment!r} is not a deployment of "
                    f"this project (declared: {known})"
                )

    def deployment(self, name: str) -> Deployment:
        try:
            return self.deployments[name]
        except KeyError:
            raise DeploymentNotFound(name) from None

    def features_for(self, deployment: Deployment, model_ref: str, training: Mapping[str, Any] | None) -> list[FeatureRef | RequestField]:
        """The features a deployment serves to a model version: the deployment's own list,
        else the model's training-set list, each checked against this project's definitions
        (a FeatureSet whose version differs from the one the model was trained on is refused)."""
        if deployment.features is not None:
            return feature_refs(deployment.features)
        specs = (training or {}).get("features")
        if not specs:
            raise ConfigError(
                f"model {model_ref} was not registered with training_set=, so deployment "
                f"'{deployment.name}' cannot tell which features it takes; declare features= on the deployment"
            )
        refs: list[FeatureRef | RequestField] = []
        for spec in specs:
            if "request" in spec:
                source = self.sources.get(spec["request"])
                if not isinstance(source, RequestSource):
                    raise ConfigError(f"model {model_ref} needs request source '{spec['request']}', which the project does not declare")
                refs.append(source.field(spec["name"]))
                continue
            feature_set = self.feature_sets.get(spec["set"])
            if feature_set is None:
                raise ConfigError(f"model {model_ref} needs feature set '{spec['set']}', which the project does not declare")
            if feature_set.version != spec["version"]:
                raise ConfigError(
                    f"model {model_ref} was trained on feature set '{feature_set.name}' version "
                    f"{spec['version']}, but the project defines version {feature_set.version}: serving "
                    f"it would compute features differently from training. Retrain on the current "
                    f"definition, or restore the old one"
                )
            refs.append(feature_set[spec["name"]])
        return refs

    @staticmethod
    def _put(table: dict[str, Any], name: str, item: Any, kind: str) -> None:
        existing = table.get(name)
        if existing is not None and existing is not item and existing != item:
            raise ConfigError(f"two different {kind}s are called '{name}'; names must be unique in a project")
        table[name] = item


def load_project(path: str | Path) -> Project:
    """Run a project file and collect what it declares.

    Module-level definitions are collected by type; a module-level ``project = Project(...)``
    is used as is.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"project file {file} does not exist; pass --project or set STALWART_PROJECT")
    namespace = runpy.run_path(str(file), run_name=f"stalwart_project_{file.stem}")
    declared = namespace.get("project")
    if isinstance(declared, Project):
        declared.check_alerts()
        return declared
    project = Project(root=file.resolve().parent)
    for value in namespace.values():
        project.add(value)
    project.check_alerts()
    return project
