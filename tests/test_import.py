"""``import stalwart`` is light, its public surface is curated, and a missing extra says
which one to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stalwart
from stalwart.errors import MissingExtraError

SRC = str(Path(stalwart.__file__).resolve().parents[1])

HEAVY = [
    "numpy",
    "sqlalchemy",
    "starlette",
    "sklearn",
    "onnxruntime",
    "lightgbm",
    "xgboost",
    "redis",
    "psycopg",
    "pandas",
    "uvicorn",
    "pydantic",
    "structlog",
    "prometheus_client",
    "opentelemetry",
]

EXPECTED_ALL = [
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


def _modules_after(code: str) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_import_stalwart_loads_no_heavy_module() -> None:
    """A training script or a CLI pays nothing for the parts it does not use."""
    loaded = _modules_after("import stalwart")
    assert "stalwart" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_settings_and_errors_stay_light_too() -> None:
    """Reading settings or catching Stalwart's errors does not import numpy or SQL."""
    loaded = _modules_after("import stalwart\nstalwart.Settings\nstalwart.StalwartError")
    assert "pydantic" in loaded
    assert sorted(loaded & {"numpy", "sqlalchemy", "starlette", "sklearn"}) == []


def test_the_server_module_without_tracing_loads_no_opentelemetry() -> None:
    """``stalwart.serving.app`` and the W3C trace context (every request's trace id) come
    without the OpenTelemetry SDK: it loads only when tracing is configured."""
    loaded = _modules_after("import stalwart.serving.app\nimport stalwart.monitoring.tracing")
    assert "starlette" in loaded
    assert "opentelemetry" not in loaded


def test_tracing_without_its_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """STALWART_OTEL_ENDPOINT set without the SDK installed says to install stalwart[otel]."""
    from stalwart.config import Settings
    from stalwart.serving.app import create_app

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'stalwart\[otel\]'"):
        create_app(Settings(home=tmp_path, otel_endpoint="http://127.0.0.1:4318"))


def test_public_surface_is_curated() -> None:
    """The names a user may import change only on purpose: update this list when they do."""
    assert stalwart.__all__ == EXPECTED_ALL
    assert dir(stalwart) == EXPECTED_ALL
    for name in EXPECTED_ALL:
        assert getattr(stalwart, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        stalwart.Nope  # noqa: B018 - the attribute access is the test


@pytest.mark.parametrize(("flavor", "module", "extra"), [("lightgbm", "lightgbm", "lightgbm"), ("xgboost", "xgboost", "xgboost"), ("onnx", "onnxruntime", "onnx")])
def test_a_missing_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, flavor: str, module: str, extra: str) -> None:
    """Loading a model whose library is not installed raises MissingExtraError (an
    ImportError) that names the pip extra."""
    from stalwart.registry.flavors import get_flavor

    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when it is absent
    with pytest.raises(MissingExtraError) as info:
        get_flavor(flavor).deserialize(b"model", {}, trust=None)
    assert isinstance(info.value, ImportError)
    assert info.value.extra == extra
    assert f"pip install 'stalwart[{extra}]'" in info.value.message


def test_postgres_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL URL without psycopg installed says to install stalwart[postgres]."""
    from stalwart.storage import Database

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'stalwart\[postgres\]'"):
        Database("postgresql://nobody@127.0.0.1:1/none")
