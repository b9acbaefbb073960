"""Online features: the same definitions, computed for a request's entities as of now.

:class:`OnlineFeatures` is built once per deployment and model version from the model's
feature list. ``resolve`` checks the request's entities and values, makes one round trip
per source (all entities of the request at once, sources in parallel), runs the engine
with ``t = now`` and returns numpy columns in the model's feature order. No pandas on this
path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stalwart.errors import ConfigError, RequestError, UnknownEntity
from stalwart.features.definitions import (
    Feature,
    FeatureRef,
    FeatureSet,
    Latest,
    RequestField,
    Window,
    feature_sets_of,
    names_in,
    request_fields_of,
)
from stalwart.features.engine import Queries, compute
from stalwart.features.readers import SourceReader
from stalwart.features.timecodec import now_ns

__all__ = ["OnlineFeatures", "Resolved"]

_CONVERTERS = {"float": float, "int": int, "str": str, "bool": bool}


@dataclass(slots=True)
class Resolved:
    """A request's features: columns in feature order, and the time they are as of."""

    columns: dict[str, np.ndarray[Any, Any]]
    rows: int
    as_of_ns: int


@dataclass(frozen=True, slots=True)
class _SourcePlan:
    reader: SourceReader
    sets: tuple[FeatureSet, ...]
    columns: tuple[str, ...]
    lookback_ns: int
    older: bool  # whether rows before the lookback can change an answer


class OnlineFeatures:
    """Computes a fixed list of features for live requests."""

    def __init__(self, refs: Sequence[FeatureRef | RequestField], readers: Mapping[str, SourceReader]) -> None:
        self.refs = list(refs)
        self.names = [ref.name for ref in self.refs]
        sets = {s.name: s for s in feature_sets_of(self.refs)}
        self._used = {name: names_in(fs, self.refs) for name, fs in sets.items()}
        self._request_fields = request_fields_of(self.refs)
        self._entity_keys = list(dict.fromkeys(k for s in sets.values() for k in s.entity.keys))
        by_source: dict[str, list[FeatureSet]] = {}
        for feature_set in sets.values():
            by_source.setdefault(feature_set.source.name, []).append(feature_set)
        plans = []
        for source_name, group in by_source.items():
            if source_name not in readers:
                raise ConfigError(f"no reader for source '{source_name}'")
            columns = tuple(dict.fromkeys(c for s in group for c in s.source_columns(self._used[s.name])))
            used = [f for s in group for f in s.closure(self._used[s.name])]
            lookback = max((f.window_ns for f in used if isinstance(f, Window)), default=0)
            plans.append(_SourcePlan(readers[source_name], tuple(group), columns, lookback, _needs_older(used, lookback)))
        self._plans = plans

    @property
    def entity_keys(self) -> list[str]:
        return list(self._entity_keys)

    @property
    def request_fields(self) -> list[RequestField]:
        return list(self._request_fields)

    async def resolve(
        self,
        entities: Sequence[Mapping[str, Any]],
        values: Sequence[Mapping[str, Any]] | None = None,
        *,
        as_of_ns: int | None = None,
    ) -> Resolved:
        """The features of each entity (with its request values) as of ``as_of_ns`` (now)."""
        n = len(entities)
        if n == 0:
            raise RequestError("entities: send at least one entity", field="entities")
        as_of = now_ns() if as_of_ns is None else as_of_ns
        key_columns = _entity_columns(entities, self._entity_keys)
        request = _request_columns(values, self._request_fields, n)
        results = await asyncio.gather(*(self._fetch(plan, key_columns, as_of) for plan in self._plans))
        columns: dict[str, np.ndarray[Any, Any]] = {}
        ts = np.full(n, as_of, dtype=np.int64)
        for plan, rows in zip(self._plans, results, strict=True):
            for feature_set in plan.sets:
                queries = Queries(keys=[key_columns[k] for k in feature_set.entity.keys], ts=ts)
                computed = compute(feature_set, queries, rows, request, self._used[feature_set.name])
                self._check_known(feature_set, computed.found, computed.columns, entities)
                columns.update(computed.columns)
        out = {
            ref.name: request[(ref.source, ref.name)] if isinstance(ref, RequestField) else columns[ref.name]
            for ref in self.refs
        }
        return Resolved(columns=out, rows=n, as_of_ns=as_of)

    async def _fetch(self, plan: _SourcePlan, key_columns: Mapping[str, np.ndarray[Any, Any]], as_of: int) -> Any:
        keys_of = plan.sets[0].entity.keys
        unique = list(dict.fromkeys(zip(*(key_columns[k].tolist() for k in keys_of), strict=True)))
        return await plan.reader.fetch(unique, as_of, plan.lookback_ns, plan.columns, older=plan.older)

    def _check_known(
        self,
        feature_set: FeatureSet,
        found: np.ndarray[Any, Any],
        columns: Mapping[str, np.ndarray[Any, Any]],
        entities: Sequence[Mapping[str, Any]],
    ) -> None:
        """An entity with no rows at all gets declared defaults; a feature without one
        makes it an unknown entity (4xx), never a silent NaN."""
        if found.all():
            return
        for name in self._used[feature_set.name]:
            feature = feature_set.feature(name)
            if _needs_default(feature) and getattr(feature, "default", None) is None:
                row = int(np.flatnonzero(~found)[0])
                key = {k: entities[row].get(k) for k in feature_set.entity.keys}
                raise UnknownEntity(
                    f"entities[{row}]: {feature_set.entity.name} {key} has no data in source "
                    f"'{feature_set.source.name}', and feature '{name}' declares no default",
                    field=f"entities[{row}]",
                )


