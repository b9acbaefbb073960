"""Multivariate drift: can a classifier tell reference rows from current rows?

As NannyML's domain classifier: label reference rows 0 and current rows 1, fit a gradient
boosted tree classifier with stratified k-fold cross-validation, and score the
out-of-fold predicted probabilities by ROC AUC. About 0.5 means the rows are
indistinguishable; near 1 means the joint distribution moved (even when no single
column's distribution did). Needs scikit-learn (``pip install 'stalwart[sklearn]'``),
imported on first call.

Cost is bounded: each side is subsampled (without replacement, seeded) to at most
``max_rows`` rows before fitting, so a call costs ``folds`` fits of at most 100 trees on at
most ``2 * max_rows`` rows whatever the window's size, on one OpenMP thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.errors import ConfigError
from stalwart.monitoring.drift_inputs import side_of_values
from stalwart.monitoring.profiles import column_array, columns_of

__all__ = ["DEFAULT_MAX_ROWS", "DomainDrift", "domain_drift", "null_threshold"]

DEFAULT_MAX_ROWS = 10_000
"""Rows per side the classifier sees at most (a uniform sample of larger sides)."""

_MIN_THRESHOLD = 0.55  # below this, a "difference" is too small to act on
_Z = 3.0  # the threshold sits this many null standard errors above 0.5


@dataclass(frozen=True, slots=True)
class DomainDrift:
    """The domain classifier's verdict: ``drifted`` when ``auroc > threshold``."""

    auroc: float
    threshold: float
    drifted: bool
    reference_rows: int  # rows fitted on, after subsampling
    current_rows: int
    folds: int
    columns: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data."""
        return {
            "auroc": self.auroc,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "folds": self.folds,
            "columns": list(self.columns),
        }


def null_threshold(n_reference: int, n_current: int) -> float:
    """The default AUROC threshold: ``max(0.55, 0.5 + 3 * se)``.

    ``se = sqrt((n_r + n_c + 1) / (12 n_r n_c))`` is the standard error of the AUROC when
    the two sides come from one distribution (Mann-Whitney U's null variance), so small
    windows need a clearer separation before they count as drift.
    """
    if n_reference <= 0 or n_current <= 0:
        return 1.0
    se = math.sqrt((n_reference + n_current + 1) / (12.0 * n_reference * n_current))
    return max(_MIN_THRESHOLD, 0.5 + _Z * se)


def domain_drift(
    reference: object,
    current: object,
    *,
    columns: list[str] | None = None,
    threshold: float | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    folds: int = 5,
    seed: int = 0,
) -> DomainDrift:
    """Cross-validated AUROC of a classifier telling ``reference`` rows from ``current`` rows.

    ``reference`` and ``current`` are tables (pandas or polars DataFrames, or mappings of
    column name to values); ``columns`` selects features (default: the reference's).
    Numbers are used as they are (missing values stay NaN, which the trees route);
    strings and booleans become category codes shared by both sides. ``threshold`` None
    uses :func:`null_threshold`.
    """
    if max_rows < 10:
        raise ConfigError(f"max_rows={max_rows} is too small; give at least 10 rows per side")
    if not 2 <= folds <= 20:
        raise ConfigError(f"folds={folds} must be between 2 and 20")
    ref_cols, cur_cols = columns_of(reference), columns_of(current)
    names = list(columns) if columns is not None else list(ref_cols)
    absent = [n for n in names if n not in ref_cols or n not in cur_cols]
    if absent or not names:
        raise ConfigError(f"columns {absent or names} are not in both tables; name columns both sides have")
    rng = np.random.default_rng(seed)
    ref_rows = _sample(_rows(ref_cols, names), max_rows, rng)
    cur_rows = _sample(_rows(cur_cols, names), max_rows, rng)
    n_ref, n_cur = len(ref_rows[0]), len(cur_rows[0])
    if min(n_ref, n_cur) < folds:
        raise ConfigError(f"each side needs at least {folds} rows (one per fold); got {n_ref} and {n_cur}")
    features = np.column_stack([_encode(r, c) for r, c in zip(ref_rows, cur_rows, strict=True)])
    labels = np.concatenate([np.zeros(n_ref, dtype=np.int8), np.ones(n_cur, dtype=np.int8)])
    auroc = _cross_validated_auroc(features, labels, folds, seed)
    limit = null_threshold(n_ref, n_cur) if threshold is None else float(threshold)
    return DomainDrift(auroc, limit, auroc > limit, n_ref, n_cur, folds, tuple(names))


# -- private helpers ------------------------------------------------------------------


def _rows(columns: Mapping[str, Any], names: list[str]) -> list[np.ndarray[Any, Any]]:
    arrays = [column_array(columns[n]).reshape(-1) for n in names]
    if len({a.size for a in arrays}) > 1:
        raise ConfigError("columns have different lengths; give whole rows")
    return arrays


def _sample(arrays: list[np.ndarray[Any, Any]], limit: int, rng: np.random.Generator) -> list[np.ndarray[Any, Any]]:
    size = arrays[0].size
    if size <= limit:
        return arrays
    keep = np.sort(rng.choice(size, limit, replace=False))
    return [a[keep] for a in arrays]


def _encode(ref: np.ndarray[Any, Any], cur: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """One feature column for both sides: numbers as floats, categories as shared codes."""
    side = side_of_values(ref)
    if side.kind == "numeric":
        return np.concatenate([_floats(ref), _floats(cur)])
    both = np.concatenate([ref.astype(object), cur.astype(object)]).tolist()
    # None and NaN are missing (NaN != NaN); anything else is a category by its text.
    present = np.array([v is not None and v == v for v in both], dtype=bool)
    codes = np.full(len(both), np.nan)
    if present.any():
        text = np.array([str(v) for v, keep in zip(both, present.tolist(), strict=True) if keep])
        _, inverse = np.unique(text, return_inverse=True)
        codes[present] = inverse
    return codes


def _floats(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    out = np.full(values.size, np.nan)
    for i, v in enumerate(values.tolist()):  # objects: numbers kept, anything else missing
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = float(v)
    return out


def _cross_validated_auroc(features: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], folds: int, seed: int) -> float:
    purpose = "the domain classifier (multivariate drift)"
    ensemble = require("sklearn.ensemble", extra="sklearn", purpose=purpose)
    selection = require("sklearn.model_selection", extra="sklearn", purpose=purpose)
    metrics = require("sklearn.metrics", extra="sklearn", purpose=purpose)
    threadpoolctl = require("threadpoolctl", extra="sklearn", purpose=purpose)
    model = ensemble.HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed)
    splitter = selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One OpenMP thread: on a busy machine (a server's workers, other processes) the
    # trees' thread pool oversubscribes the cores and a 0.5 s fit takes 30 s.
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        scores = selection.cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")
    return float(metrics.roc_auc_score(labels, scores[:, 1]))
