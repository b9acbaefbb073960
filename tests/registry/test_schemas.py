"""Schemas and training profiles in the registry, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError, ModelNotFound, SchemaNotFound, VersionNotFound
from stalwart.monitoring.profiles import Profile
from stalwart.registry import Registry
from stalwart.validation.schema import infer_schema


def test_registering_with_a_training_frame_stores_schema_and_profile(any_registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """A DataFrame sample of 50+ rows gives the version an inferred, active schema and a profile."""
    frame = cancer["frame_train"]
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=3000).fit(frame, cancer["y_train"])
    mv = any_registry.register("cancer", model, sample=frame)
    active = any_registry.schemas.active("cancer", mv.version)
    assert active is not None
    assert (active.revision, active.source, active.active) == (1, "inferred", True)
    assert list(active.schema.features) == list(frame.columns)
    assert active.schema.rows == len(frame)
    profile = any_registry.schemas.profile("cancer", mv.version)
    assert profile is not None
    assert profile.rows == len(frame)
    assert profile["mean radius"].max == frame["mean radius"].max()
    assert [e["action"] for e in any_registry.events("cancer:1")][:2] == ["schema.infer", "register"]


def test_small_samples_and_arrays_get_no_schema(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """A handful of rows describes the inputs, not their distribution: no schema is guessed."""
    mv = registry.register("cancer", logistic, sample=cancer["x_train"])
    assert registry.schemas.active("cancer", mv.version) is None
    assert registry.schemas.revisions("cancer", mv.version) == []
    with pytest.raises(SchemaNotFound, match="stalwart schema attach cancer:1"):
        registry.schemas.get("cancer", mv.version)


def test_an_explicit_schema_or_training_profile_is_used(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """For a matrix model, the schema's features name its columns, in order."""
    names = list(cancer["frame_train"].columns)
    profile = Profile.of(cancer["x_train"], names)
    mv = registry.register("cancer", logistic, sample=cancer["x_train"][:5], training_profile=profile)
    active = registry.schemas.get("cancer", mv.version)
    assert (active.source, list(active.schema.features)) == ("inferred", names)
    assert registry.schemas.profile("cancer", mv.version) is not None
    edited = infer_schema(profile).model_copy(update={"default_policy": "flag"})
    mv2 = registry.register("cancer", logistic, sample=cancer["x_train"][:5], schema=edited.to_dict())
    assert registry.schemas.get("cancer", mv2.version).source == "edited"
    assert registry.schemas.get("cancer", mv2.version).schema.default_policy == "flag"