def _needs_default(feature: Feature) -> bool:
    """Whether an entity without rows has no value for this feature unless it declares one."""
    return isinstance(feature, Latest) or (isinstance(feature, Window) and feature.agg in ("mean", "min", "max"))


def _needs_older(features: Sequence[Feature], lookback_ns: int) -> bool:
    """Rows older than the lookback matter to a ``Latest`` that may reach past it, and to
    telling an unknown entity (4xx) from a known one when a feature has no default."""
    for feature in features:
        if isinstance(feature, Latest) and (feature.max_age_ns is None or feature.max_age_ns > lookback_ns):
            return True
        if _needs_default(feature) and getattr(feature, "default", None) is None:
            return True
    return False


def _entity_columns(entities: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for index, entity in enumerate(entities):
        if not isinstance(entity, Mapping):
            raise RequestError(f"entities[{index}]: must be an object like {{{', '.join(repr(k) + ': ...' for k in keys)}}}", field=f"entities[{index}]")
        for key in keys:
            if key not in entity:
                raise RequestError(f"entities[{index}]: missing key '{key}'", field=f"entities[{index}].{key}")
            value = entity[key]
            if not isinstance(value, int | str) or isinstance(value, bool):
                raise RequestError(
                    f"entities[{index}].{key}: an entity key must be an integer or a string, got {type(value).__name__}",
                    field=f"entities[{index}].{key}",
                )
            columns[key].append(value)
    return {k: _key_array(v) for k, v in columns.items()}


def _key_array(values: list[Any]) -> np.ndarray[Any, Any]:
    if all(type(v) is int for v in values):
        try:
            return np.asarray(values, dtype=np.int64)
        except OverflowError:
            pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _request_columns(
    values: Sequence[Mapping[str, Any]] | None, fields: Sequence[RequestField], n: int
) -> dict[tuple[str, str], np.ndarray[Any, Any]]:
    if not fields:
        return {}
    if values is None:
        names = ", ".join(f.name for f in fields)
        raise RequestError(f"values: this deployment needs request values ({names}) for each entity", field="values")
    if len(values) != n:
        raise RequestError(f"values: has {len(values)} items but entities has {n}; send one per entity", field="values")
    out: dict[tuple[str, str], np.ndarray[Any, Any]] = {}
    for field_ in fields:
        convert = _CONVERTERS[field_.type]
        column: list[Any] = []
        for index, row in enumerate(values):
            where = f"values[{index}].{field_.name}"
            if not isinstance(row, Mapping) or field_.name not in row:
                raise RequestError(f"{where}: missing request value '{field_.name}' ({field_.type})", field=where)
            column.append(_convert(row[field_.name], field_.type, convert, where))
        array = np.empty(n, dtype=field_.dtype) if field_.type == "str" else np.asarray(column, dtype=field_.dtype)
        if field_.type == "str":
            array[:] = column
        out[(field_.source, field_.name)] = array
    return out


def _convert(value: Any, kind: str, convert: Any, where: str) -> Any:
    ok = {
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise RequestError(f"{where}: expected {kind}, got {type(value).__name__} {value!r}"[:300], field=where)
    if kind == "float" and not math.isfinite(value):
        raise RequestError(f"{where}: must be a finite number", field=where)
    if kind == "int" and not -(2**63) <= value < 2**63:
        raise RequestError(f"{where}: out of range for a 64-bit integer", field=where)
    return convert(value)
