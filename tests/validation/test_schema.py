"""Schemas: inference from data, the categorical rule, files a person edits, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stalwart.errors import ConfigError
from stalwart.monitoring.profiles import FeatureProfile, Profile
from stalwart.validation.schema import FeatureSchema, Schema, infer_schema
from stalwart.validation.validator import Validator


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 400
    return pd.DataFrame(
        {
            "income": rng.normal(50_000, 8_000, n),
            "age": rng.integers(18, 80, n),
            "member": rng.random(n) > 0.3,
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
            "comment": [f"note {i} " + "x" * (i % 17) for i in range(n)],
            "score": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
        }
    )


def test_inference_gives_each_feature_its_kind_and_statistics(frame: pd.DataFrame) -> None:
    """Types, nullability, ranges, quantiles, categories with counts, length bounds, impute values."""
    schema = infer_schema(frame)
    f = schema.features
    assert list(f) == list(frame.columns)
    assert [f[c].kind for c in frame.columns] == ["numeric", "integer", "boolean", "categorical", "string", "numeric"]
    assert f["income"].min == frame["income"].min()
    assert f["income"].max == frame["income"].max()
    assert f["income"].quantiles is not None
    assert set(f["income"].quantiles) == {"p01", "p05", "p25", "p50", "p75", "p95", "p99"}
    assert f["income"].impute == pytest.approx(frame["income"].median(), rel=0.02)
    assert isinstance(f["age"].impute, int)
    assert f["plan"].categories == frame["plan"].value_counts().to_dict()
    assert f["plan"].impute == "free"
    assert (f["comment"].min_length, f["comment"].max_length) == (7, 25)
    assert f["score"].nullable
    assert f["score"].null_fraction == pytest.approx(frame["score"].isna().mean())
    assert not f["income"].nullable
    assert f["member"].impute is True
    assert schema.rows == 400
    assert "categorical" in schema.description


def test_categorical_rule_is_few_distinct_values_each_repeated() -> None:
    """At most 50 distinct values, and no more than half as many as the non-null values."""
    repeated = [f"c{i % 50}" for i in range(100)]
    assert infer_schema({"x": repeated}).features["x"].kind == "categorical"
    too_many = [f"c{i % 51}" for i in range(200)]
    assert infer_schema({"x": too_many}).features["x"].kind == "string"
    mostly_unique = [f"c{i % 30}" for i in range(40)]
    assert infer_schema({"x": mostly_unique}).features["x"].kind == "string"
    assert infer_schema({"x": too_many}, categorical_max_distinct=60).features["x"].kind == "categorical"


def test_inference_from_profiles_matches_inference_from_data(frame: pd.DataFrame) -> None:
    """A stored training profile gives the schema of the data it summarises (quantiles and
    medians within the sketch's error: the quantile sketch compacts at random)."""
    from_data = infer_schema(frame)
    for source in (Profile.of(frame), {name: FeatureProfile.of(frame[name]) for name in frame.columns}):
        schema = infer_schema(source)
        assert schema.rows == from_data.rows
        for name, feature in schema.features.items():
            expected = from_data.features[name]
            exact = {"quantiles", "impute"}
            assert feature.model_dump(exclude=exact) == expected.model_dump(exclude=exact)
            if feature.kind == "numeric":
                values = frame[name].dropna().to_numpy()
                assert abs(float((values <= feature.impute).mean()) - 0.5) < 0.03
            else:
                assert feature.impute == expected.impute


def test_a_column_never_seen_with_a_value_accepts_only_nulls() -> None:
    schema = infer_schema({"ghost": [None, None, None]})
    ghost = schema.features["ghost"]
    assert (ghost.kind, ghost.nullable, ghost.categories) == ("categorical", True, {})


def test_yaml_round_trip_with_edits_changes_what_is_accepted(frame: pd.DataFrame, tmp_path: Path) -> None:
    """Widen a range, add a category, change a policy in the exported YAML: the attached
    file validates, and requests that were refused now pass."""
    schema = infer_schema(frame)
    path = tmp_path / "schema.yaml"
    path.write_text(schema.to_yaml(header="edit me"), encoding="utf-8")
    assert path.read_text().startswith("# edit me\n")
    assert Schema.from_file(path) == schema

    request = {
        "income": np.array([500_000.0]),
        "age": np.array([30]),
        "member": np.array([True]),
        "plan": np.array(["enterprise"], dtype=object),
        "comment": np.array(["fine"], dtype=object),
        "score": np.array([0.5]),
    }
    _, before = Validator(schema).check(request)
    assert {(v.feature, v.rule) for v in before.violations} == {("income", "range"), ("plan", "category"), ("comment", "length")}

    text = path.read_text()
    text = text.replace(f"    max: {schema.features['income'].max}\n", "    max: 600000.0\n", 1)
    text = text.replace("    categories:\n", "    categories:\n      enterprise: 0\n", 1)
    text = text.replace("  comment:\n    kind: string\n", "  comment:\n    kind: string\n    policy: flag\n", 1)
    path.write_text(text, encoding="utf-8")
    edited = Schema.from_file(path)
    assert edited.features["income"].max == 600_000.0
    assert "enterprise" in (edited.features["plan"].categories or {})
    assert edited.features["comment"].policy == "flag"
    _, after = Validator(edited).check(request)
    assert after.rejected == 0
    assert after.response_part() == {"flagged": {"comment": [0]}}


def test_json_files_round_trip(frame: pd.DataFrame, tmp_path: Path) -> None:
    schema = infer_schema(frame)
    path = tmp_path / "schema.json"
    path.write_text(schema.to_json(), encoding="utf-8")
    assert Schema.from_file(path) == schema


def test_errors_name_the_feature_and_the_field(tmp_path: Path) -> None:
    """Every mistake in an edited file is listed, by feature and field."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "margin: -1\n"
        "features:\n"
        "  age: {kind: integer, polcy: clip}\n"
        "  plan: {kind: categorical, categories: {no: 3, pro: 2}}\n"
        "  income: {kind: numeric, max: lots}\n"
        "  size: {kind: numeric, min: 5, max: 2}\n"
        "  city: {kind: string, categories: [a]}\n"
        "  flag: {kind: boolean, impute: maybe}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        Schema.from_file(path)
    message = caught.value.message
    assert f"schema file {path}" in message
    assert "field 'margin'" in message
    assert "feature 'age', field 'polcy': unknown field" in message
    assert "feature 'plan', field 'categories': the name False is read as bool" in message
    assert "feature 'income', field 'max'" in message
    assert "'lots'" in message
    assert "feature 'size': field 'min' (5.0) is above field 'max' (2.0)" in message
    assert "feature 'city': field 'categories' applies to categorical features" in message
    assert "feature 'flag': field 'impute' ('maybe') must be true or false" in message


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Schema.from_file(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("features: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Schema.from_file(broken)
    with pytest.raises(ConfigError, match="expected a mapping"):
        Schema.from_yaml("- just\n- a list\n")
    with pytest.raises(ConfigError, match="at least one feature"):
        Schema.from_dict({"features": {}})


def test_a_list_of_categories_is_accepted() -> None:
    feature = FeatureSchema.model_validate({"kind": "categorical", "categories": ["a", "b"]})
    assert feature.categories == {"a": 0, "b": 0}


def test_schema_margin_applies_unless_a_feature_sets_its_own() -> None:
    schema = Schema.from_dict(
        {"margin": 0.5, "features": {"a": {"kind": "numeric"}, "b": {"kind": "numeric", "margin": 0}}}
    )
    assert (schema.margin_of("a"), schema.margin_of("b")) == (0.5, 0.0)