def test_a_schema_that_does_not_fit_the_model_aborts_registration(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    wrong = infer_schema({"a": np.arange(60.0), "b": np.arange(60.0)})
    with pytest.raises(ConfigError, match="the schema has 2 features but the model's input 'input-0' has 30 columns"):
        registry.register("cancer", logistic, sample=cancer["x_train"][:5], schema=wrong)
    with pytest.raises(ModelNotFound):
        registry.get("cancer")


def test_attach_list_and_activate_revisions(any_registry: Registry, cancer: dict[str, Any]) -> None:
    """Edited schemas become new active revisions; both are kept; an earlier one can serve again."""
    from sklearn.linear_model import LogisticRegression

    frame = cancer["frame_train"]
    model = LogisticRegression(max_iter=3000).fit(frame, cancer["y_train"])
    mv = any_registry.register("cancer", model, sample=frame)
    store = any_registry.schemas
    inferred = store.get("cancer", mv.version)
    edited = inferred.schema.model_copy(update={"margin": 0.5})
    attached = store.attach("cancer", mv.version, edited, note="wider", actor="alice")
    assert (attached.revision, attached.source, attached.active, attached.note) == (2, "edited", True, "wider")
    assert store.active("cancer", mv.version).schema.margin == 0.5  # type: ignore[union-attr]
    # Inferring again never displaces a schema a person chose.
    again = store.save_inferred("cancer", mv.version, inferred.schema)
    assert (again.revision, again.active) == (3, False)
    assert [(r.revision, r.source, r.active) for r in store.revisions("cancer", mv.version)] == [
        (1, "inferred", False), (2, "edited", True), (3, "inferred", False),
    ]
    assert store.active_revisions() == {("cancer", mv.version): 2}
    back = store.activate("cancer", mv.version, 1, actor="alice")
    assert store.active_revisions() == {("cancer", mv.version): 1}
    assert back.active
    assert store.active("cancer", mv.version).revision == 1
    with pytest.raises(SchemaNotFound, match="no schema revision 9"):
        store.activate("cancer", mv.version, 9)
    with pytest.raises(VersionNotFound):
        store.attach("cancer", 99, edited)
    with pytest.raises(ModelNotFound):
        store.revisions("ghost", 1)
    actions = [(e["actor"], e["action"]) for e in any_registry.events(f"cancer:{mv.version}")]
    assert ("alice", "schema.attach") in actions
    assert ("alice", "schema.activate") in actions


def _attach_many(url: str, home: str, count: int, queue: Any) -> None:
    registry = Registry.open(Settings(home=Path(home), db_url=url))
    schema = infer_schema({"x": np.arange(60.0)})
    queue.put([registry.schemas.attach("m", 1, schema).revision for _ in range(count)])


def test_two_processes_attaching_at_once_get_distinct_revisions(any_db_settings: Settings) -> None:
    from sklearn.dummy import DummyRegressor

    registry = Registry.open(any_db_settings)
    registry.register("m", DummyRegressor().fit(np.zeros((60, 1)), np.zeros(60)), sample={"x": np.arange(60.0)})
    registry.db.dispose()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_attach_many, args=(any_db_settings.resolved_db_url(), str(any_db_settings.home), 5, queue))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    got = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    revisions = sorted(r for batch in got for r in batch)
    assert revisions == list(range(2, 12))  # revision 1 was inferred at registration


def test_profiles_round_trip_through_the_store(any_registry: Registry, cancer: dict[str, Any]) -> None:
    from sklearn.dummy import DummyRegressor

    frame = pd.DataFrame({"x": np.linspace(0, 1, 80), "c": ["a", "b"] * 40})
    model = DummyRegressor().fit(np.zeros((80, 1)), np.zeros(80))
    mv = any_registry.register("d", model, signature={"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}, {"name": "c", "datatype": "BYTES", "shape": [-1]}], "outputs": []}, sample=frame)
    stored = any_registry.schemas.profile("d", mv.version)
    assert stored is not None
    assert stored["c"].frequencies() == {"a": 40, "b": 40}
    any_registry.schemas.save_profile("d", mv.version, Profile.of(frame.head(10)))
    replaced = any_registry.schemas.profile("d", mv.version)
    assert replaced is not None
    assert replaced.rows == 10
    assert any_registry.schemas.profile("d", mv.version, kind="serving") is None


def test_a_training_set_gives_the_version_its_schema_and_profile(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """Registered with training_set=, a version's schema is learned from every training row,
    its features naming the matrix columns in training-set order."""
    from stalwart.features.training import TrainingSet

    names = list(cancer["frame_train"].columns)
    frame = cancer["frame_train"].assign(label=cancer["y_train"])
    ts = TrainingSet(frame=frame, features=names, refs=[], label="label", timestamp="ts", built_seconds=0.0)
    mv = registry.register("cancer", logistic, training_set=ts)
    assert mv.signature.inputs[0].shape == [-1, 30]
    active = registry.schemas.get("cancer", mv.version)
    assert active.source == "inferred"
    assert list(active.schema.features) == names
    assert active.schema.rows == len(frame)
    profile = registry.schemas.profile("cancer", mv.version)
    assert profile is not None
    assert profile.rows == len(frame)
