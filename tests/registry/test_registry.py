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


def test_names_that_cannot_be_registered_are_simply_not_found(any_registry: Registry) -> None:
    """Looking up a name no model could have (a NUL byte, a slash) is ModelNotFound on both
    backends; PostgreSQL is never asked (it rejects NUL bytes with an error of its own)."""
    for name in ("a\x00b", "a/b", "", "x" * 300):
        with pytest.raises(ModelNotFound):
            any_registry.get(name)
        with pytest.raises(ModelNotFound):
            any_registry.versions(name)


def test_artifacts_live_under_home_addressed_by_their_sha256(registry: Registry, settings: Settings, logistic: Any, cancer: dict[str, Any]) -> None:
    """The artifact is a file under STALWART_HOME whose sha256 is the recorded one; the
    same bytes registered twice are stored once."""
    import hashlib

    from tests.models import Linear

    sklearn_version = registry.register("cancer", logistic, sample=cancer["x_train"][:5])
    sklearn_path = registry.artifacts.path_of(sklearn_version.artifact_file)
    assert hashlib.sha256(sklearn_path.read_bytes()).hexdigest() == sklearn_version.sha256
    # skops archives are not byte-for-byte reproducible; the python flavor's JSON is.
    model = Linear(np.ones(3), 0.0)
    first = registry.register("linear", model, sample=np.ones((2, 3)))
    second = registry.register("linear", model, sample=np.ones((2, 3)))
    path = registry.artifacts.path_of(first.artifact_file)
    assert path.is_relative_to(settings.home.resolve() / "artifacts")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256
    assert path.stat().st_size == first.artifact_size
    assert (second.sha256, second.artifact_file) == (first.sha256, first.artifact_file)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_loading_a_missing_artifact_says_where_it_should_be(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """A deleted artifact file is reported with its path and what to do about it."""
    from stalwart.errors import RegistryError

    mv = registry.register("cancer", logistic, sample=cancer["x_train"][:5])
    registry.artifacts.path_of(mv.artifact_file).unlink()
    with pytest.raises(RegistryError, match="is missing; restore it, or point STALWART_HOME"):
        registry.load(mv)


def test_a_refused_registration_takes_no_version(any_registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """A model that cannot be served (its sample does not fit) is refused before anything is
    written, so the next good registration is still version 1; every registration is audited."""
    from stalwart.errors import FlavorError

    with pytest.raises(FlavorError, match=r"cannot predict on the sample.*expecting 30 features"):
        any_registry.register("cancer", logistic, sample=cancer["x_train"][:5, :10])
    with pytest.raises(ConfigError, match="metrics must be finite"):
        any_registry.register("cancer", logistic, sample=cancer["x_train"][:5], metrics={"auc": float("nan")})
    with pytest.raises(ModelNotFound):
        any_registry.get("cancer")
    mv = any_registry.register("cancer", logistic, sample=cancer["x_train"][:5])
    assert mv.version == 1
    (event,) = any_registry.events("cancer:1")
    assert (event["action"], event["detail"]["sha256"], event["detail"]["flavor"]) == ("register", mv.sha256, "sklearn")


def test_both_backends_have_one_schema(any_db_settings: Settings) -> None:
    """SQLite and PostgreSQL get the same tables and columns from the same migrations."""
    from sqlalchemy import inspect

    db = Database(any_db_settings.resolved_db_url())
    try:
        inspector = inspect(db.engine)
        tables = {name: sorted(c["name"] for c in inspector.get_columns(name)) for name in inspector.get_table_names()}
    finally:
        db.dispose()
    from stalwart.storage import tables as t

    assert tables == {table.name: sorted(c.name for c in table.columns) for table in t.metadata.sorted_tables}


def test_a_later_release_migrates_an_existing_database(any_db_settings: Settings, logistic: Any, cancer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A database written by this release is upgraded in place by a release that appends a
    migration: applied once, recorded, existing versions kept."""
    from stalwart.storage import migrations

    registry = Registry.open(any_db_settings)
    mv = registry.register("cancer", logistic, sample=cancer["x_train"][:5])
    registry.db.dispose()

    def add_column(conn: Any) -> None:
        conn.execute(text("ALTER TABLE models ADD COLUMN owner VARCHAR(100)"))

    later = (*migrations.MIGRATIONS, migrations.Migration(SCHEMA_VERSION + 1, "model owners", add_column))
    monkeypatch.setattr(migrations, "MIGRATIONS", later)
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    db = Database(any_db_settings.resolved_db_url(), auto_migrate=False)
    try:
        assert db.migrate() == [SCHEMA_VERSION + 1]
        assert db.migrate() == []
        with db.read() as conn:
            assert conn.execute(text("SELECT value FROM stalwart_meta WHERE key = 'schema_version'")).scalar_one() == str(SCHEMA_VERSION + 1)
            assert conn.execute(text("SELECT name, owner FROM models")).all() == [("cancer", None)]
        assert Registry(db, registry.artifacts).get("cancer", 1).sha256 == mv.sha256
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "STALWART_DB_URL is not a database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
    ],
)
def test_bad_database_urls_are_config_errors(url: str, message: str) -> None:
    """A URL that is not one, or names another database, is refused before connecting."""
    with pytest.raises(ConfigError, match=message):
        Database(url)


@pytest.mark.postgres
def test_an_unreachable_database_is_a_storage_error_without_the_password() -> None:
    """A server that does not answer is a StorageError that says what to check and never
    prints the password."""
    from stalwart.errors import StorageError
    from tests.servers import free_port

    with pytest.raises(StorageError, match="STALWART_DB_URL") as info:
        Database(f"postgresql://app:hunter2@127.0.0.1:{free_port()}/none?connect_timeout=2")
    assert "hunter2" not in info.value.message


def test_the_python_api_uses_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch, logistic: Any, cancer: dict[str, Any]) -> None:
    """stalwart.register_model and get_model work from a training script with only
    STALWART_HOME set: signature inferred from the sample, metrics and tags recorded."""
    import stalwart

    monkeypatch.setenv("STALWART_HOME", str(home))
    mv = stalwart.register_model("cancer", logistic, sample=cancer["x_train"][:10], metrics={"auc": 0.99}, tags={"by": "ci"})
    assert (mv.version, mv.flavor, mv.metrics, mv.tags) == (1, "sklearn", {"auc": 0.99}, {"by": "ci"})
    assert isinstance(mv.signature, stalwart.Signature)
    assert stalwart.get_model("cancer") == mv
    assert (home / "registry.db").exists()


def test_every_file_under_home_is_private(tmp_path: Path, logistic: Any, cancer: dict[str, Any]) -> None:
    """The registry database (which may hold source tables) and its -wal/-shm files, the
    artifacts and the admin token are all 0600, and STALWART_HOME and its directories 0700,
    whatever the umask."""
    import os
    import stat

    from tests.models import Linear

    old = os.umask(0o022)
    try:
        settings = Settings(home=tmp_path / "home", python_modules=("tests",))
        registry = Registry.open(settings)
        registry.register("cancer", logistic, sample=cancer["x_train"][:5])
        registry.register("linear", Linear(np.ones(3), 0.0), sample=np.ones((2, 3)))
        settings.resolved_admin_token()
        home = settings.home
        names = {p.name for p in home.iterdir()}
        assert {"registry.db", "registry.db-wal", "registry.db-shm", "admin_token", "artifacts"} <= names
        modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]}
        registry.db.dispose()
    finally:
        os.umask(old)
    assert {name: mode for name, mode in modes.items() if mode not in (0o600, 0o700)} == {}
    dirs = [p for p in [home, *home.rglob("*")] if p.is_dir()]
    assert all(modes[str(d.relative_to(tmp_path))] == 0o700 for d in dirs)
    assert len(dirs) >= 3  # home, artifacts, a shard directory


def _register_until_killed(home: str, ready: Any) -> None:
    """Register the same model over and over, each version with a learned schema and
    profile, until the test kills this process."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"])
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, data.target)
    registry = Registry.open(Settings(home=Path(home)))
    # The first registration imports what registering needs (seconds); kills are aimed at
    # the steady state after it, where one registration takes tens of milliseconds.
    registry.register("warm-up", model, sample=frame.head(60))
    ready.set()
    while True:
        registry.register("cancer", model, sample=frame.head(60))


