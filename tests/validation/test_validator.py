"""The compiled validator: every rule, every policy, the 422 body, and random payloads."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stalwart.errors import ConfigError, RequestError, ValidationFailed
from stalwart.serving.errors import error_response
from stalwart.validation.policy import PolicyOverrides, resolve_policies
from stalwart.validation.schema import Schema
from stalwart.validation.validator import QUICK_ROWS, Validator

SCHEMA = Schema.from_dict(
    {
        "margin": 0.1,
        "features": {
            "amount": {"kind": "numeric", "min": 0, "max": 100, "impute": 20.0},
            "count": {"kind": "integer", "min": 1, "max": 10, "impute": 3},
            "score": {"kind": "numeric", "nullable": True, "min": 0, "max": 1, "impute": 0.5},
            "member": {"kind": "boolean", "impute": False},
            "plan": {"kind": "categorical", "categories": {"free": 10, "pro": 5}, "impute": "free"},
            "note": {"kind": "string", "min_length": 2, "max_length": 10, "impute": "n/a", "margin": 0},
        },
    }
)
NAMES = list(SCHEMA.features)
GOOD: dict[str, Any] = {"amount": 50.0, "count": 5, "score": 0.5, "member": True, "plan": "pro", "note": "hello"}


def columns(n: int = 1, **bad: tuple[int, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """``n`` good rows as typed columns; ``bad={feature: (row, value)}`` puts one value in
    an object column."""
    out: dict[str, np.ndarray[Any, Any]] = {
        "amount": np.full(n, 50.0),
        "count": np.full(n, 5, dtype=np.int64),
        "score": np.full(n, 0.5),
        "member": np.full(n, True),
        "plan": np.array(["pro"] * n, dtype=object),
        "note": np.array(["hello"] * n, dtype=object),
    }
    for name, (row, value) in bad.items():
        column = out[name].astype(object)
        column[row] = value
        out[name] = column
    return out


def only(policy: str) -> Validator:
    return Validator(SCHEMA, policies=PolicyOverrides(default=policy))  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 12])
def test_a_valid_request_passes_without_a_copy(n: int) -> None:
    """Passing requests cost no copy: the very same arrays come back, with an empty report."""
    inputs = columns(n)
    fixed, report = Validator(SCHEMA).validate(inputs)
    assert fixed is inputs
    assert report.ok
    assert report.total == 0
    assert report.to_notes() == {"violations": 0}


RULE_CASES = [
    ("amount", "12", "type", "12"),
    ("amount", True, "type", True),
    ("count", 2.5, "type", 2.5),
    ("member", 3, "type", 3),
    ("plan", 7, "type", 7),
    ("note", b"raw", "type", "<3 bytes>"),
    ("amount", None, "null", None),
    ("plan", None, "null", None),
    ("note", float("nan"), "null", "NaN"),
    ("amount", float("nan"), "not_finite", "NaN"),
    ("amount", float("inf"), "not_finite", "Infinity"),
    ("amount", 110.01, "range", 110.01),
    ("amount", -10.5, "range", -10.5),
    ("count", 11, "range", 11),
    ("amount", 10**400, "range", "1" + "0" * 39 + "…"),
    ("plan", "team", "category", "team"),
    ("note", "x" * 11, "length", "x" * 11),
    ("note", "x", "length", "x"),
]


@pytest.mark.parametrize("n", [1, QUICK_ROWS + 4])
@pytest.mark.parametrize(("feature", "value", "rule", "shown"), RULE_CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(RULE_CASES)])
def test_each_rule_is_caught_and_reported(n: int, feature: str, value: Any, rule: str, shown: Any) -> None:
    """Each rule, on one row and in a batch: one violation with row, feature, rule, value, expected."""
    row = n - 1
    with pytest.raises(ValidationFailed) as caught:
        Validator(SCHEMA).validate(columns(n, **{feature: (row, value)}))
    (violation,) = caught.value.violations
    assert violation == {
        "row": row,
        "feature": feature,
        "rule": rule,
        "value": shown,
        "expected": violation["expected"],
        "policy": "reject",
        "action": "rejected",
    }
    assert violation["expected"]


def test_expected_says_what_would_have_passed() -> None:
    validator = Validator(SCHEMA)
    expected = {}
    for feature, value in (("amount", 500.0), ("count", 50), ("plan", "team"), ("note", "x"), ("amount", "a")):
        _, report = validator.check(columns(1, **{feature: (0, value)}))
        expected[(feature, report.violations[0].rule)] = report.violations[0].expected
    assert expected == {
        ("amount", "range"): "[-10, 110]",
        ("count", "range"): "[1, 10]",
        ("plan", "category"): "one of 'free', 'pro'",
        ("note", "length"): "length [2, 10]",
        ("amount", "type"): "a number",
    }


def test_a_missing_feature_is_one_violation_for_every_row() -> None:
    inputs = columns(3)
    del inputs["plan"]
    with pytest.raises(ValidationFailed) as caught:
        Validator(SCHEMA).validate(inputs)
    assert caught.value.violations == [
        {"row": None, "feature": "plan", "rule": "missing", "value": None,
         "expected": "one of 2 categories", "policy": "reject", "action": "rejected"}
    ]


def test_margin_widens_the_training_range() -> None:
    """With margin 0.1 on [0, 100], 110 passes and 110.01 does not."""
    validator = Validator(SCHEMA)
    assert validator.check(columns(1, amount=(0, 110.0)))[1].ok
    assert not validator.check(columns(1, amount=(0, 110.01)))[1].ok


def test_nulls_pass_where_training_had_them() -> None:
    validator = Validator(SCHEMA)
    assert validator.check(columns(1, score=(0, None)))[1].ok
    assert validator.check(columns(12, score=(3, float("nan"))))[1].ok


def test_the_422_lists_every_violation_in_row_then_feature_order() -> None:
    """Not just the first: all of them, sorted, each machine-readable, with a message that
    says what to do."""
    inputs = columns(4, amount=(2, 1e6), plan=(0, "team"), note=(2, ""))
    inputs["count"] = np.array([5, 5, 5, 99])
    with pytest.raises(ValidationFailed) as caught:
        Validator(SCHEMA).validate(inputs)
    error = caught.value
    assert [(v["row"], v["feature"], v["rule"]) for v in error.violations] == [
        (0, "plan", "category"),
        (2, "amount", "range"),
        (2, "note", "length"),
        (3, "count", "range"),
    ]
    assert all(set(v) == {"row", "feature", "rule", "value", "expected", "policy", "action"} for v in error.violations)
    assert error.message.startswith("4 values broke the input schema under the reject policy: row 0 'plan': category")
    assert "'violations' lists every one" in error.message
    assert "stalwart schema attach" in error.message


def test_the_422_body_is_json_with_every_violation() -> None:
    """What a client receives: status 422, the message, and the machine-readable list,
    with NaN, infinities and oversized values made JSON-safe."""
    inputs = columns(2, amount=(0, float("nan")), note=(1, "ü" * 500))
    inputs["score"] = np.array([np.inf, 0.5])
    with pytest.raises(ValidationFailed) as caught:
        Validator(SCHEMA).validate(inputs)
    response = error_response(caught.value, "r1")
    assert response.status_code == 422
    body = json.loads(bytes(response.body))
    assert body["error"] == caught.value.message
    assert body["violations"] == [
        {"row": 0, "feature": "amount", "rule": "not_finite", "value": "NaN",
         "expected": "a number (no NaN was seen in training)", "policy": "reject", "action": "rejected"},
        {"row": 0, "feature": "score", "rule": "not_finite", "value": "Infinity",
         "expected": "a finite number", "policy": "reject", "action": "rejected"},
        {"row": 1, "feature": "note", "rule": "length", "value": "ü" * 120 + "…",
         "expected": "length [2, 10]", "policy": "reject", "action": "rejected"},
    ]


def test_impute_replaces_broken_values_with_the_training_median_or_mode() -> None:
    inputs = columns(3, amount=(1, float("nan")), plan=(2, "team"), member=(0, "yes"), note=(1, None))
    inputs["count"] = np.array([5, 50, 5])
    del inputs["score"]
    fixed, report = only("impute").validate(inputs)
    assert fixed["amount"].tolist()[1] == 20.0
    assert fixed["count"].tolist() == [5, 3, 5]
    assert fixed["count"].dtype == np.int64
    assert fixed["plan"].tolist() == ["pro", "pro", "free"]
    assert fixed["member"].tolist() == [False, True, True]
    assert fixed["note"].tolist() == ["hello", "n/a", "hello"]
    assert fixed["score"].tolist() == [0.5, 0.5, 0.5]
    assert report.response_part() == {
        "imputed": {"amount": [1], "count": [1], "score": [0, 1, 2], "member": [0], "plan": [2], "note": [1]}
    }
    assert inputs["count"].tolist() == [5, 50, 5]  # the caller's arrays are not changed


def test_clip_bounds_what_has_a_bound_and_imputes_the_rest() -> None:
    inputs = columns(
        5,
        amount=(0, 500.0),
        note=(1, "x" * 30),
        plan=(2, "team"),
    )
    inputs["amount"][1] = -np.inf
    inputs["amount"][2] = float("nan")
    inputs["count"] = np.array([0, 5, 5, 5, 99])
    inputs["note"][3] = "x"
    fixed, report = only("clip").validate(inputs)
    assert fixed["amount"].tolist()[:3] == [110.0, -10.0, 20.0]
    assert fixed["count"].tolist() == [1, 5, 5, 5, 10]
    assert fixed["note"].tolist()[1] == "x" * 10
    assert fixed["note"].tolist()[3] == "n/a"
    assert fixed["plan"].tolist()[2] == "free"
    assert report.response_part() == {
        "clipped": {"amount": [0, 1], "count": [0, 4], "note": [1]},
        "imputed": {"amount": [2], "note": [3], "plan": [2]},
    }
    clipped = [v for v in report.violations if v.action == "clipped" and v.feature == "amount"]
    assert [(v.row, v.value, v.fixed) for v in clipped] == [(0, 500.0, 110.0), (1, "-Infinity", -10.0)]


def test_clip_on_an_unbounded_side_imputes() -> None:
    schema = Schema.from_dict({"features": {"x": {"kind": "numeric", "min": 0, "impute": 1.0}}})
    fixed, report = Validator(schema, policies={"x": "clip"}).validate({"x": np.array([-5.0, np.inf, 3.0])})
    assert fixed["x"].tolist() == [0.0, 1.0, 3.0]
    assert report.response_part() == {"clipped": {"x": [0]}, "imputed": {"x": [1]}}


def test_flag_serves_the_values_unchanged_and_marks_them() -> None:
    inputs = columns(3, amount=(0, 1e6), plan=(1, "team"), note=(2, None))
    fixed, report = only("flag").validate(inputs)
    assert fixed is inputs
    assert report.response_part() == {"flagged": {"amount": [0], "plan": [1], "note": [2]}}
    assert report.rejected == 0


def test_flag_cannot_serve_a_missing_feature_or_a_wrong_type() -> None:
    """Flag never changes a value, so what is absent or of the wrong type is rejected."""
    inputs = columns(2, amount=(0, "abc"))
    del inputs["plan"]
    with pytest.raises(ValidationFailed) as caught:
        only("flag").validate(inputs)
    assert [(v["feature"], v["rule"], v["policy"], v["action"]) for v in caught.value.violations] == [
        ("plan", "missing", "flag", "rejected"),
        ("amount", "type", "flag", "rejected"),
    ]


def test_policy_precedence_per_feature_beats_default_deployment_beats_schema() -> None:
    """Deployment per-feature > schema per-feature > deployment default > schema default."""
    schema = Schema.from_dict(
        {
            "default_policy": "reject",
            "features": {
                "a": {"kind": "numeric", "policy": "clip", "impute": 0.0},
                "b": {"kind": "numeric", "policy": "clip", "impute": 0.0},
                "c": {"kind": "numeric", "impute": 0.0},
                "d": {"kind": "numeric"},
            },
        }
    )
    assert resolve_policies(schema) == {"a": "clip", "b": "clip", "c": "reject", "d": "reject"}
    overrides = PolicyOverrides(default="flag", features={"a": "impute"})
    assert resolve_policies(schema, overrides) == {"a": "impute", "b": "clip", "c": "flag", "d": "flag"}
    assert resolve_policies(schema, {"c": "impute"})["c"] == "impute"
    with pytest.raises(ConfigError, match="'zz', which the schema does not have"):
        resolve_policies(schema, {"zz": "flag"})


def test_a_policy_that_needs_an_impute_value_without_one_is_refused_at_build() -> None:
    schema = Schema.from_dict({"features": {"x": {"kind": "numeric"}}})
    with pytest.raises(ConfigError, match="feature 'x' has policy impute"):
        Validator(schema, policies={"x": "impute"})
    Validator(schema, policies={"x": "flag"})


def test_policy_overrides_from_user_input_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"features\.x"):
        PolicyOverrides.parse({"features": {"x": "ignore"}})


def test_the_list_is_capped_but_counts_are_exact() -> None:
    n = 10_000
    inputs = columns(n)
    inputs["amount"] = np.full(n, 1e9)
    validator = Validator(SCHEMA, max_violations=100)
    fixed, report = validator.check(inputs)
    assert fixed is inputs
    assert (len(report.violations), report.total, report.rejected) == (100, n, n)
    assert report.counts == {("amount", "range", "rejected"): n}
    assert report.examples[("amount", "range")] == [(0, 1e9), (1, 1e9), (2, 1e9)]
    error = report.error()
    assert "'violations' lists the first 100 of 10000" in error.message
    assert len(error.violations) == 100


def test_typed_columns_of_every_common_dtype() -> None:
    """float32, small ints, fixed-width unicode and [n, 1] columns are checked as values."""
    inputs = columns(3)
    inputs["amount"] = np.array([[1.0], [2.0], [500.0]], dtype=np.float32)
    inputs["count"] = np.array([1, 2, 30], dtype=np.int8)
    inputs["plan"] = np.array(["free", "pro", "team"])
    inputs["note"] = np.array(["ok", "fine", "far too long text"])
    fixed, report = only("clip").validate(inputs)
    assert fixed["amount"].shape == (3, 1)
    assert fixed["amount"].ravel().tolist() == [1.0, 2.0, 110.0]
    assert fixed["count"].tolist() == [1, 2, 10]
    assert fixed["plan"].tolist() == ["free", "pro", "free"]
    assert fixed["note"].tolist() == ["ok", "fine", "far too lo"]
    assert report.total == 4


def test_int64_bounds_are_exact() -> None:
    schema = Schema.from_dict({"margin": 0, "features": {"id": {"kind": "integer", "min": 0, "max": 2**62}}})
    validator = Validator(schema)
    assert validator.check({"id": np.array([2**62, 0], dtype=np.int64)})[1].ok
    assert validator.check({"id": np.array([2**62 + 1] * 12, dtype=np.int64)})[1].total == 12
    assert validator.check({"id": np.array([2**63 - 1], dtype=np.uint64)})[1].total == 1


def test_malformed_inputs_are_request_errors() -> None:
    validator = Validator(SCHEMA)
    ragged = columns(3)
    ragged["amount"] = np.zeros(2)
    with pytest.raises(RequestError, match="feature 'amount' has shape \\[2\\]"):
        validator.validate(ragged, rows=3)
    with pytest.raises(RequestError, match="one value per row"):
        validator.validate(ragged)
    wide = columns(3)
    wide["amount"] = np.zeros((3, 2))
    with pytest.raises(RequestError, match="one value per row"):
        validator.validate(wide)


def test_extra_inputs_pass_through_untouched() -> None:
    inputs = columns(2)
    inputs["other"] = np.array(["anything", None], dtype=object)
    fixed, report = only("impute").validate(dict(inputs, amount=np.array([np.nan, 1.0])))
    assert fixed["other"] is inputs["other"]
    assert report.total == 1


MATRIX_SCHEMA = Schema.from_dict(
    {
        "margin": 0.0,
        "features": {
            "a": {"kind": "numeric", "min": 0, "max": 1, "impute": 0.5},
            "b": {"kind": "integer", "min": 0, "max": 5, "impute": 2},
            "c": {"kind": "boolean", "impute": True},
            "d": {"kind": "numeric", "nullable": True, "min": -1, "max": 1, "impute": 0.0},
        },
    }
)


def test_matrix_input_passes_without_a_copy() -> None:
    validator = Validator(MATRIX_SCHEMA, matrix="input-0")
    x = np.array([[0.5, 3.0, 1.0, np.nan], [0.0, 5.0, 0.0, 1.0]])
    inputs = {"input-0": x}
    fixed, report = validator.validate(inputs)
    assert fixed is inputs
    assert report.ok


def test_matrix_violations_are_found_and_fixed_in_a_copy() -> None:
    """Columns of one matrix are the schema's features, in order."""
    x = np.array([[0.5, 3.0, 1.0, 0.0], [7.0, 2.5, 0.5, np.inf], [0.2, 9.0, 1.0, 0.0]])
    with pytest.raises(ValidationFailed) as caught:
        Validator(MATRIX_SCHEMA, matrix="input-0").validate({"input-0": x})
    assert [(v["row"], v["feature"], v["rule"]) for v in caught.value.violations] == [
        (1, "a", "range"), (1, "b", "type"), (1, "c", "type"), (1, "d", "not_finite"), (2, "b", "range"),
    ]
    fixed, report = Validator(MATRIX_SCHEMA, matrix="input-0", policies=PolicyOverrides(default="clip")).validate({"input-0": x})
    assert fixed["input-0"].tolist() == [[0.5, 3.0, 1.0, 0.0], [1.0, 2.0, 1.0, 1.0], [0.2, 5.0, 1.0, 0.0]]
    assert x[1, 0] == 7.0  # the request's own matrix is untouched
    assert report.response_part() == {"clipped": {"a": [1], "b": [2], "d": [1]}, "imputed": {"b": [1], "c": [1]}}


