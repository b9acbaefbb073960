"""The Helm chart rendered by Helm itself: helm-python-sdk runs Helm's Go SDK (the code
behind `helm template`) in-process, with the chart's values.schema.json enforced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "stalwart"
RELEASE = "prod"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-stalwart"
# Values a real install gives at least: the Secret the pods read.
MINIMAL: dict[str, Any] = {"secret": {"existingSecret": "stalwart-credentials"}}


class Manifests(list[dict[str, Any]]):
    """The rendered objects, with lookups by kind."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert len(found) == 1, f"{len(found)} {kind} objects rendered"
        return found[0]

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self}


def render(values: dict[str, Any] | None = None) -> Manifests:
    """The chart rendered as an install of release ``prod`` in namespace ``ml``."""
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return Manifests(_documents(files))


def _documents(files: dict[str, str]) -> Iterator[dict[str, Any]]:
    for name in sorted(files):
        if name.endswith(".txt"):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(files[name]):
            if document:
                yield document


def container(manifests: Manifests) -> dict[str, Any]:
    """The server's container in the rendered Deployment."""
    pod = manifests.one("Deployment")["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    result: dict[str, Any] = only
    return result
