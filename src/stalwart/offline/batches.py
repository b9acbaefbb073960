"""The last step every query engine shares: transforms, names and order, one Arrow batch at a time.

An engine's query yields the event columns and each feature set's ``Latest`` and
``Window`` columns under internal names (:mod:`stalwart.offline.plan`). :class:`Finish`
turns each batch of those into output rows: it reads the columns as the numpy engine holds
them (floats with NaN, counts as int64, strings as objects with None), runs the user's
transforms through :func:`stalwart.features.engine.apply_transforms` (the very function
the numpy engine and the online path call), and puts the output columns in order. Batches
are independent, so it runs wherever the batches are: on DuckDB's result stream, or inside
Spark's executors (``mapInArrow``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.errors import FeatureError
from stalwart.features.engine import apply_transforms
from stalwart.offline.plan import Plan

__all__ = ["Finish", "arrow_to_numpy", "numpy_to_arrow"]


def _pa() -> Any:
    return require("pyarrow", extra="duckdb", purpose="offline engines")


def arrow_to_numpy(column: Any) -> np.ndarray[Any, Any]:
    """An Arrow column as the numpy engine holds the same values: numbers as int64 or
    float64 (nulls as NaN), booleans as bool (with nulls: objects), anything else as objects
    with None for nulls."""
    pa = _pa()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_integer(kind) and column.null_count == 0:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_boolean(kind) and column.null_count == 0:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.bool_)
    if pa.types.is_null(kind):
        return np.full(len(column), None, dtype=object)
    out = np.empty(len(column), dtype=object)
    out[:] = column.to_pylist()
    return out


def numpy_to_arrow(values: np.ndarray[Any, Any], name: str, kind: Any = None) -> Any:
    """A computed column as Arrow (of type ``kind`` when given); a transform whose result
    Arrow cannot hold is named."""
    pa = _pa()
    try:
        if values.dtype.kind == "f":
            array = pa.array(values, type=pa.float64(), from_pandas=True)  # NaN: a missing value, as in numpy's output
        elif values.dtype.kind == "O":
            array = pa.array(values.tolist())
        else:
            array = pa.array(values)
        return array if kind is None or array.type == kind else array.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise FeatureError(
            f"feature '{name}' holds values no Parquet column can ({exc}); return one type per "
            f"column (numbers, booleans or strings)"
        ) from exc


class Finish:
    """Batches of an engine's query result in, batches of output rows out (see the module
    docstring). ``columns`` are the output columns (default: the plan's output row);
    ``carry`` further columns of the query kept after them (the events' order, a
    partition column)."""

    def __init__(self, plan: Plan, columns: Sequence[str] | None = None, carry: Iterable[str] = (), schema: Any = None) -> None:
        self.plan = plan
        self.columns = list(columns) if columns is not None else plan.output_columns()
        self.carry = [c for c in carry if c not in self.columns]
        self.schema = schema  # the output schema, once known (batches are cast to it)

    def __call__(self, batch: Any) -> Any:
        pa = _pa()
        plan = self.plan
        m = batch.num_rows
        names = batch.schema.names
        computed: dict[str, Any] = {}
        request = {(f.source, f.name): arrow_to_numpy(batch.column(names.index(f.name))) for f in plan.request_fields}
        for set_plan in plan.sets:
            if not set_plan.transforms:
                continue
            base = {
                f.name: arrow_to_numpy(batch.column(names.index(set_plan.name(f.name))))
                for f in [*set_plan.latest, *(w for ws in set_plan.windows.values() for w in ws)]
            }
            columns = apply_transforms(set_plan.feature_set, base, request, m, set_plan.wanted)
            for transform in set_plan.transforms:
                if transform.name in set_plan.wanted:
                    computed[set_plan.name(transform.name)] = columns[transform.name]
        arrays = []
        out_names = [*self.columns, *self.carry]
        internal = {ref.name: plan.computed_name(ref) for ref in plan.refs}
        for position, name in enumerate(out_names):
            source = internal.get(name, name)
            kind = self.schema.field(position).type if self.schema is not None else None
            if source in computed:
                arrays.append(numpy_to_arrow(computed[source], name, kind))
                continue
            column = batch.column(names.index(source))
            arrays.append(column if kind is None or column.type == kind else column.cast(kind))
        return pa.RecordBatch.from_arrays(arrays, names=out_names)

    def output_schema(self, input_schema: Any) -> Any:
        """The output rows' schema for inputs of ``input_schema``: the transforms run once
        on no rows (numpy keeps a result's type on empty inputs), which is what Spark must
        know before any batch runs."""
        pa = _pa()
        empty = pa.RecordBatch.from_pylist([], schema=input_schema)
        return self(empty).schema

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        for batch in batches:
            yield self(batch)
