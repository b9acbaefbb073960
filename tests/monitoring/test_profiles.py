"""Profiles: exact counts, sketched quantiles and frequencies, merging, storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.errors import ConfigError
from stalwart.monitoring.profiles import FeatureProfile, Profile, columns_of


def test_numbers_are_counted_exactly_and_quantiles_sketched() -> None:
    """Rows, NaN, infinities, min/max and mean are exact; quantiles within the sketch's error."""
    rng = np.random.default_rng(1)
    values = rng.normal(10, 2, 50_000)
    data = np.concatenate([values, [np.nan, np.nan, np.inf, -np.inf]])
    profile = FeatureProfile.of(data)
    assert profile.kind == "numeric"
    assert (profile.count, profile.nan, profile.inf, profile.nulls) == (50_004, 2, 2, 0)
    assert profile.min == values.min()
    assert profile.max == values.max()
    assert profile.mean == pytest.approx(values.mean())
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        estimate = profile.quantile(q)
        assert estimate is not None
        true_rank = float((values <= estimate).mean())
        assert abs(true_rank - q) <= 2 * profile.rank_error
    assert profile.missing_fraction == pytest.approx(2 / 50_004)
    assert profile.distinct() == pytest.approx(50_000, rel=0.05)


def test_integers_keep_their_kind_until_mixed_with_floats() -> None:
    profile = FeatureProfile.of(np.arange(100))
    assert profile.kind == "integer"
    profile.update(np.array([0.5]))
    assert profile.kind == "numeric"
    assert profile.count == 101


def test_strings_have_frequencies_lengths_and_pandas_nulls() -> None:
    """None and NaN in a string column are nulls; other types are counted as mismatched."""
    column = np.array(["red", "blue", "red", None, float("nan"), "green", 7], dtype=object)
    profile = FeatureProfile.of(column)
    assert profile.kind == "string"
    assert profile.frequencies() == {"red": 2, "blue": 1, "green": 1}
    assert profile.frequencies_exact
    assert (profile.nulls, profile.mismatched, profile.count) == (2, 1, 7)
    assert (profile.min_length, profile.max_length) == (3, 5)
    assert profile.mode() == "red"
    assert profile.distinct() == pytest.approx(3, abs=0.1)


def test_booleans_count_trues_and_falses() -> None:
    profile = FeatureProfile.of(np.array([True, False, True, True]))
    assert profile.kind == "boolean"
    assert profile.frequencies() == {"true": 3, "false": 1}
    assert profile.mean == 0.75
    assert profile.mode() is True


def test_pandas_nullable_and_categorical_columns() -> None:
    """Nullable ints count NA as null-like NaN; categoricals are strings with their values."""
    ints = FeatureProfile.of(pd.Series([1, 2, None, 4], dtype="Int64"))
    assert (ints.kind, ints.nan, ints.min, ints.max) == ("numeric", 1, 1.0, 4.0)
    cats = FeatureProfile.of(pd.Series(["a", "b", None, "a"], dtype="category"))
    assert (cats.kind, cats.nulls, cats.frequencies()) == ("string", 1, {"a": 2, "b": 1})
    strings = FeatureProfile.of(pd.Series(["x", None, "y"], dtype="string"))
    assert (strings.kind, strings.nulls) == ("string", 1)


def test_object_numbers_and_huge_integers() -> None:
    """Python ints too large for a float are infinities, not a crash."""
    profile = FeatureProfile.of([10**400, 1, 2.5, None])
    assert (profile.kind, profile.inf, profile.nulls, profile.max) == ("numeric", 1, 1, 2.5)


