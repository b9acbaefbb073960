"""Profiles: mergeable summaries of feature values, for schemas, drift and skew.

A :class:`FeatureProfile` summarises one column: exact counts (values, nulls, NaN, ±inf,
values of an unexpected type), min, max, sum and the sum of squared deviations from the
mean (merged by Chan et al.'s pairwise rule, so the variance stays exact and stable), and Apache DataSketches sketches: a KLL
quantile sketch for numbers, a frequent-items sketch for strings, an HLL sketch for the
number of distinct values, and string length bounds. A :class:`Profile` is one per
feature of a dataset. Both are built from numpy columns or pandas/polars Series without a
Python loop per value, merge (so N replicas, or N chunks of a file, add up), and
serialize to JSON-safe data (sketch bytes in base64) for the registry.

>>> import numpy as np
>>> p = FeatureProfile.of(np.array([1.0, 2.0, np.nan, 4.0]))
>>> p.kind, p.count, p.nan, p.min, p.max
('numeric', 4, 1, 1.0, 4.0)
>>> FeatureProfile.from_dict(p.to_dict()).quantile(0.5)
2.0

What counts as null: ``None`` (and pandas' ``NA``) anywhere, NaN in a string column (the
pandas convention for a missing string). NaN in a number column is counted as ``nan``, a
schema decides whether it means "missing".
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, Literal

import numpy as np

from stalwart.errors import ConfigError

__all__ = [
    "BOOLEAN",
    "NULL",
    "NUMBER",
    "OTHER",
    "STRING",
    "FeatureProfile",
    "Profile",
    "ProfileKind",
    "as_floats",
    "column_array",
    "columns_of",
    "value_classes",
]

ProfileKind = Literal["unknown", "numeric", "integer", "boolean", "string"]

_FORMAT = 1
_KLL_K = 200  # ~1.3% normalised rank error
_ITEMS_LG_MAX = 10  # frequent items: exact while a column has fewer than 768 distinct values
_HLL_LG_K = 12  # ~1.6% relative error on the distinct count
_NUMBER_KINDS = frozenset(("numeric", "integer"))


def _sketches() -> Any:
    # Imported on first use so `import stalwart.monitoring` stays light.
    import datasketches

    return datasketches


class FeatureProfile:
    """A mergeable summary of one feature's values.

    Build one with :meth:`of` (or an empty one and :meth:`update` it chunk by chunk),
    combine two with :meth:`merge`, store it with :meth:`to_dict`. ``kind`` is decided by
    the first values seen; values that do not fit it later are counted in ``mismatched``.
    """

    __slots__ = (
        "_hll",
        "_items",
        "_kll",
        "count",
        "falses",
        "inf",
        "kind",
        "m2",
        "max",
        "max_length",
        "min",
        "min_length",
        "mismatched",
        "nan",
        "nulls",
        "total",
        "trues",
    )

    def __init__(self, kind: ProfileKind = "unknown") -> None:
        self.kind: ProfileKind = kind
        self.count = 0  # every value seen, nulls included
        self.nulls = 0
        self.nan = 0
        self.inf = 0
        self.mismatched = 0  # values of a type that does not fit ``kind``
        self.min: float | None = None  # finite values only
        self.max: float | None = None
        self.total = 0.0  # sum of finite values
        # Sum of squared deviations from the mean of the finite values (None: a profile
        # stored before this field existed, whose variance is unknown).
        self.m2: float | None = 0.0
        self.trues = 0
        self.falses = 0
        self.min_length: int | None = None
        self.max_length: int | None = None
        self._kll: Any = None
        self._items: Any = None
        self._hll: Any = None

    # -- building -------------------------------------------------------------------

    @classmethod
    def of(cls, values: object) -> FeatureProfile:
        """The profile of a column (numpy array, pandas or polars Series, or a list)."""
        profile = cls()
        profile.update(values)
        return profile

    def update(self, values: object) -> None:
        """Add a column of values to the profile, in place."""
        array = column_array(values)
        if array.ndim != 1:
            array = array.reshape(-1)
        if array.size == 0:
            return
        kind = array.dtype.kind
        if kind == "f":
            self._add_numbers(array.astype(np.float64, copy=False), integer=False)
        elif kind in "iu":
            self._add_numbers(array, integer=True)
        elif kind == "b":
            self._add_booleans(array)
        elif kind in "US":
            self._add_objects(array.astype(object))
        elif kind == "O":
            self._add_objects(array)
        else:
            self.count += int(array.size)
            self.mismatched += int(array.size)

    def _settle(self, kind: ProfileKind) -> bool:
        """Adopt ``kind`` when nothing was seen yet; True when the values fit this profile."""
        if self.kind == "unknown":
            self.kind = kind
            return True
        if self.kind == kind:
            return True
        if self.kind in _NUMBER_KINDS and kind in _NUMBER_KINDS:
            self.kind = "numeric"  # integers seen among floats widen to numbers
            return True
        return False

    def _add_numbers(self, array: np.ndarray[Any, Any], *, integer: bool) -> None:
        self.count += int(array.size)
        if not self._settle("integer" if integer else "numeric"):
            self.mismatched += int(array.size)
            return
        values = array.astype(np.float64, copy=False)
        finite_mask = np.isfinite(values)
        finite = values if finite_mask.all() else values[finite_mask]
        if finite.size != values.size:
            n_nan = int(np.isnan(values).sum())
            self.nan += n_nan
            self.inf += int(values.size) - int(finite.size) - n_nan
        if finite.size == 0:
            return
        low, high = float(finite.min()), float(finite.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        seen = int(self._kll.n) if self._kll is not None else 0
        with np.errstate(over="ignore", invalid="ignore"):
            chunk_total = float(finite.sum(dtype=np.float64))
            chunk_m2 = float(np.square(finite - chunk_total / finite.size).sum())
            self.m2 = _combine_m2(seen, self.total, self.m2, int(finite.size), chunk_total, chunk_m2)
            self.total += chunk_total
        ds = _sketches()
        if self._kll is None:
            self._kll = ds.kll_doubles_sketch(_KLL_K)
        if not (finite.flags.writeable and finite.flags.c_contiguous):
            finite = np.array(finite, dtype=np.float64)  # the sketch binding takes writable arrays only
        self._kll.update(finite)
        self._distinct(np.unique(finite).tolist())

    def _add_booleans(self, array: np.ndarray[Any, Any]) -> None:
        self.count += int(array.size)
        if not self._settle("boolean"):
            self.mismatched += int(array.size)
            return
        trues = int(np.count_nonzero(array))
        self.trues += trues
        self.falses += int(array.size) - trues
        self.min = 0.0 if self.falses else 1.0
        self.max = 1.0 if self.trues else 0.0

    def _add_objects(self, array: np.ndarray[Any, Any]) -> None:
        """Objects: str, bool, numbers and nulls, sorted by type without a Python loop."""
        classes = value_classes(array)
        nulls = classes == NULL
        strings = classes == STRING
        bools = classes == BOOLEAN
        numbers = classes == NUMBER
        if self.kind == "unknown":
            # The kind follows the values: any string makes a string column; otherwise
            # bools make it boolean, numbers numeric.
            if strings.any():
                self.kind = "string"
            elif bools.any():
                self.kind = "boolean"
            elif numbers.any():
                self.kind = "numeric"
        size = int(array.size)
        if self.kind == "string":
            if numbers.any():
                # NaN in a string column is pandas' missing value.
                at = np.flatnonzero(numbers)
                nulls[at[[v != v for v in array[at].tolist()]]] = True
            n_null, n_str = int(nulls.sum()), int(strings.sum())
            self.count += size
            self.nulls += n_null
            self.mismatched += size - n_null - n_str
            self._add_strings(array[strings])
            return
        good = bools if self.kind == "boolean" else numbers if self.kind in _NUMBER_KINDS else None
        n_null = int(nulls.sum())
        n_good = int(good.sum()) if good is not None else 0
        self.count += size - n_good
        self.nulls += n_null
        self.mismatched += size - n_good - n_null
        if good is None or not n_good:
            return
        if self.kind == "boolean":
            self._add_booleans(array[good].astype(bool))
            return
        values = array[good]
        integer = set(map(type, values.tolist())) <= _INT_TYPES
        self._add_numbers(as_floats(values), integer=integer)

    def _add_strings(self, strings: np.ndarray[Any, Any]) -> None:
        if strings.size == 0:
            return
        counts = Counter(strings.tolist())
        ds = _sketches()
        if self._items is None:
            self._items = ds.frequent_strings_sketch(_ITEMS_LG_MAX)
        update = self._items.update
        for value, weight in counts.items():
            update(value, weight)
        lengths = np.fromiter(map(len, counts), dtype=np.int64, count=len(counts))
        low, high = int(lengths.min()), int(lengths.max())
        self.min_length = low if self.min_length is None else min(self.min_length, low)
        self.max_length = high if self.max_length is None else max(self.max_length, high)
        self._distinct(counts.keys())

    def _distinct(self, values: Iterable[Any]) -> None:
        if self._hll is None:
            self._hll = _sketches().hll_sketch(_HLL_LG_K)
        update = self._hll.update
        for value in values:
            update(value)

    # -- combining ------------------------------------------------------------------

    def merge(self, other: FeatureProfile) -> FeatureProfile:
        """A new profile of both profiles' values (neither input changes).

        Raises :class:`ConfigError` when the kinds cannot be combined (strings with
        numbers); integers merge with numbers as numbers, an empty profile with anything.
        """
        merged = FeatureProfile.from_dict(self.to_dict())
        merged.merge_into(other)
        return merged

    def merge_into(self, other: FeatureProfile) -> None:
        """Add ``other``'s values to this profile, in place."""
        if other.kind != "unknown" and not self._settle(other.kind):
            raise ConfigError(
                f"cannot merge a {other.kind} profile into a {self.kind} profile; profiles of "
                f"one feature must come from values of one type"
            )
        self.count += other.count
        self.nulls += other.nulls
        self.nan += other.nan
        self.inf += other.inf
        self.mismatched += other.mismatched
        self.m2 = _combine_m2(
            int(self._kll.n) if self._kll is not None else 0, self.total, self.m2,
            int(other._kll.n) if other._kll is not None else 0, other.total, other.m2,
        )
        self.total += other.total
        self.trues += other.trues
        self.falses += other.falses
        self.min = _pick(min, self.min, other.min)
        self.max = _pick(max, self.max, other.max)
        self.min_length = _pick(min, self.min_length, other.min_length)
        self.max_length = _pick(max, self.max_length, other.max_length)
        has_sketch = any(x is not None for x in (other._kll, other._items, other._hll))
        ds = _sketches() if has_sketch else None
        if other._kll is not None and ds is not None:
            if self._kll is None:
                self._kll = ds.kll_doubles_sketch(_KLL_K)
            self._kll.merge(other._kll)
        if other._items is not None and ds is not None:
            if self._items is None:
                self._items = ds.frequent_strings_sketch(_ITEMS_LG_MAX)
            self._items.merge(other._items)
        if other._hll is not None and ds is not None:
            union = ds.hll_union(_HLL_LG_K)
            if self._hll is not None:
                union.update(self._hll)
            union.update(other._hll)
            self._hll = union.get_result()

    # -- queries --------------------------------------------------------------------

    @property
    def present(self) -> int:
        """Values that are neither null nor NaN."""
        return self.count - self.nulls - self.nan

    @property
    def missing_fraction(self) -> float:
        """Share of values that were null or NaN (0 for an empty profile)."""
        return (self.nulls + self.nan) / self.count if self.count else 0.0

    @property
    def mean(self) -> float | None:
        """Mean of the finite numbers (or share of True for booleans)."""
        if self.kind == "boolean":
            seen = self.trues + self.falses
            return self.trues / seen if seen else None
        n = self._kll.n if self._kll is not None else 0
        return self.total / n if n else None

    @property
    def variance(self) -> float | None:
        """Population variance (ddof 0) of the finite numbers; None when unknown or empty."""
        n = self._kll.n if self._kll is not None and self.kind in _NUMBER_KINDS else 0
        if not n or self.m2 is None or not math.isfinite(self.m2):
            return None
        return max(self.m2, 0.0) / n

    def quantile(self, q: float) -> float | None:
        """The value at normalised rank ``q`` (None without numbers)."""
        if self._kll is None or self._kll.is_empty():
            return None
        return float(self._kll.get_quantile(q))

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """Values at several normalised ranks (None without numbers)."""
        if self._kll is None or self._kll.is_empty():
            return None
        return [float(v) for v in self._kll.get_quantiles(list(qs))]

    def rank(self, value: float) -> float | None:
        """Share of numbers at or below ``value`` (approximately)."""
        if self._kll is None or self._kll.is_empty():
            return None
        return float(self._kll.get_rank(value, True))

    def cdf(self, splits: Sequence[float]) -> list[float] | None:
        """Cumulative shares at ``splits`` (increasing), ending with 1.0 for the rest."""
        if self._kll is None or self._kll.is_empty():
            return None
        return [float(v) for v in self._kll.get_cdf(list(splits), True)]

    @property
    def rank_error(self) -> float:
        """The quantile sketch's normalised rank error bound."""
        return float(self._kll.normalized_rank_error(False)) if self._kll is not None else 0.0

    @property
    def quantiles_exact(self) -> bool:
        """Whether the quantile sketch still holds every number (nothing compacted yet)."""
        return self._kll is None or not self._kll.is_estimation_mode()

    def retained(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The quantile sketch's retained numbers, ascending, and each one's weight.

        The sketch's distribution: ``weights.sum()`` is the count of finite numbers, and the
        share of numbers at or below ``x`` is estimated by the weights of retained numbers at
        or below ``x`` (within :attr:`rank_error`). Empty arrays without numbers.
        """
        if self._kll is None or self._kll.is_empty():
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
        pairs = np.array(list(self._kll), dtype=np.float64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        return pairs[order, 0], pairs[order, 1]

    def frequency_bounds(self) -> dict[str, tuple[int, int]]:
        """Lower and upper bound of each tracked string's count (equal when exact).

        A string the sketch does not list occurred at most :attr:`frequency_error` times.
        """
        if self.kind == "boolean":
            return {k: (v, v) for k, v in self.frequencies().items()}
        if self._items is None or self._items.is_empty():
            return {}
        ds = _sketches()
        rows = self._items.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        return {item: (int(low), int(high)) for item, _est, low, high in rows}

    @property
    def frequency_error(self) -> int:
        """How much any string's count may be off (0 while the counts are exact)."""
        if self.kind == "boolean" or self._items is None or self._items.is_empty():
            return 0
        bounds = self.frequency_bounds().values()
        return max((high - low for low, high in bounds), default=0)

    def frequencies(self) -> dict[str, int]:
        """Estimated count of each string (or ``"true"``/``"false"``), most frequent first.

        Exact while the column had fewer distinct values than the sketch tracks
        (see :attr:`frequencies_exact`); otherwise the heavy hitters, with counts that may
        be under-estimated by at most the sketch's error.
        """
        if self.kind == "boolean":
            pairs = [("true", self.trues), ("false", self.falses)]
            return {k: v for k, v in sorted(pairs, key=lambda kv: -kv[1]) if v}
        if self._items is None or self._items.is_empty():
            return {}
        ds = _sketches()
        rows = self._items.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        return {item: int(estimate) for item, estimate, _low, _high in rows}

    @property
    def frequencies_exact(self) -> bool:
        """Whether :meth:`frequencies` are exact counts (no item was ever evicted)."""
        if self._items is None or self._items.is_empty():
            return True
        ds = _sketches()
        rows = self._items.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        return all(low == high for _item, _est, low, high in rows)

    def distinct(self) -> float:
        """Estimated number of distinct non-null values (exact for booleans)."""
        if self.kind == "boolean":
            return float(bool(self.trues) + bool(self.falses))
        if self._hll is None:
            return 0.0
        return float(self._hll.get_estimate())

    def mode(self) -> str | bool | None:
        """The most frequent string (or boolean); None for numbers and empty profiles."""
        if self.kind == "boolean":
            if not (self.trues or self.falses):
                return None
            return self.trues >= self.falses
        freqs = self.frequencies()
        return next(iter(freqs)) if freqs else None

    # -- storage --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data (sketches as base64) that :meth:`from_dict` reads back."""
        data: dict[str, Any] = {
            "format": _FORMAT,
            "kind": self.kind,
            "count": self.count,
            "nulls": self.nulls,
            "nan": self.nan,
            "inf": self.inf,
            "mismatched": self.mismatched,
            "min": self.min,
            "max": self.max,
            "total": self.total if math.isfinite(self.total) else None,
            "m2": self.m2 if self.m2 is not None and math.isfinite(self.m2) else None,
            "trues": self.trues,
            "falses": self.falses,
            "min_length": self.min_length,
            "max_length": self.max_length,
        }
        if self._kll is not None:
            data["kll"] = _b64(self._kll.serialize())
        if self._items is not None:
            data["items"] = _b64(self._items.serialize())
        if self._hll is not None:
            data["hll"] = _b64(self._hll.serialize_compact())
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureProfile:
        """A profile from :meth:`to_dict` output."""
        try:
            if data.get("format") != _FORMAT:
                raise ConfigError(
                    f"profile format {data.get('format')!r} is not supported (expected {_FORMAT}); "
                    f"rebuild the profile with this release"
                )
            kind = data["kind"]
            if kind not in ("unknown", "numeric", "integer", "boolean", "string"):
                raise ConfigError(f"profile kind {kind!r} is unknown")
            profile = cls(kind)
            for key in ("count", "nulls", "nan", "inf", "mismatched", "trues", "falses"):
                setattr(profile, key, int(data[key]))
            profile.min = _opt_float(data.get("min"))
            profile.max = _opt_float(data.get("max"))
            total = data.get("total")
            profile.total = float(total) if total is not None else math.inf
            profile.m2 = _opt_float(data.get("m2"))  # absent in profiles stored before it
            profile.min_length = _opt_int(data.get("min_length"))
            profile.max_length = _opt_int(data.get("max_length"))
            ds = _sketches() if any(k in data for k in ("kll", "items", "hll")) else None
            if ds is not None and "kll" in data:
                profile._kll = ds.kll_doubles_sketch.deserialize(_unb64(data["kll"]))
            if ds is not None and "items" in data:
                profile._items = ds.frequent_strings_sketch.deserialize(_unb64(data["items"]))
            if ds is not None and "hll" in data:
                profile._hll = ds.hll_sketch.deserialize(_unb64(data["hll"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"stored profile is damaged ({type(exc).__name__}: {exc}); rebuild it") from exc
        return profile

    def __repr__(self) -> str:
        return (
            f"FeatureProfile(kind={self.kind!r}, count={self.count}, nulls={self.nulls}, "
            f"nan={self.nan}, min={self.min}, max={self.max})"
        )


class Profile(Mapping[str, FeatureProfile]):
    """One :class:`FeatureProfile` per feature of a dataset (a mapping, in column order).

    >>> p = Profile.of({"age": [30, 41, 52], "city": ["Oslo", "Lima", "Oslo"]})
    >>> p.rows, p["city"].frequencies()
    (3, {'Oslo': 2, 'Lima': 1})
    """

    __slots__ = ("features", "rows")

    def __init__(self, features: Mapping[str, FeatureProfile] | None = None, rows: int = 0) -> None:
        self.features: dict[str, FeatureProfile] = dict(features or {})
        self.rows = rows

    @classmethod
    def of(cls, data: object, names: Sequence[str] | None = None) -> Profile:
        """The profile of a DataFrame, a mapping of columns, or a 2-D array with ``names``."""
        profile = cls()
        profile.update(data, names)
        return profile

    def update(self, data: object, names: Sequence[str] | None = None) -> None:
        """Add a chunk of rows, in place (a feature new in this chunk starts empty)."""
        columns = columns_of(data, names)
        rows = _row_count(columns)
        for name, values in columns.items():
            feature = self.features.get(name)
            if feature is None:
                feature = self.features[name] = FeatureProfile()
            feature.update(values)
        self.rows += rows

    def merge(self, other: Profile) -> Profile:
        """A new profile of both datasets (features missing on one side count only the other's)."""
        merged = Profile({k: v.merge(FeatureProfile()) for k, v in self.features.items()}, self.rows)
        for name, feature in other.features.items():
            if name in merged.features:
                merged.features[name].merge_into(feature)
            else:
                merged.features[name] = feature.merge(FeatureProfile())
        merged.rows += other.rows
        return merged

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data that :meth:`from_dict` reads back."""
        return {
            "format": _FORMAT,
            "rows": self.rows,
            "features": {name: f.to_dict() for name, f in self.features.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if data.get("format") != _FORMAT or not isinstance(data.get("features"), Mapping):
            raise ConfigError("stored dataset profile is damaged or from another release; rebuild it")
        return cls(
            {str(k): FeatureProfile.from_dict(v) for k, v in data["features"].items()},
            int(data.get("rows", 0)),
        )

    def __getitem__(self, name: str) -> FeatureProfile:
        return self.features[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        return f"Profile(rows={self.rows}, features={list(self.features)})"


def columns_of(data: object, names: Sequence[str] | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """Named 1-D columns of a DataFrame (pandas, polars), a mapping, or a 2-D array.

    A 2-D array needs ``names``, one per column, in order.
    """
    if isinstance(data, Mapping):
        return {str(k): column_array(v) for k, v in data.items()}
    frame_columns = getattr(data, "columns", None)
    if frame_columns is not None and hasattr(data, "__getitem__"):
        return {str(name): column_array(data[name]) for name in frame_columns}
    array = np.asarray(data)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ConfigError(f"data of shape {list(array.shape)} is not a table; give rows of columns")
    if names is None or len(names) != array.shape[1]:
        raise ConfigError(
            f"a 2-D array has {array.shape[1]} unnamed columns; pass names= with one name per column"
        )
    return {str(name): array[:, j] for j, name in enumerate(names)}


def column_array(values: object) -> np.ndarray[Any, Any]:
    """A column as numpy: nullable pandas types become float (NaN) or object (None)."""
    if isinstance(values, np.ndarray):
        return values
    dtype = getattr(values, "dtype", None)
    to_numpy = getattr(values, "to_numpy", None)
    if callable(to_numpy) and dtype is not None and not isinstance(dtype, np.dtype):
        # A pandas extension type: nullable ints/floats/bools, strings, categoricals.
        kind = getattr(dtype, "kind", "O")
        has_na = bool(getattr(values, "hasnans", False))
        if kind in "iuf" and (has_na or kind == "f"):
            return np.asarray(to_numpy(dtype=np.float64, na_value=np.nan))
        if kind in "iub" and not has_na:
            return np.asarray(to_numpy(dtype=getattr(dtype, "numpy_dtype", None)))
        return np.asarray(to_numpy(dtype=object, na_value=None))
    if callable(to_numpy):
        return np.asarray(to_numpy())
    if isinstance(values, (list, tuple)):
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return _tighten(array)
    return np.asarray(values)


def _tighten(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A list of plain ints, floats or bools as a typed array; anything else stays objects."""
    types = set(map(type, array.tolist()))
    if types == {bool}:
        return array.astype(bool)
    if types and types <= {int, float} and float in types:
        return as_floats(array)
    if types == {int}:
        try:
            return array.astype(np.int64)
        except OverflowError:
            return array
    return array


def _row_count(columns: Mapping[str, np.ndarray[Any, Any]]) -> int:
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise ConfigError(f"columns have different lengths {sorted(lengths)}; give whole rows")
    return lengths.pop() if lengths else 0


# Object values sorted into classes by exact type, in C (map + dict.get), no Python loop.
NULL, STRING, BOOLEAN, NUMBER, OTHER = 0, 1, 2, 3, 4
_INT_TYPES = frozenset(
    (int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
)
_CLASSES: dict[type, int] = {
    type(None): NULL,
    str: STRING,
    np.str_: STRING,
    bool: BOOLEAN,
    np.bool_: BOOLEAN,
    float: NUMBER,
    np.float16: NUMBER,
    np.float32: NUMBER,
    np.float64: NUMBER,
    **dict.fromkeys(_INT_TYPES, NUMBER),
}


def value_classes(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The class of each object (``NULL``, ``STRING``, ``BOOLEAN``, ``NUMBER``, ``OTHER``).

    Exact types are looked up in C; only unusual objects (subclasses, pandas' ``NA``) take
    a second, per-value look.
    """
    size = int(array.size)
    classes = np.fromiter(
        map(_CLASSES.get, map(type, array.ravel().tolist()), repeat(OTHER, size)),
        dtype=np.uint8,
        count=size,
    )
    others = np.flatnonzero(classes == OTHER)
    if others.size:
        flat = array.ravel()
        for i in others.tolist():
            classes[i] = _class_of_unusual(flat[i])
    return classes.reshape(array.shape)


def _class_of_unusual(value: object) -> int:
    if type(value).__name__ == "NAType":  # pandas.NA, without importing pandas
        return NULL
    if isinstance(value, (bool, np.bool_)):
        return BOOLEAN
    if isinstance(value, str):
        return STRING
    if isinstance(value, (int, float, np.integer, np.floating)):
        return NUMBER
    return OTHER


def as_floats(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Numbers held as objects, as float64 (ints too large for a float become ±inf)."""
    try:
        return np.asarray(values.tolist(), dtype=np.float64)
    except OverflowError:
        return np.fromiter(map(_float_or_inf, values), dtype=np.float64, count=len(values))


def _float_or_inf(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _combine_m2(
    n_a: int, total_a: float, m2_a: float | None, n_b: int, total_b: float, m2_b: float | None
) -> float | None:
    """Sum of squared deviations of two groups together (Chan, Golub and LeVeque)."""
    if m2_a is None or m2_b is None:
        return None
    if not n_a:
        return m2_b
    if not n_b:
        return m2_a
    delta = total_b / n_b - total_a / n_a
    return m2_a + m2_b + delta * delta * n_a * n_b / (n_a + n_b)


def _pick(fn: Any, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
