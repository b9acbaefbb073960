"""The compiled validator: a schema turned into checks once, applied to every request.

>>> import numpy as np
>>> from stalwart.validation.schema import infer_schema
>>> schema = infer_schema({"age": np.arange(18, 90), "score": np.linspace(0, 1, 72)})
>>> validator = Validator(schema, policies={"age": "clip"})
>>> fixed, report = validator.check({"age": np.array([30, 200]), "score": np.array([0.5, 0.2])})
>>> fixed["age"].tolist(), report.response_part()
([30, 96], {'clipped': {'age': [1]}})

Inputs come in one of two layouts, fixed when the validator is built:

* columns (``matrix=None``): a :data:`~stalwart.pipeline.Arrays` mapping with one 1-D
  column per feature, rows first (a ``/v1`` request, or a ``/v2`` model with one tensor per
  feature). Inputs the schema does not name pass through untouched.
* one matrix (``matrix="input-0"``): the named input is a 2-D array whose columns are the
  schema's features, in order (a ``/v2`` model whose signature is one ``[-1, n]`` tensor).

The fast paths: a matrix is checked with a handful of whole-matrix numpy operations, and
only the columns that fail are looked at further; a request of a few rows in columns is
checked value by value with a compiled predicate per feature (cheaper than numpy's
per-call overhead). Larger batches are scanned column by column with numpy. Either way,
a request that passes costs no copy and returns its own arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stalwart.errors import ConfigError, RequestError
from stalwart.monitoring.profiles import column_array
from stalwart.pipeline import Arrays
from stalwart.validation.checks import BooleanCheck, FeatureCheck, NumericCheck, build_check
from stalwart.validation.policy import (
    ACTIONS,
    MISSING,
    RULE_OF_CODE,
    Action,
    PolicyOverrides,
    resolve_policies,
)
from stalwart.validation.report import EMPTY_REPORT, ValidationReport, Violation, json_value
from stalwart.validation.schema import Policy, Schema

__all__ = ["QUICK_ROWS", "Validator"]

QUICK_ROWS = 16  # up to this many rows, columns are checked value by value (measured crossover ~30)
_EXAMPLES = 3  # (row, value) pairs kept per feature and rule

Column = np.ndarray[Any, Any]


@dataclass(slots=True)
class _Group:
    """The rows of one feature that broke one rule and got one action."""

    index: int  # feature position in the schema
    code: int
    action: Action
    rows: Column | None  # None: the feature is missing (every row)
    column: Column | None
    fixed: Any  # one value for every row, or a list with one per row (clipping)
    per_row: bool = False


class Validator:
    """Checks requests against a :class:`Schema` with per-feature policies.

    ``policies`` are the deployment's overrides (a :class:`PolicyOverrides`, or a plain
    mapping of feature to policy); ``max_violations`` caps the list a report (and a 422)
    carries, while counts stay exact. ``subject`` names what was broken in messages
    ("model churn:3's input schema").
    """

    def __init__(
        self,
        schema: Schema,
        *,
        matrix: str | None = None,
        policies: PolicyOverrides | Mapping[str, Policy] | None = None,
        max_violations: int = 1000,
        subject: str = "the input schema",
    ) -> None:
        self.schema = schema
        self.matrix = matrix
        self.subject = subject
        self.max_violations = max_violations
        self.policies = resolve_policies(schema, policies)
        self.names = list(schema.features)
        self.checks: list[FeatureCheck] = [
            build_check(name, fs, schema.margin_of(name)) for name, fs in schema.features.items()
        ]
        self._impute = [fs.impute_value() for fs in schema.features.values()]
        self._actions = [ACTIONS[self.policies[name]] for name in self.names]
        for name, fs in schema.features.items():
            if self.policies[name] in ("impute", "clip") and fs.impute is None:
                raise ConfigError(
                    f"feature '{name}' has policy {self.policies[name]}, which needs an impute "
                    f"value, but its schema has none (no value was seen in training); set "
                    f"'impute' in the schema or use reject or flag"
                )
        self._quick = [(check.name, check.accept) for check in self.checks]
        if matrix is not None:
            self._compile_matrix()

    def _compile_matrix(self) -> None:
        lo: list[float] = []
        hi: list[float] = []
        for check in self.checks:
            if isinstance(check, NumericCheck):
                lo.append(check.lo)
                hi.append(check.hi)
            elif isinstance(check, BooleanCheck):
                lo.append(0.0)
                hi.append(1.0)
            else:
                raise ConfigError(
                    f"feature '{check.name}' is {check.kind}, but the model takes one matrix of "
                    f"numbers; make it numeric in the schema, or give the model one input per feature"
                )
        self._lo = np.array(lo)
        self._hi = np.array(hi)
        self._need_finite = not (np.isfinite(self._lo).all() and np.isfinite(self._hi).all())
        self._whole = np.array(
            [
                i
                for i, c in enumerate(self.checks)
                if isinstance(c, BooleanCheck) or (isinstance(c, NumericCheck) and c.integer)
            ],
            dtype=np.intp,
        )
        self._nullable = np.array([c.nullable for c in self.checks])
        self._any_nullable = bool(self._nullable.any())

    # -- entry points -------------------------------------------------------------------

    def validate(self, inputs: Arrays, rows: int | None = None) -> tuple[Arrays, ValidationReport]:
        """Check and fix ``inputs``; raise :class:`~stalwart.errors.ValidationFailed` listing
        every violation when any value broke a rule under ``reject``."""
        fixed, report = self.check(inputs, rows)
        if report.rejected:
            raise report.error(self.subject)
        return fixed, report

    def check(self, inputs: Arrays, rows: int | None = None) -> tuple[Arrays, ValidationReport]:
        """Check ``inputs`` without raising: the fixed arrays and the report.

        With rejected values (``report.rejected > 0``) nothing is fixed and the inputs come
        back as they were. Malformed inputs (ragged columns, a matrix of the wrong width)
        raise :class:`~stalwart.errors.RequestError`.
        """
        if self.matrix is not None:
            return self._check_matrix(inputs)
        n = rows if rows is not None else _rows_of(inputs)
        if n <= QUICK_ROWS and self._quick_accept(inputs, n):
            return inputs, EMPTY_REPORT
        return self._check_columns(inputs, n)

    # -- columns --------------------------------------------------------------------------

    def _quick_accept(self, inputs: Arrays, n: int) -> bool:
        shape = (n,)
        for name, accept in self._quick:
            column = inputs.get(name)
            if type(column) is not np.ndarray or column.shape != shape:
                return False
            for value in column.tolist():
                if not accept(value):
                    return False
        return True

    def _check_columns(self, inputs: Arrays, n: int) -> tuple[Arrays, ValidationReport]:
        groups: list[_Group] = []
        columns: dict[int, Column] = {}
        for index, check in enumerate(self.checks):
            raw = inputs.get(check.name)
            if raw is None:
                action = self._actions[index][MISSING]
                groups.append(_Group(index, MISSING, action, None, None, self._impute[index]))
                continue
            column = _column(raw, n, check.name)
            columns[index] = column
            codes = check.scan(column)
            if codes is not None:
                self._group(index, check, column, codes, groups)
        if not groups:
            return inputs, EMPTY_REPORT
        report = self._report(groups, n)
        if report.rejected:
            return inputs, report
        writes = self._writes(groups, columns, n)
        if not writes:
            return inputs, report  # only flags: the values are served as they came
        out = dict(inputs)
        for index, written in writes.items():
            name = self.names[index]
            original = inputs.get(name)
            out[name] = written if original is None else written.reshape(np.shape(original))
        return out, report

    # -- one matrix -------------------------------------------------------------------------

    def _check_matrix(self, inputs: Arrays) -> tuple[Arrays, ValidationReport]:
        name = self.matrix
        if name is None:  # pragma: no cover - only called for matrix validators
            raise ConfigError("this validator takes columns, not a matrix")
        raw = inputs.get(name)
        if raw is None:
            raise RequestError(f"input '{name}' is missing; the model takes it as rows of {len(self.checks)} features", field="inputs")
        x = raw if isinstance(raw, np.ndarray) else column_array(raw)
        if x.ndim != 2 or x.shape[1] != len(self.checks):
            raise RequestError(
                f"input '{name}' has shape {list(x.shape)}; it takes rows of {len(self.checks)} "
                f"features ({', '.join(self.names[:5])}{', ...' if len(self.names) > 5 else ''})",
                field="inputs",
            )
        n = x.shape[0]
        kind = x.dtype.kind
        suspects: list[int] | None
        if kind == "f":
            suspects = self._matrix_suspects(x.astype(np.float64, copy=False))
            if suspects is None:
                return inputs, EMPTY_REPORT
        else:
            # Integer matrices are checked exactly, column by column; anything else is rare.
            suspects = list(range(len(self.checks)))
        groups: list[_Group] = []
        for index in suspects:
            check = self.checks[index]
            column = x[:, index]
            codes = check.scan(column)
            if codes is not None:
                self._group(index, check, column, codes, groups)
        if not groups:
            return inputs, EMPTY_REPORT
        report = self._report(groups, n)
        if report.rejected:
            return inputs, report
        fixes = [g for g in groups if g.action in ("imputed", "clipped")]
        if not fixes:
            return inputs, report
        # Fixes go straight into one copy of the matrix (never column by column).
        out_matrix = x.copy()
        for group in fixes:
            rows: Any = slice(None) if group.rows is None else group.rows
            values = np.asarray(group.fixed, dtype=np.float64)
            if out_matrix.dtype.kind in "iu":
                values = np.rint(values)
            try:
                out_matrix[rows, group.index] = values
            except (TypeError, ValueError, OverflowError):
                out_matrix = out_matrix.astype(np.float64)
                out_matrix[rows, group.index] = values
        out = dict(inputs)
        out[name] = out_matrix
        return out, report

    def _matrix_suspects(self, x: Column) -> list[int] | None:
        """Columns that may hold a violation (None: the whole matrix passes)."""
        with np.errstate(invalid="ignore"):
            ok = (x >= self._lo) & (x <= self._hi)
            if self._need_finite:
                ok &= np.isfinite(x)
            if self._whole.size:
                whole = x[:, self._whole]
                ok[:, self._whole] &= np.floor(whole) == whole
        if self._any_nullable:
            ok |= np.isnan(x) & self._nullable
        if ok.all():
            return None
        suspects: list[int] = np.flatnonzero(~ok.all(axis=0)).tolist()
        return suspects

    # -- policies -----------------------------------------------------------------------------

    def _group(self, index: int, check: FeatureCheck, column: Column, codes: Column, groups: list[_Group]) -> None:
        """Sort one feature's broken values into groups by rule and the action taken."""
        actions = self._actions[index]
        impute = self._impute[index]
        broken = np.flatnonzero(codes)
        broken_codes = codes[broken]
        for code in np.unique(broken_codes).tolist():
            rows = broken[broken_codes == code]
            action = actions[code]
            if action != "clipped":
                fixed = impute if action == "imputed" else None
                groups.append(_Group(index, code, action, rows, column, fixed))
                continue
            clipped = check.clip(column[rows], code)
            if clipped is None:
                groups.append(_Group(index, code, "imputed", rows, column, impute))
                continue
            unclippable = np.array([v is None for v in clipped], dtype=bool)
            if unclippable.any():
                groups.append(_Group(index, code, "imputed", rows[unclippable], column, impute))
                keep = ~unclippable
                rows = rows[keep]
                clipped = [v for v, k in zip(clipped, keep.tolist(), strict=True) if k]
                if not rows.size:
                    continue
            groups.append(_Group(index, code, "clipped", rows, column, clipped, per_row=True))

    def _writes(self, groups: list[_Group], columns: dict[int, Column], n: int) -> dict[int, Column]:
        """The fixed column of every feature that had a value imputed or clipped."""
        by_feature: dict[int, list[_Group]] = {}
        for group in groups:
            if group.action in ("imputed", "clipped"):
                by_feature.setdefault(group.index, []).append(group)
        written: dict[int, Column] = {}
        for index, fixes in by_feature.items():
            check = self.checks[index]
            column = columns.get(index)
            touched = sum(n if g.rows is None else g.rows.size for g in fixes)
            if column is None or touched >= n:
                # Every value is replaced (a missing feature, or a column of the wrong type).
                out = _new_column(check, n)
            else:
                out = _writable(column, check)
            for group in fixes:
                target: Any = slice(None) if group.rows is None else group.rows
                values = group.fixed
                if group.per_row:
                    values = np.array(values, dtype=object) if out.dtype.kind == "O" else np.array(values)
                if out.dtype.kind in "iu" and not isinstance(values, str):
                    values = np.rint(np.asarray(values, dtype=np.float64))
                try:
                    out[target] = values
                except (TypeError, ValueError, OverflowError):
                    out = out.astype(object)
                    out[target] = values
            written[index] = out
        return written

    # -- report -------------------------------------------------------------------------------

    def _report(self, groups: list[_Group], n: int) -> ValidationReport:
        counts: dict[tuple[str, str, Action], int] = {}
        changed: dict[Action, dict[str, list[int]]] = {}
        examples: dict[tuple[str, str], list[tuple[int | None, Any]]] = {}
        rejected = 0
        total = 0
        for group in groups:
            name = self.names[group.index]
            size = 1 if group.rows is None else int(group.rows.size)
            total += size
            key = (name, RULE_OF_CODE[group.code], group.action)
            counts[key] = counts.get(key, 0) + size
            kept = examples.setdefault((name, key[1]), [])
            if len(kept) < _EXAMPLES:
                if group.rows is None or group.column is None:
                    kept.append((None, None))
                else:
                    for row in group.rows[: _EXAMPLES - len(kept)].tolist():
                        kept.append((row, json_value(group.column[row])))
            if group.action == "rejected":
                rejected += size
            else:
                rows = list(range(n)) if group.rows is None else group.rows.tolist()
                per_feature = changed.setdefault(group.action, {})
                per_feature[name] = sorted(per_feature.get(name, []) + rows)
        return ValidationReport(
            build=lambda limit: self._violations(groups, limit),
            cap=self.max_violations,
            total=total,
            rejected=rejected,
            counts=counts,
            changed=changed,
            examples=examples,
        )

    def _violations(self, groups: list[_Group], limit: int) -> tuple[Violation, ...]:
        """Violations sorted by row then feature, the first ``limit`` of them."""
        rows_all = np.concatenate(
            [np.array([-1]) if g.rows is None else g.rows for g in groups]
        )
        owner = np.concatenate(
            [np.full(1 if g.rows is None else g.rows.size, k) for k, g in enumerate(groups)]
        )
        position = np.concatenate(
            [np.arange(1 if g.rows is None else g.rows.size) for g in groups]
        )
        feature = np.array([g.index for g in groups])[owner]
        order = np.lexsort((feature, rows_all))[:limit]
        out: list[Violation] = []
        for entry in order.tolist():
            group = groups[int(owner[entry])]
            at = int(position[entry])
            check = self.checks[group.index]
            row = None if group.rows is None else int(group.rows[at])
            value = None if group.column is None or row is None else group.column[row]
            fixed = group.fixed[at] if group.per_row else group.fixed
            out.append(
                Violation(
                    row=row,
                    feature=check.name,
                    rule=RULE_OF_CODE[group.code],
                    value=json_value(value),
                    expected=check.described if group.code == MISSING else check.expected[group.code],
                    policy=self.policies[check.name],
                    action=group.action,
                    fixed=json_value(fixed) if group.action != "rejected" else None,
                )
            )
        return tuple(out)


def _rows_of(inputs: Mapping[str, object]) -> int:
    for value in inputs.values():
        shape = getattr(value, "shape", None)
        if shape:
            return int(shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    return 0


def _column(raw: object, n: int, name: str) -> Column:
    """A feature's values as a 1-D array of ``n`` rows (an ``[n, 1]`` array is one column)."""
    column = raw if isinstance(raw, np.ndarray) else column_array(raw)
    if column.ndim == 2 and column.shape[1] == 1:
        column = column.reshape(-1)
    if column.ndim != 1 or column.shape[0] != n:
        raise RequestError(
            f"feature '{name}' has shape {list(column.shape)}; it takes one value per row "
            f"({n} rows)",
            field=name,
        )
    return column


def _new_column(check: FeatureCheck, n: int) -> Column:
    if check.natural.kind == "O":
        return np.empty(n, dtype=object)
    return np.zeros(n, dtype=check.natural)


def _writable(column: Column, check: FeatureCheck) -> Column:
    """A copy of ``column`` that the fixes can be written into."""
    if column.dtype.kind in "US":
        return column.astype(object)
    if column.dtype.kind == "b" and not isinstance(check, BooleanCheck):
        return column.astype(check.natural)
    return column.copy()

