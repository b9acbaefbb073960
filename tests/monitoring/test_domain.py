"""The domain classifier: AUROC ~0.5 on one distribution, high when the joint distribution moves."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from stalwart.errors import ConfigError, MissingExtraError
from stalwart.monitoring.domain import domain_drift, null_threshold
from stalwart.monitoring.drift import dataset_drift


def _table(rng: np.random.Generator, n: int, *, correlated: bool) -> dict[str, np.ndarray]:
    x = rng.normal(size=n)
    y = 0.9 * x + np.sqrt(1 - 0.81) * rng.normal(size=n) if correlated else rng.normal(size=n)
    colour = rng.choice(np.array(["red", "green", None], dtype=object), n)
    return {"x": x, "y": y, "colour": colour}


def test_same_distribution_scores_about_one_half_and_does_not_drift() -> None:
    """Rows from one distribution cannot be told apart: AUROC near 0.5, no drift."""
    rng = np.random.default_rng(0)
    result = domain_drift(_table(rng, 3000, correlated=False), _table(rng, 3000, correlated=False))
    assert abs(result.auroc - 0.5) < 0.04
    assert not result.drifted


def test_a_moved_joint_distribution_is_caught_where_univariate_drift_is_not() -> None:
    """Same marginals, new correlation: every column passes univariate tests, the classifier sees it."""
    rng = np.random.default_rng(1)
    ref, cur = _table(rng, 3000, correlated=False), _table(rng, 3000, correlated=True)
    assert dataset_drift(ref, cur).share == 0.0
    result = domain_drift(ref, cur)
    assert result.auroc > 0.65
    assert result.drifted
    assert result.columns == ("x", "y", "colour")


def test_large_sides_are_subsampled_to_the_row_limit() -> None:
    """The classifier fits on at most max_rows rows per side, whatever the window's size."""
    rng = np.random.default_rng(2)
    result = domain_drift(
        _table(rng, 6000, correlated=False), _table(rng, 500, correlated=False), max_rows=1000, folds=3
    )
    assert (result.reference_rows, result.current_rows, result.folds) == (1000, 500, 3)
    assert result.threshold == pytest.approx(null_threshold(1000, 500))


def test_the_default_threshold_asks_more_of_small_windows() -> None:
    """0.55 for large samples; 0.5 + 3 null standard errors when that is higher."""
    assert null_threshold(10_000, 10_000) == 0.55
    assert null_threshold(100, 100) == pytest.approx(0.5 + 3 * np.sqrt(201 / (12 * 100 * 100)))


def test_bad_arguments_are_config_errors() -> None:
    """Unknown columns, too few rows and silly limits say what to give instead."""
    rng = np.random.default_rng(3)
    table = _table(rng, 50, correlated=False)
    with pytest.raises(ConfigError, match="not in both tables"):
        domain_drift(table, {"x": table["x"]})
    with pytest.raises(ConfigError, match="at least 5 rows"):
        domain_drift(table, {k: v[:3] for k, v in table.items()})
    with pytest.raises(ConfigError, match="max_rows"):
        domain_drift(table, table, max_rows=1)


def test_without_scikit_learn_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """scikit-learn is optional: without it, the error says pip install 'stalwart[sklearn]'."""
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)  # what `import` sees when it is absent
    rng = np.random.default_rng(4)
    table = _table(rng, 50, correlated=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'stalwart\[sklearn\]'"):
        domain_drift(table, table)