@pytest.mark.slow
def test_a_registration_killed_at_any_moment_leaves_no_version_without_its_schema(tmp_path: Path) -> None:
    """SIGKILL at random moments while registering: every version that became visible has
    its learned schema and training profile, and the registry opens and registers fine."""
    import random

    # forkserver: each registering process starts with its libraries imported already.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([
        "sklearn.linear_model", "sklearn.pipeline", "sklearn.datasets", "skops.io", "stalwart.registry",
        "stalwart.registry.flavors.sklearn", "stalwart.validation.schema", "stalwart.monitoring.profiles",
    ])
    home = tmp_path / "home"
    rng = random.Random(20261206)
    for _ in range(12):
        ready = ctx.Event()
        proc = ctx.Process(target=_register_until_killed, args=(str(home), ready))
        proc.start()
        assert ready.wait(timeout=60)
        proc.join(timeout=rng.uniform(0.0, 0.6))
        proc.kill()
        proc.join(timeout=30)
        assert proc.exitcode == -9
    registry = Registry.open(Settings(home=home))
    try:
        versions = registry.versions("cancer")
        assert len(versions) >= 3  # kills landed after some registrations completed
        for mv in versions:
            assert registry.schemas.active(mv.name, mv.version) is not None, f"{mv.ref} has no schema"
            assert registry.schemas.profile(mv.name, mv.version) is not None, f"{mv.ref} has no profile"
        assert registry.latest_versions()["cancer"] == versions[-1].version
        from sklearn.dummy import DummyClassifier

        model = DummyClassifier().fit(np.zeros((4, 30)), [0, 1, 0, 1])
        assert registry.register("cancer", model, sample=np.zeros((2, 30))).version == versions[-1].version + 1
    finally:
        registry.db.dispose()


def _register_fifty(home: str, start: Any, queue: Any) -> None:
    import os

    os.environ["STALWART_HOME"] = home
    from sklearn.dummy import DummyClassifier

    import stalwart

    model = DummyClassifier().fit(np.zeros((4, 2)), [0, 1, 0, 1])
    start.wait(timeout=60)
    try:
        queue.put([stalwart.register_model("raced", model, sample=np.zeros((2, 2))).version for _ in range(50)])
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        queue.put(repr(exc))


@pytest.mark.slow
def test_two_processes_registering_fifty_each_on_one_sqlite_file(tmp_path: Path) -> None:
    """Two training scripts registering 50 versions each into a brand-new SQLite registry at
    once (each call opening and closing the database, as register_model does) all succeed,
    with versions 1..100."""
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_register_fifty, args=(str(tmp_path / "home"), start, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(r, list) for r in results), results
    assert sorted(v for r in results for v in r) == list(range(1, 101))
