"""Compiled checks: one object per feature, built once from its schema, used per request.

Each check has two entry points:

* ``scan(column)``: the whole column at once with numpy (and, for object columns, C-level
  ``map`` over the values, never a Python loop per value). Returns ``None`` when every
  value passes, or one violation code per row (see :mod:`stalwart.validation.policy`).
  This is the truth.
* ``accept(value)``: a cheap predicate on one Python value, used for requests of a few
  rows, where numpy's per-call overhead would dominate. It may be stricter than ``scan``
  (then the request simply takes the ``scan`` path), never more lenient.

Bounds are resolved here: ``[min - margin * width, max + margin * width]`` where width is
``max - min``. Integer columns compare against integer bounds, so the check is exact for
every int64 value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stalwart.monitoring.profiles import BOOLEAN, NULL, NUMBER, STRING, as_floats, value_classes
from stalwart.validation.policy import CATEGORY, INF, LONG, NAN, RANGE, SHORT, TYPE
from stalwart.validation.policy import NULL as NULL_CODE
from stalwart.validation.schema import FeatureSchema

__all__ = [
    "BooleanCheck",
    "CategoricalCheck",
    "FeatureCheck",
    "NumericCheck",
    "StringCheck",
    "build_check",
    "widen",
]

Column = np.ndarray[Any, Any]
_EXACT_INT = 2**53  # beyond this a Python int and its float64 may differ
_UINT8 = np.uint8


def widen(low: float | None, high: float | None, margin: float) -> tuple[float, float]:
    """``[low, high]`` widened by ``margin`` times its width on each side (None: unbounded)."""
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    if low is not None and high is not None and margin:
        width = high - low
        lo, hi = low - margin * width, high + margin * width
    return lo, hi


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


class FeatureCheck:
    """The compiled check of one feature (a subclass per kind)."""

    name: str
    kind: str
    nullable: bool
    natural: np.dtype[Any]  # dtype of a column built from scratch (a missing feature imputed)
    expected: dict[int, str]  # what was expected, per violation code, for the report

    def __init__(self, name: str, schema: FeatureSchema) -> None:
        self.name = name
        self.kind = schema.kind
        self.nullable = schema.nullable
        self.described = schema.describe()
        self.expected = {
            TYPE: self.described,
            NULL_CODE: "a value (no nulls were seen in training)",
        }

    def scan(self, column: Column) -> Column | None:  # pragma: no cover - every kind overrides
        raise NotImplementedError

    def accept(self, value: object) -> bool:  # pragma: no cover - every kind overrides
        raise NotImplementedError

    def clip(self, values: Column, code: int) -> list[Any] | None:
        """Clipped replacements for ``values`` that broke rule ``code``.

        None when the rule has nothing to clip to; a None item asks for the impute value
        for that one value.
        """
        return None


class NumericCheck(FeatureCheck):
    """Numbers (``numeric``) and whole numbers (``integer``) within the widened range."""

    def __init__(self, name: str, schema: FeatureSchema, margin: float) -> None:
        super().__init__(name, schema)
        self.integer = schema.kind == "integer"
        self.lo, self.hi = widen(schema.min, schema.max, margin)
        if self.integer:
            # Whole-number features take whole-number bounds (and clip to them).
            self.lo = float(math.ceil(self.lo)) if math.isfinite(self.lo) else self.lo
            self.hi = float(math.floor(self.hi)) if math.isfinite(self.hi) else self.hi
        self.bounded = math.isfinite(self.lo) and math.isfinite(self.hi)
        self.natural = np.dtype(np.int64 if self.integer else np.float64)
        self.expected.update(
            {
                NAN: "a number (no NaN was seen in training)",
                INF: "a finite number",
                RANGE: f"[{_fmt(self.lo)}, {_fmt(self.hi)}]",
            }
        )

    def accept(self, value: object) -> bool:
        kind = type(value)
        if value is None:
            return self.nullable
        if kind is float:
            v: float = value  # type: ignore[assignment]
            if v != v:
                return self.nullable
            if not self.lo <= v <= self.hi:
                return False
            if not self.bounded and not math.isfinite(v):
                return False
            return not self.integer or v.is_integer()
        if kind is int:
            i: int = value  # type: ignore[assignment]
            return -_EXACT_INT <= i <= _EXACT_INT and self.lo <= i <= self.hi
        return False

    def scan(self, column: Column) -> Column | None:
        kind = column.dtype.kind
        if kind == "f":
            return self._scan_floats(column.astype(np.float64, copy=False), None)
        if kind in "iu":
            return self._scan_ints(column)
        if kind == "O":
            classes = value_classes(column)
            numbers = classes == NUMBER
            values = np.full(column.shape[0], np.nan)
            if numbers.any():
                values[numbers] = as_floats(column[numbers])
            codes = self._scan_floats(values, numbers)
            if codes is not None:
                # An int too large for a float is out of range, not infinite.
                for i in np.flatnonzero(codes == INF).tolist():
                    if isinstance(column[i], (int, np.integer)):
                        codes[i] = RANGE
            if numbers.all():
                return codes
            if codes is None:
                codes = np.zeros(column.shape[0], dtype=_UINT8)
            nulls = classes == NULL
            codes[nulls] = 0 if self.nullable else NULL_CODE
            codes[~numbers & ~nulls] = TYPE
            return codes if codes.any() else None
        return np.full(column.shape[0], TYPE, dtype=_UINT8)

    def _scan_floats(self, x: Column, present: Column | None) -> Column | None:
        """Codes for float values; ``present`` marks real numbers (None: all of them)."""
        with np.errstate(invalid="ignore"):
            ok = (x >= self.lo) & (x <= self.hi)
            if not self.bounded:
                ok &= np.isfinite(x)
            if self.integer:
                ok &= np.floor(x) == x
        if present is not None:
            ok |= ~present  # non-numbers are classified by the caller
        if ok.all():
            return None
        nan = np.isnan(x)
        if self.nullable:
            ok |= nan
            if ok.all():
                return None
        codes = np.where(ok, 0, RANGE).astype(_UINT8)
        if self.integer:
            finite = np.isfinite(x)
            fractional = np.zeros(x.shape[0], dtype=bool)
            fractional[finite] = np.floor(x[finite]) != x[finite]
            codes[fractional] = TYPE
        codes[np.isinf(x)] = INF
        if not self.nullable:
            codes[nan] = NAN
        if present is not None:
            codes[~present] = 0
        return codes

    def _scan_ints(self, column: Column) -> Column | None:
        if column.dtype.itemsize < 8:
            column = column.astype(np.int64)
        info = np.iinfo(column.dtype)
        size = column.shape[0]
        # Bounds outside the dtype's range pass (or fail) every value without comparing.
        if self.lo > info.max or self.hi < info.min:
            return np.full(size, RANGE, dtype=_UINT8)
        ok: Column | None = None
        if self.lo > info.min:
            ok = column >= math.ceil(self.lo)
        if self.hi < info.max:
            upper = column <= math.floor(self.hi)
            ok = upper if ok is None else ok & upper
        if ok is None or ok.all():
            return None
        return np.where(ok, 0, RANGE).astype(_UINT8)

    def clip(self, values: Column, code: int) -> list[Any] | None:
        if code not in (RANGE, INF):
            return None
        numbers = as_floats(values) if values.dtype.kind == "O" else values.astype(np.float64)
        bounds = np.where(numbers < self.lo, self.lo, self.hi)
        if np.isfinite(bounds).all():
            out: list[Any] = bounds.astype(np.int64).tolist() if self.integer else bounds.tolist()
            return out
        # An unbounded side has nothing to clip to: None asks for the impute value.
        return [
            (int(b) if self.integer else b) if math.isfinite(b) else None for b in bounds.tolist()
        ]


class BooleanCheck(FeatureCheck):
    """``True``/``False`` (and 0/1 where a number column carries them)."""

    def __init__(self, name: str, schema: FeatureSchema) -> None:
        super().__init__(name, schema)
        self.natural = np.dtype(bool)

    def accept(self, value: object) -> bool:
        kind = type(value)
        if kind is bool:
            return True
        if value is None:
            return self.nullable
        if kind is int or kind is float:
            return value == 0 or value == 1
        return False

    def scan(self, column: Column) -> Column | None:
        kind = column.dtype.kind
        if kind == "b":
            return None
        if kind in "iuf":
            ok = (column == 0) | (column == 1)
            if ok.all():
                return None
            codes = np.where(ok, 0, TYPE).astype(_UINT8)
            if kind == "f":
                codes[np.isnan(column)] = 0 if self.nullable else NULL_CODE
            return codes if codes.any() else None
        if kind == "O":
            classes = value_classes(column)
            ok = classes == BOOLEAN
            numbers = np.flatnonzero(classes == NUMBER)
            if numbers.size:
                ok[numbers] = [v == 0 or v == 1 for v in column[numbers].tolist()]
            nulls = _nulls(column, classes)
            if not self.nullable:
                ok &= ~nulls
            else:
                ok |= nulls
            if ok.all():
                return None
            codes = np.where(ok, 0, TYPE).astype(_UINT8)
            if not self.nullable:
                codes[nulls] = NULL_CODE
            return codes
        return np.full(column.shape[0], TYPE, dtype=_UINT8)


class _TextCheck(FeatureCheck):
    """Shared by categorical and string features: strings, with nulls sorted out."""

    def __init__(self, name: str, schema: FeatureSchema) -> None:
        super().__init__(name, schema)
        self.natural = np.dtype(object)

    def scan(self, column: Column) -> Column | None:
        kind = column.dtype.kind
        if kind == "U":
            return self._scan_strings(column, None)
        if kind == "O":
            classes = value_classes(column)
            strings = classes == STRING
            if strings.all():
                return self._scan_strings(column, None)
            codes = self._scan_strings(column, strings)
            if codes is None:
                codes = np.zeros(column.shape[0], dtype=_UINT8)
            nulls = _nulls(column, classes)
            codes[nulls] = 0 if self.nullable else NULL_CODE
            codes[~strings & ~nulls] = TYPE
            return codes if codes.any() else None
        if kind == "f":
            nan = np.isnan(column)
            codes = np.full(column.shape[0], TYPE, dtype=_UINT8)
            codes[nan] = 0 if self.nullable else NULL_CODE
            return codes if codes.any() else None
        return np.full(column.shape[0], TYPE, dtype=_UINT8)

    def _scan_strings(self, column: Column, strings: Column | None) -> Column | None:
        """Codes for the string values (``strings`` marks them; None: all are strings)."""
        raise NotImplementedError  # pragma: no cover - both subclasses override


class CategoricalCheck(_TextCheck):
    """One of the categories seen in training."""

    def __init__(self, name: str, schema: FeatureSchema) -> None:
        super().__init__(name, schema)
        self.categories = frozenset(schema.categories or {})
        shown = sorted(self.categories, key=lambda c: -(schema.categories or {}).get(c, 0))[:8]
        more = len(self.categories) - len(shown)
        listing = ", ".join(repr(c) for c in shown) + (f" (+{more} more)" if more > 0 else "")
        self.expected[CATEGORY] = f"one of {listing}" if shown else "no value (none was seen in training)"

    def accept(self, value: object) -> bool:
        if type(value) is str:
            return value in self.categories
        return value is None and self.nullable

    def _scan_strings(self, column: Column, strings: Column | None) -> Column | None:
        values = column.tolist() if strings is None else column[strings].tolist()
        member = np.fromiter(map(self.categories.__contains__, values), dtype=bool, count=len(values))
        if member.all():
            return None
        if strings is None:
            return np.where(member, 0, CATEGORY).astype(_UINT8)
        codes = np.zeros(column.shape[0], dtype=_UINT8)
        codes[np.flatnonzero(strings)[~member]] = CATEGORY
        return codes


class StringCheck(_TextCheck):
    """Free text within the widened length bounds."""

    def __init__(self, name: str, schema: FeatureSchema, margin: float) -> None:
        super().__init__(name, schema)
        lo, hi = widen(
            None if schema.min_length is None else float(schema.min_length),
            None if schema.max_length is None else float(schema.max_length),
            margin,
        )
        self.min_len = max(0, math.floor(lo)) if math.isfinite(lo) else 0
        self.max_len: int | None = math.ceil(hi) if math.isfinite(hi) else None
        upper = "any" if self.max_len is None else str(self.max_len)
        self.expected[SHORT] = self.expected[LONG] = f"length [{self.min_len}, {upper}]"

    def accept(self, value: object) -> bool:
        if type(value) is str:
            n = len(value)
            return n >= self.min_len and (self.max_len is None or n <= self.max_len)
        return value is None and self.nullable

    def _scan_strings(self, column: Column, strings: Column | None) -> Column | None:
        if self.min_len == 0 and self.max_len is None:
            return None
        values = column.tolist() if strings is None else column[strings].tolist()
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        short = lengths < self.min_len
        long = lengths > self.max_len if self.max_len is not None else np.zeros_like(short)
        if not (short.any() or long.any()):
            return None
        sub = np.where(short, SHORT, np.where(long, LONG, 0)).astype(_UINT8)
        if strings is None:
            return sub
        codes = np.zeros(column.shape[0], dtype=_UINT8)
        codes[np.flatnonzero(strings)] = sub
        return codes

    def clip(self, values: Column, code: int) -> list[Any] | None:
        if code != LONG or self.max_len is None:
            return None
        limit = self.max_len
        return [str(v)[:limit] for v in values.tolist()]


def build_check(name: str, schema: FeatureSchema, margin: float) -> FeatureCheck:
    """The compiled check for one feature."""
    if schema.kind in ("numeric", "integer"):
        return NumericCheck(name, schema, margin)
    if schema.kind == "boolean":
        return BooleanCheck(name, schema)
    if schema.kind == "categorical":
        return CategoricalCheck(name, schema)
    return StringCheck(name, schema, margin)


def _nulls(column: Column, classes: Column) -> Column:
    """None, pandas' NA, and float NaN held as an object: the nulls of an object column."""
    nulls: Column = classes == NULL
    numbers = np.flatnonzero(classes == NUMBER)
    if numbers.size:
        nulls[numbers] = [v != v for v in column[numbers].tolist()]
    return nulls

