"""One side of a drift comparison: a column's values, from raw data or from a profile.

A :class:`Side` is what every drift score reads: for numbers, the finite values sorted
ascending with their weights (1 each from raw data; the quantile sketch's retained numbers
and weights from a profile) and the sketch's rank error; for categories, the counts of
each category with how far each count may be off. Missing and out-of-schema counts ride
along. ``stalwart.monitoring.drift`` builds the cells and scores from two sides.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stalwart.errors import ConfigError
from stalwart.monitoring.profiles import (
    BOOLEAN,
    NULL,
    NUMBER,
    STRING,
    FeatureProfile,
    as_floats,
    column_array,
    value_classes,
)

__all__ = ["Kind", "Side", "side_of_profile", "side_of_values"]

Kind = Literal["numeric", "categorical"]
Array = np.ndarray[Any, Any]


@dataclass(slots=True)
class Side:
    """A column's values as the drift scores read them (see the module docstring)."""

    kind: Kind
    count: int  # every value, missing ones included
    missing: int  # None, NaN
    unexpected: int  # values of a type the column's kind does not allow, and +-inf
    mode: Literal["exact", "sketch"]
    # numeric
    values: Array = field(default_factory=lambda: np.empty(0))  # finite, ascending
    weights: Array | None = None  # None: every value weighs 1 (raw data, or an exact sketch)
    rank_error: float = 0.0  # sup_x |F_sketch(x) - F(x)|, 0 when exact
    variance: float | None = None  # population variance (ddof 0); None when unknown
    low: float = math.nan
    high: float = math.nan
    # categorical
    counts: dict[str, int] = field(default_factory=dict)
    count_error: int = 0  # any category's count may be off by this much (0: exact)

    @property
    def present(self) -> int:
        """How many values the scores use (finite numbers, or categories)."""
        if self.kind == "numeric":
            return int(self.values.size) if self.weights is None else round(float(self.weights.sum()))
        return sum(self.counts.values())

    @property
    def exact(self) -> bool:
        """Whether the scores read the values themselves (no sketch error)."""
        return self.rank_error == 0.0 and self.count_error == 0

    def cumulative(self) -> Array:
        """Cumulative weights of :attr:`values` (1, 2, 3, ... for raw values)."""
        if self.weights is None:
            return np.arange(1, self.values.size + 1, dtype=np.float64)
        return np.asarray(np.cumsum(self.weights), dtype=np.float64)

    def unique_values(self) -> Array:
        """The distinct numbers (of the sketch's retained ones, from a profile)."""
        v = self.values
        if v.size == 0:
            return v
        return np.asarray(v[np.append(True, v[1:] != v[:-1])])


def side_of_values(values: object, kind: Kind | None = None) -> Side:
    """A side from raw values (numpy array, list, pandas or polars Series).

    ``kind`` None infers it: numbers are numeric; strings and booleans categorical. Given
    a kind, values that do not fit it count as unexpected.
    """
    array = column_array(values).reshape(-1)
    dtype_kind = array.dtype.kind
    if dtype_kind in "fiu":
        numbers = array.astype(np.float64, copy=False)
        if kind in (None, "numeric"):
            return _numeric_side(numbers, int(array.size), missing=0, unexpected=0)
        nan = int(np.isnan(numbers).sum())
        return Side("categorical", int(array.size), nan, int(array.size) - nan, "exact")
    if dtype_kind == "b":
        if kind in (None, "categorical"):
            trues = int(np.count_nonzero(array))
            counts = {k: v for k, v in (("true", trues), ("false", int(array.size) - trues)) if v}
            return Side("categorical", int(array.size), 0, 0, "exact", counts=counts)
        return Side("numeric", int(array.size), 0, int(array.size), "exact")
    objects = array.astype(object) if dtype_kind in "US" else array
    if dtype_kind not in "USO":
        raise ConfigError(f"cannot score drift on values of dtype {array.dtype}; give numbers or strings")
    return _object_side(objects, kind)


def side_of_profile(profile: FeatureProfile, kind: Kind | None = None) -> Side:
    """A side from a profile: its quantile sketch for numbers, frequent items for categories."""
    own: Kind = "numeric" if profile.kind in ("numeric", "integer") else "categorical"
    if profile.kind == "unknown":
        own = kind or "numeric"
    if kind is not None and kind != own and profile.kind != "unknown":
        # A whole profile of the wrong type: every value is unexpected.
        return Side(kind, profile.count, profile.nulls, profile.count - profile.nulls, "sketch")
    missing = profile.nulls + profile.nan
    if own == "numeric":
        values, weights = profile.retained()
        exact = profile.quantiles_exact
        return Side(
            "numeric",
            profile.count,
            missing,
            profile.mismatched + profile.inf,
            "sketch",
            values=values,
            weights=None if exact else weights,
            rank_error=0.0 if exact else profile.rank_error,
            variance=profile.variance,
            low=profile.min if profile.min is not None else math.nan,
            high=profile.max if profile.max is not None else math.nan,
        )
    return Side(
        "categorical",
        profile.count,
        missing,
        profile.mismatched,
        "sketch",
        counts=profile.frequencies(),
        count_error=profile.frequency_error,
    )


# -- private helpers ------------------------------------------------------------------


def _numeric_side(numbers: Array, count: int, *, missing: int, unexpected: int) -> Side:
    finite_mask = np.isfinite(numbers)
    if finite_mask.all():
        finite = numbers
    else:
        nan = int(np.isnan(numbers).sum())
        missing += nan
        unexpected += int(numbers.size) - int(finite_mask.sum()) - nan  # +-inf
        finite = numbers[finite_mask]
    ordered = np.sort(finite)
    has = ordered.size > 0
    return Side(
        "numeric",
        count,
        missing,
        unexpected,
        "exact",
        values=ordered,
        variance=float(np.var(ordered)) if has else None,
        low=float(ordered[0]) if has else math.nan,
        high=float(ordered[-1]) if has else math.nan,
    )


def _object_side(objects: Array, kind: Kind | None) -> Side:
    classes = value_classes(objects)
    strings = classes == STRING
    bools = classes == BOOLEAN
    numbers = classes == NUMBER
    nulls = classes == NULL
    if numbers.any():
        # NaN among objects is a missing value (pandas' convention), whatever the kind.
        at = np.flatnonzero(numbers)
        nan_at = at[[v != v for v in objects[at].tolist()]]
        nulls[nan_at] = True
        numbers[nan_at] = False
    if kind is None:
        kind = "categorical" if strings.any() or bools.any() or not numbers.any() else "numeric"
    size, n_null = int(objects.size), int(nulls.sum())
    if kind == "numeric":
        good = int(numbers.sum())
        side = _numeric_side(as_floats(objects[numbers]), size, missing=n_null, unexpected=size - n_null - good)
        return side
    if strings.any():
        counts = Counter(objects[strings].tolist())
        unexpected = size - n_null - int(strings.sum())
    else:
        flags = objects[bools].astype(bool)
        trues = int(np.count_nonzero(flags))
        counts = Counter({k: v for k, v in (("true", trues), ("false", int(flags.size) - trues)) if v})
        unexpected = size - n_null - int(bools.sum())
    return Side("categorical", size, n_null, unexpected, "exact", counts=dict(counts))