def test_integer_matrices_are_checked_exactly() -> None:
    validator = Validator(MATRIX_SCHEMA, matrix="m", policies=PolicyOverrides(default="clip"))
    fixed, report = validator.validate({"m": np.array([[0, 9, 1, 0], [1, 2, 0, -1]], dtype=np.int64)})
    assert fixed["m"].tolist() == [[0, 5, 1, 0], [1, 2, 0, -1]]
    assert report.response_part() == {"clipped": {"b": [0]}}


def test_matrix_shape_must_match_the_schema() -> None:
    validator = Validator(MATRIX_SCHEMA, matrix="input-0")
    with pytest.raises(RequestError, match="takes rows of 4 features"):
        validator.validate({"input-0": np.zeros((2, 3))})
    with pytest.raises(RequestError, match="input 'input-0' is missing"):
        validator.validate({"other": np.zeros((2, 4))})


def test_a_matrix_of_numbers_cannot_have_text_features() -> None:
    with pytest.raises(ConfigError, match="feature 'plan' is categorical"):
        Validator(SCHEMA, matrix="input-0")


# -- properties ------------------------------------------------------------------------

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=20),
    st.none(),
    st.booleans(),
    st.sampled_from(["free", "pro", "hello", "", "ü" * 3]),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def _object_column(items: list[Any]) -> np.ndarray[Any, Any]:
    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, np.ndarray[Any, Any]]:
    n = draw(st.integers(min_value=0, max_value=12))
    names = draw(st.lists(st.sampled_from([*NAMES, "extra", "ünïcode"]), unique=True, max_size=8))
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name in names:
        rows = n if draw(st.integers(0, 9)) else draw(st.integers(0, 12))
        style = draw(st.sampled_from(["objects", "floats", "ints", "bools", "text"]))
        if style == "objects":
            out[name] = _object_column(draw(st.lists(values, min_size=rows, max_size=rows)))
        elif style == "floats":
            out[name] = np.array(draw(st.lists(st.floats(), min_size=rows, max_size=rows)), dtype=np.float64)
        elif style == "ints":
            out[name] = np.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows)), dtype=np.int64)
        elif style == "bools":
            out[name] = np.array(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=bool)
        else:
            out[name] = np.array(draw(st.lists(st.text(max_size=12), min_size=rows, max_size=rows)), dtype=str)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(), st.sampled_from(["reject", "impute", "clip", "flag"]))
