"""What a server agrees to run when it loads a version: python-flavor classes only from
allowed modules (checked before anything is imported), pickles only while allowed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from stalwart.config import Settings, load_settings
from stalwart.errors import ConfigError, FlavorError, UntrustedArtifactError
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.flavors import LoadPolicy, get_flavor
from stalwart.storage import tables as t
from tests.models import HoldsAFunction, Linear
from tests.servers import start_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def booby_trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on sys.path whose top-level code leaves a marker file when it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "trapmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\nclass Model:\n    def predict(self, x):\n        return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trapmod", raising=False)
    return marker


def _swap_artifact(registry: Registry, mv: ModelVersion, document: bytes) -> ModelVersion:
    """Point a version's row at other artifact bytes, as a compromised registry could."""
    stored = registry.artifacts.put(document, ".json")
    with registry.db.write() as conn:
        conn.execute(
            update(t.model_versions)
            .where(t.model_versions.c.name == mv.name, t.model_versions.c.version == mv.version)
            .values(artifact_sha256=stored.sha256, artifact_file=stored.file)
        )
    return registry.get(mv.name, mv.version)


def test_a_class_outside_the_allowed_modules_is_refused_before_import(settings: Settings, booby_trap: Path) -> None:
    """A version whose artifact names a module the server does not allow is an
    UntrustedArtifactError naming STALWART_PYTHON_MODULES, and the module never runs."""
    registry = Registry.open(settings.model_copy(update={"python_modules": ("tests",)}))
    try:
        mv = registry.register("linear", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
        assert registry.load(mv) is not None
        swapped = _swap_artifact(registry, mv, b'{"class": "trapmod:Model", "state": {}}')
        with pytest.raises(UntrustedArtifactError, match=r"trapmod.*STALWART_PYTHON_MODULES"):
            registry.load(swapped)
        assert not booby_trap.exists()
    finally:
        registry.db.dispose()


def test_registering_a_file_naming_an_unallowed_class_imports_nothing(settings: Settings, booby_trap: Path, tmp_path: Path) -> None:
    """register_file of a python-flavor JSON is refused before its module is imported."""
    path = tmp_path / "model.json"
    path.write_bytes(b'{"class": "trapmod:Model", "state": {}}')
    registry = Registry.open(settings.model_copy(update={"python_modules": ("tests",)}))
    try:
        with pytest.raises(UntrustedArtifactError, match="trapmod"):
            registry.register_file("trap", str(path), flavor="python", signature={"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}], "outputs": []})
    finally:
        registry.db.dispose()
    assert not booby_trap.exists()


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        (b'{"class": "os:system", "state": {}}', UntrustedArtifactError, "comes from 'os', which is not an allowed module"),
        (b'{"class": "subprocess:Popen", "state": {}}', UntrustedArtifactError, "not an allowed module"),
        (b'{"class": 5, "state": {}}', FlavorError, "'class' must be 'module:Class'"),
        (b'{"class": "nocolon", "state": {}}', FlavorError, "'class' must be 'module:Class'"),
        (b'{"class": "a..b:C", "state": {}}', FlavorError, "'class' must be 'module:Class'"),
        (b'{"class": "tests.models:Linear.__init__", "state": {}}', FlavorError, "'class' must be 'module:Class'"),
        (b'{"class": "tests.models:", "state": {}}', FlavorError, "'class' must be 'module:Class'"),
        (b'{"class": "tests.models:Linear", "state": 5}', FlavorError, "'state' must be an object"),
        (b'{"class": "tests.models:ALL_DATATYPES", "state": {}}', FlavorError, "is not a class"),
        (b'{"class": "testsuite.x:C", "state": {}}', UntrustedArtifactError, "not an allowed module"),
        (b"[1, 2]", FlavorError, "not a python-flavor artifact"),
    ],
)
def test_malformed_or_untrusted_class_paths_are_clean_errors(document: bytes, error: type[Exception], message: str) -> None:
    """Whatever the artifact's "class" holds, loading it is a StalwartError that says what is
    wrong, never a traceback from the import machinery."""
    with pytest.raises(error, match=message):
        get_flavor("python").deserialize(document, {}, trust=None, policy=LoadPolicy(python_modules=("tests",)))


def test_the_default_allowlist_is_the_project_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the allowed modules are the top-level package holding the project file (none
    without a project); STALWART_PYTHON_MODULES is a comma-separated list of prefixes."""
    for name in ("STALWART_PROJECT", "STALWART_PYTHON_MODULES", "STALWART_ALLOW_PICKLE"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().allowed_python_modules() == ()
    assert load_settings(project=EXAMPLES / "fraud" / "project.py").allowed_python_modules() == ("examples",)
    monkeypatch.setenv("STALWART_PYTHON_MODULES", "tests.models, mypkg")
    monkeypatch.setenv("STALWART_ALLOW_PICKLE", "false")
    settings = load_settings(project=EXAMPLES / "fraud" / "project.py")
    assert settings.allowed_python_modules() == ("tests.models", "mypkg")
    assert settings.allow_pickle is False
    monkeypatch.setenv("STALWART_PYTHON_MODULES", "a..b")
    with pytest.raises(ConfigError, match="STALWART_PYTHON_MODULES"):
        load_settings()


def test_a_prefix_allows_its_submodules_only(settings: Settings) -> None:
    """'tests' allows tests.models but not a module that merely starts with the same letters."""
    flavor = get_flavor("python")
    policy = LoadPolicy(python_modules=("tests.models",))
    model = flavor.deserialize(b'{"class": "tests.models:Linear", "state": {"bias": 1.0}}', {}, trust=None, policy=policy)
    assert isinstance(model, Linear)
    with pytest.raises(UntrustedArtifactError):
        flavor.deserialize(b'{"class": "tests.faults:Switchable", "state": {}}', {}, trust=None, policy=policy)


def test_a_live_class_registers_but_loads_only_where_allowed(settings: Settings) -> None:
    """Registering a live object needs no allowlist (its module is the caller's, already
    imported), but a server with the default allowlist refuses to load it, saying how to allow it."""
    registry = Registry.open(settings.model_copy(update={"python_modules": ()}))
    try:
        mv = registry.register("linear", Linear(np.ones(2), 0.0), sample=np.ones((2, 2)))
        with pytest.raises(UntrustedArtifactError, match="STALWART_PYTHON_MODULES=tests"):
            registry.load(mv)
    finally:
        registry.db.dispose()


@pytest.mark.parametrize("flavor_model", ["sklearn", "python"])
def test_a_hardened_server_refuses_pickled_versions(settings: Settings, cancer: dict[str, Any], logistic: Any, flavor_model: str) -> None:
    """With STALWART_ALLOW_PICKLE=false, a version registered with trust_pickle=True is
    refused at load (a registry row cannot make the server unpickle); others still load."""
    x = cancer["x_train"][:50]
    model: Any = logistic if flavor_model == "sklearn" else HoldsAFunction()
    trusting = Registry.open(settings)
    try:
        pickled = trusting.register("pickled", model, sample=x[:5], trust_pickle=True)
        plain = trusting.register("plain", Linear(np.ones(30), 0.0), sample=x[:5])
        assert trusting.load(pickled) is not None
    finally:
        trusting.db.dispose()
    hardened = Registry.open(settings.model_copy(update={"allow_pickle": False}))
    try:
        with pytest.raises(UntrustedArtifactError, match="STALWART_ALLOW_PICKLE"):
            hardened.load(pickled)
        assert hardened.load(plain) is not None
        with pytest.raises(UntrustedArtifactError, match="STALWART_ALLOW_PICKLE"):
            hardened.register("again", model, sample=x[:5], trust_pickle=True)
    finally:
        hardened.db.dispose()


def test_a_hardened_server_answers_503_for_a_pickled_version(settings: Settings, registry: Registry, cancer: dict[str, Any]) -> None:
    """Through a real server: the pickled version answers 503 with the reason; the server is
    otherwise fine."""
    x = cancer["x_train"][:5]
    registry.register("pickled", HoldsAFunction(), sample=x, trust_pickle=True)
    registry.register("plain", Linear(np.ones(30), 0.0), sample=x)
    hardened = settings.model_copy(update={"allow_pickle": False})
    served = Registry.open(hardened)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": x[0].tolist()}]}
    try:
        with start_server(hardened, served) as server:
            refused = server.post("/v2/models/pickled/infer", json=body)
            assert refused.status_code == 503, refused.text
            assert "STALWART_ALLOW_PICKLE" in refused.json()["error"]
            assert server.post("/v2/models/plain/infer", json=body).status_code == 200
    finally:
        served.db.dispose()
