"""The demo's two models, trained and registered the way ``stalwart demo`` does it, issue
15's peer workload, and the test model of the shedding benchmark.

``prepare_home`` builds a ``STALWART_HOME`` with ``breast-cancer`` version 1 (a scaled
logistic regression pipeline) and version 2 (a gradient-boosted classifier), the recipes
of :mod:`stalwart.cli.demo`, so the benchmarks measure the models a newcomer first serves.
``prepare_peer_home`` builds one with only ``breast-cancer`` version 1 a scikit-learn
``HistGradientBoostingClassifier``: the workload on which Stalwart is compared with other
servers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "breast-cancer"


@dataclass(frozen=True)
class DemoModel:
    """One registered demo model version and a request row for it."""

    key: str  # short name used on the command line and in tables
    label: str
    version: int


DEMO_MODELS = (
    DemoModel("logistic", "logistic regression pipeline", 1),
    DemoModel("gbm", "gradient boosting (100 trees)", 2),
)


def _data() -> tuple[Any, Any, Any, Any]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=7, stratify=y
    )
    return x_train, x_test, y_train, y_test


def prepare_home(home: Path) -> Any:
    """Train and register the demo models under ``home``; returns the test rows."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stalwart.config import Settings
    from stalwart.registry import Registry

    x_train, x_test, y_train, _ = _data()
    registry = Registry.open(Settings(home=home))
    try:
        for model in (
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            GradientBoostingClassifier(random_state=7),
        ):
            model.fit(x_train, y_train)
            registry.register(MODEL, model, sample=x_train[:50])
    finally:
        registry.db.dispose()
    return x_test


PEER_MODEL = DemoModel("hist-gbm", "HistGradientBoostingClassifier (scikit-learn defaults)", 1)


def prepare_peer_home(home: Path) -> Any:
    """Train issue 15's workload, a ``HistGradientBoostingClassifier`` on the demo's
    breast-cancer split, and register it alone under ``home`` (version 1); returns the test
    rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from stalwart.config import Settings
    from stalwart.registry import Registry

    x_train, x_test, y_train, _ = _data()
    model = HistGradientBoostingClassifier(random_state=7).fit(x_train, y_train)
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(MODEL, model, sample=x_train[:50])
    finally:
        registry.db.dispose()
    return x_test


def registered_versions(home: Path) -> list[int]:
    """The versions of the benchmark's model registered under ``home``, oldest first."""
    from stalwart.config import Settings
    from stalwart.registry import Registry

    registry = Registry.open(Settings(home=home))
    try:
        return [mv.version for mv in registry.versions(MODEL)]
    finally:
        registry.db.dispose()


def load_estimator(home: Path, version: int) -> Any:
    """The scikit-learn estimator a server loads for ``version``, read through the registry
    (sha256-verified, skops), so every contestant calls the very same object."""
    from stalwart.config import Settings
    from stalwart.registry import Registry
    from stalwart.registry.flavors import get_flavor

    registry = Registry.open(Settings(home=home))
    try:
        mv = registry.get(MODEL, version)
        data = registry.artifacts.read_verified(mv.artifact_file, mv.sha256)
        return get_flavor(mv.flavor).deserialize(data, mv.flavor_options, trust=mv.trust)
    finally:
        registry.db.dispose()


def infer_body(row: Any, outputs: tuple[str, ...] | None = ("predict_proba",)) -> bytes:
    """One row as an OIP request for ``outputs`` (None: no selection, so every output of
    the model, as the demo's curl example sends it)."""
    values = [float(v) for v in row]
    body: dict[str, Any] = {
        "inputs": [{"name": "input-0", "shape": [1, len(values)], "datatype": "FP64", "data": values}]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(body).encode()


def infer_path(version: int | None) -> str:
    """The OIP infer path of ``version`` (None: the model's own path, its latest version)."""
    if version is None:
        return f"/v2/models/{MODEL}/infer"
    return f"/v2/models/{MODEL}/versions/{version}/infer"


# One model call at a time in the process, like one accelerator or one single-threaded
# native model: capacity is then 1 / seconds calls per second whatever the worker count.
_DEVICE = threading.Lock()


class Sleepy:
    """A python-flavor model (importable by the server process, which finds this checkout
    on its ``PYTHONPATH``) that holds the process's one "device" for ``seconds`` per call,
    then returns ``sum(row)``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, x: Any) -> Any:
        import numpy as np

        with _DEVICE:
            time.sleep(self.seconds)
        if isinstance(x, dict):
            x = np.column_stack([np.asarray(v, dtype=np.float64) for v in x.values()])
        matrix = np.asarray(x, dtype=np.float64)
        return matrix.reshape(len(matrix), -1).sum(axis=1)