def test_random_payloads_only_ever_fail_as_request_errors(inputs: dict[str, np.ndarray[Any, Any]], policy: str) -> None:
    """Random types, NaN, infinities, huge numbers, unicode, None, missing and extra
    features: validation fails only with ValidationFailed or RequestError (a 4xx), never
    anything that would be a 5xx."""
    validator = only(policy)
    failure: RequestError | None = None
    try:
        fixed, report = validator.validate(inputs)
    except (ValidationFailed, RequestError) as exc:
        failure = exc
    if failure is not None:
        response = error_response(failure, "r1")
        assert 400 <= response.status_code < 500
        body = json.loads(bytes(response.body))
        assert body["error"]
        if isinstance(failure, ValidationFailed):
            assert len(body["violations"]) == len(failure.violations) > 0
        return
    if policy in ("impute", "clip"):
        # Whatever impute and clip put in place passes the schema.
        again = validator.validate(fixed)[1]
        assert again.ok, again.to_notes()
    if report.ok:
        assert fixed is inputs


@st.composite
def rows_of_values(draw: st.DrawFn) -> dict[str, Any]:
    row = dict(GOOD)
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3)):
        row[name] = draw(st.one_of(values, st.floats(-20, 120), st.integers(-2, 13)))
    return row


@settings(max_examples=300, deadline=None)
@given(rows_of_values(), st.sampled_from(["reject", "impute", "clip", "flag"]))
def test_a_row_gets_the_same_verdict_alone_or_in_a_batch(row: dict[str, Any], policy: str) -> None:
    """The value-by-value path for small requests and the numpy path for batches agree."""
    validator = only(policy)
    alone = {name: _object_column([row[name]]) for name in NAMES}
    batch_size = QUICK_ROWS + 1
    batch = {name: _object_column([GOOD[name]] * (batch_size - 1) + [row[name]]) for name in NAMES}
    fixed_alone, report_alone = validator.check(alone)
    fixed_batch, report_batch = validator.check(batch)
    assert [(v.feature, v.rule, v.action, v.fixed) for v in report_alone.violations] == [
        (v.feature, v.rule, v.action, v.fixed) for v in report_batch.violations
    ]
    assert all(v.row == batch_size - 1 for v in report_batch.violations)
    for name in NAMES:
        one, last = fixed_alone[name].tolist()[0], fixed_batch[name].tolist()[-1]
        assert one == last or (isinstance(one, float) and math.isnan(one) and math.isnan(last))
