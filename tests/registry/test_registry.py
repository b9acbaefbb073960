"""The model registry on both SQL backends: versions, records, integrity, migrations."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from stalwart.config import Settings
from stalwart.errors import (
    ArtifactIntegrityError,
    ConfigError,
    ModelNotFound,
    SchemaVersionError,
    VersionNotFound,
)
from stalwart.registry import Registry
from stalwart.storage import Database
from stalwart.storage.migrations import SCHEMA_VERSION


def test_versions_are_consecutive_integers_with_full_records(any_registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """Each registration gets the next integer and records sha256, flavor, signature, metrics, tags, time."""
    first = any_registry.register("cancer", logistic, sample=cancer["x_train"][:10], metrics={"auc": 0.99}, tags={"team": "risk"})
    second = any_registry.register("cancer", logistic, sample=cancer["x_train"][:10])
    assert (first.version, second.version) == (1, 2)
    got = any_registry.get("cancer", 1)
    assert got.flavor == "sklearn"
    assert len(got.sha256) == 64
    assert got.metrics == {"auc": 0.99}
    assert got.tags == {"team": "risk"}
    assert got.created_at > 0
    assert got.signature.inputs[0].shape == [-1, 30]
    assert any_registry.get("cancer").version == 2
    assert [v.version for v in any_registry.versions("cancer")] == [1, 2]
    assert [(m.name, m.versions) for m in any_registry.models()] == [("cancer", [1, 2])]


def test_unknown_model_and_version_errors_say_what_to_do(any_registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    with pytest.raises(ModelNotFound, match="stalwart models list"):
        any_registry.get("ghost")
    any_registry.register("cancer", logistic, sample=cancer["x_train"][:10])
    with pytest.raises(VersionNotFound, match="has no version 7"):
        any_registry.get("cancer", 7)


def test_loading_refuses_a_tampered_artifact(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """An artifact changed after registration is refused, naming both digests."""
    mv = registry.register("cancer", logistic, sample=cancer["x_train"][:10])
    path = registry.artifacts.path_of(mv.artifact_file)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactIntegrityError, match=mv.sha256):
        registry.load(mv)


def test_loaded_model_predicts_like_the_original(any_registry: Registry, boosted: Any, cancer: dict[str, Any]) -> None:
    mv = any_registry.register("cancer", boosted, sample=cancer["x_train"][:10])
    predictor = any_registry.load(mv)
    x = cancer["x_test"][:7]
    out = predictor.predict({"input-0": x}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(out["predict"], boosted.predict(x))
    np.testing.assert_allclose(out["predict_proba"], boosted.predict_proba(x))


def test_bad_model_names_are_refused(registry: Registry, logistic: Any) -> None:
    for name in ("", "has space", "-leading", "a/b", "x" * 201):
        with pytest.raises(ConfigError, match="not allowed"):
            registry.register(name, logistic)


def _register_many(url: str, home: str, count: int, queue: Any) -> None:
    from sklearn.dummy import DummyClassifier

    settings = Settings(home=Path(home), db_url=url)
    registry = Registry.open(settings)
    model = DummyClassifier().fit(np.zeros((4, 2)), [0, 1, 0, 1])
    versions = [registry.register("raced", model, sample=np.zeros((2, 2))).version for _ in range(count)]
    queue.put(versions)


def test_two_processes_registering_at_once_get_distinct_versions(any_db_settings: Settings) -> None:
    """Concurrent registrations from separate processes never share a version number."""
    Registry.open(any_db_settings).db.dispose()  # migrate once up front, like a deploy would
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    url = any_db_settings.resolved_db_url()
    procs = [ctx.Process(target=_register_many, args=(url, str(any_db_settings.home), 8, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    every = sorted(v for versions in results for v in versions)
    assert every == list(range(1, 25))


def test_migrations_record_the_schema_version_and_refuse_a_newer_database(any_db_settings: Settings) -> None:
    """A database remembers its schema version; one from a newer release is not misread."""
    db = Database(any_db_settings.resolved_db_url())
    assert db.migrate() == []  # already current: applying again does nothing
    with db.write() as conn:
        conn.execute(text("UPDATE stalwart_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    with pytest.raises(SchemaVersionError, match="upgrade stalwart"):
        db.migrate()
    db.dispose()