def test_round_trip_through_json() -> None:
    """A stored profile answers the same queries as the one that was stored."""
    frame = pd.DataFrame(
        {
            "x": np.random.default_rng(2).normal(size=2000),
            "c": np.random.default_rng(3).choice(["u", "v", "w"], 2000),
            "b": np.arange(2000) % 3 == 0,
            "empty": [None] * 2000,
        }
    )
    profile = Profile.of(frame)
    again = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.rows == 2000
    assert list(again) == ["x", "c", "b", "empty"]
    assert again["x"].quantiles([0.1, 0.5, 0.9]) == profile["x"].quantiles([0.1, 0.5, 0.9])
    assert again["c"].frequencies() == profile["c"].frequencies()
    assert again["b"].frequencies() == profile["b"].frequencies()
    assert again["empty"].kind == "unknown"
    assert again["empty"].nulls == 2000
    assert again["x"].distinct() == profile["x"].distinct()


def test_damaged_stored_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="damaged"):
        FeatureProfile.from_dict({"format": 1, "kind": "numeric", "count": "x"})
    with pytest.raises(ConfigError, match="not supported"):
        FeatureProfile.from_dict({"format": 99, "kind": "numeric"})


def test_merging_strings_into_numbers_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot merge"):
        FeatureProfile.of(np.arange(3.0)).merge(FeatureProfile.of(np.array(["a"], dtype=object)))


def test_dataset_merge_keeps_features_only_one_side_has() -> None:
    left = Profile.of({"a": [1.0, 2.0], "b": ["x", "y"]})
    right = Profile.of({"a": [3.0], "c": [True]})
    merged = left.merge(right)
    assert merged.rows == 3
    assert list(merged) == ["a", "b", "c"]
    assert merged["a"].count == 3
    assert merged["a"].max == 3.0
    assert merged["c"].frequencies() == {"true": 1}
    assert left["a"].count == 2  # inputs are untouched


def test_a_matrix_needs_column_names() -> None:
    with pytest.raises(ConfigError, match="names="):
        columns_of(np.zeros((3, 2)))
    assert list(columns_of(np.zeros((3, 2)), ["p", "q"])) == ["p", "q"]


chunks = st.lists(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.integers(-(10**6), 10**6).map(float),
        ),
        min_size=0,
        max_size=300,
    ),
    min_size=2,
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(chunks)
def test_merged_numeric_profiles_equal_the_profile_of_all_the_data(parts: list[list[float]]) -> None:
    """What replicas (or file chunks) add up to is the profile of the concatenated data:
    counts exactly, quantiles within the sketch's rank error."""
    merged = FeatureProfile()
    for part in parts:
        merged.merge_into(FeatureProfile.of(np.array(part, dtype=np.float64)))
    whole = FeatureProfile.of(np.array([v for p in parts for v in p], dtype=np.float64))
    assert (merged.count, merged.nan, merged.inf) == (whole.count, whole.nan, whole.inf)
    assert (merged.min, merged.max) == (whole.min, whole.max)
    finite = np.array([v for p in parts for v in p if math.isfinite(v)])
    if finite.size == 0:
        assert merged.quantile(0.5) is None
        return
    for q in (0.1, 0.5, 0.9):
        estimate = merged.quantile(q)
        assert estimate is not None
        low = float((finite < estimate).mean())
        high = float((finite <= estimate).mean())
        tolerance = 2 * max(merged.rank_error, whole.rank_error) + 1 / finite.size
        assert low - tolerance <= q <= high + tolerance


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.sampled_from(["a", "b", "c", "dd", "é", ""]), st.none()), max_size=200),
        min_size=2,
        max_size=4,
    )
)
def test_merged_string_profiles_equal_the_profile_of_all_the_data(parts: list[list[str | None]]) -> None:
    merged = FeatureProfile()
    for part in parts:
        merged.merge_into(FeatureProfile.of(part))
    whole = FeatureProfile.of([v for p in parts for v in p])
    assert (merged.count, merged.nulls) == (whole.count, whole.nulls)
    assert merged.frequencies() == whole.frequencies()
    assert (merged.min_length, merged.max_length) == (whole.min_length, whole.max_length)
