"""Online features: the same definitions, computed for a request's entities as of now.

:class:`OnlineFeatures` is built once per deployment and model version from the model's
feature list. ``resolve`` checks the request's entities and values, then per source (in
parallel):

- FeatureSets without a cache: one round trip for all the request's entities, the engine
  with ``t = now``, transforms;
- FeatureSets with a cache (:mod:`stalwart.features.caching`): their row-dependent values
  per entity from the cache, one round trip for the entities it lacks, then transforms
  per request over those values and the request's values. Same engine, same numbers.

A source behind several cached sets is read once per set that misses (each set's cache
coalesces its own loads); its uncached sets share one read.

Every fetch goes through the source's guard (breaker, bulkhead, time limit) when there is
one. When a source fails, the request carries on: entities with a cached value at most
``max_staleness`` past its freshness get it, the others their features' declared defaults
(``count`` and ``sum``: 0), and :attr:`Resolved.degraded` says so; only when a feature
involved has no default does ``resolve`` raise :class:`~stalwart.errors.FeatureError`.

An explicit ``as_of_ns`` (the parity check, back-tests) reads the sources directly, never
the cache, and a source failure then raises: a point-in-time answer is exact or nothing.
No pandas on this path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stalwart.errors import ConfigError, RequestError
from stalwart.features.caching import CachedSet
from stalwart.features.engine import Queries, apply_transforms, compute_base
from stalwart.features.readers import Fetched, GuardedReader, SourceReader, rows_from_records
from stalwart.features.resolution import (
    SOURCE_FAILURES,
    Request,
    check_known,
    degradation,
    key_array,
    needs_older,
    require_defaults,
)
from stalwart.features.timecodec import now_ns
from stalwart.project import FeatureRef, FeatureSet, RequestField, Window
from stalwart.project.feature_sets import feature_sets_of, names_in, request_fields_of

if TYPE_CHECKING:
    from stalwart.cache.cache import FeatureSetCache
    from stalwart.resilience.guard import Guard

__all__ = ["MAX_ENTITIES", "MAX_KEY_LENGTH", "OnlineFeatures", "Resolved", "check_entity_count"]

Column = np.ndarray[Any, Any]
_CONVERTERS = {"float": float, "int": int, "str": str, "bool": bool}
_INT64 = (-(2**63), 2**63 - 1)

MAX_ENTITIES = 10_000
"""Most entities in one request unless configured (``STALWART_MAX_ENTITIES``)."""
MAX_KEY_LENGTH = 256
"""Longest string an entity key may be: keys are identifiers, and a source is never asked
about (nor a cache keyed by) a megabyte of one."""

@dataclass(slots=True)
class Resolved:
    """A request's features: columns in feature order, and the time they are as of.

    ``degraded`` has one entry per FeatureSet whose source failed for some entities:
    ``{"level": "stale_features" | "feature_defaults", "source", "feature_set", "reason",
    "entities"}`` (``reason`` is the failure's class name, ``entities`` how many distinct
    entities). ``cache`` counts, per cached FeatureSet, where the entities' values came
    from (``memory``, ``redis``, ``loaded``, ``coalesced``, ``stale``, ``defaults``).
    ``fetches`` times each round trip to a source and each cached set's lookup, in the
    order they ended (for traces).
    """

    columns: dict[str, Column]
    rows: int
    as_of_ns: int
    degraded: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    fetches: list[Fetched] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Direct:
    """Uncached FeatureSets of one source: one fetch, then the engine."""

    sets: tuple[FeatureSet, ...]
    columns: tuple[str, ...]
    lookback_ns: int
    older: bool  # whether rows before the lookback can change an answer


@dataclass(frozen=True, slots=True)
class _SourcePlan:
    reader: GuardedReader
    everything: _Direct  # every set of the source, read directly (an explicit as_of)
    uncached: _Direct | None  # the sets without a cache, as of now
    cached: tuple[CachedSet, ...]


class OnlineFeatures:
    """Computes a fixed list of features for live requests.

    ``readers`` maps each source's name to its reader; ``guards`` (by source name) wraps
    a source's fetches in its breaker, bulkhead and time limit; ``caches`` (by FeatureSet
    name, see :func:`stalwart.features.caching.bind_caches`; entries for sets these
    features do not use are ignored) caches a set's values per entity. Both are optional
    and decided here, once. ``clock`` gives "now" in ns, on the same wall clock as the
    caches' (``time.time``).
    """

    def __init__(
        self,
        refs: Sequence[FeatureRef | RequestField],
        readers: Mapping[str, SourceReader],
        *,
        guards: Mapping[str, Guard] | None = None,
        caches: Mapping[str, FeatureSetCache] | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.refs = list(refs)
        self.names = [ref.name for ref in self.refs]
        self._clock = clock
        sets = {s.name: s for s in feature_sets_of(self.refs)}
        self._used = {name: names_in(fs, self.refs) for name, fs in sets.items()}
        self._request_fields = request_fields_of(self.refs)
        # Request values the model takes as they are: a schema's policy can judge a gap in
        # one of these; a value that only feeds a transform has no policy of its own.
        self._served_fields = frozenset((r.source, r.name) for r in self.refs if isinstance(r, RequestField))
        self._entity_keys = list(dict.fromkeys(k for s in sets.values() for k in s.entity.keys))
        caches = caches or {}  # caches of sets these features do not use are ignored
        by_source: dict[str, list[FeatureSet]] = {}
        for feature_set in sets.values():
            by_source.setdefault(feature_set.source.name, []).append(feature_set)
        plans = []
        for source_name, group in by_source.items():
            if source_name not in readers:
                raise ConfigError(f"no reader for source '{source_name}'")
            reader = GuardedReader(source_name, readers[source_name], (guards or {}).get(source_name))
            direct = [s for s in group if s.name not in caches]
            cached: list[CachedSet] = []
            if len(direct) < len(group):
                cached = [CachedSet(s, caches[s.name], self._used[s.name], reader, clock) for s in group if s.name in caches]
            plans.append(_SourcePlan(reader, self._direct(group), self._direct(direct) if direct else None, tuple(cached)))
        self._plans = plans

    def _direct(self, group: Sequence[FeatureSet]) -> _Direct:
        columns = tuple(dict.fromkeys(c for s in group for c in s.source_columns(self._used[s.name])))
        used = [f for s in group for f in s.closure(self._used[s.name])]
        lookback = max((f.window_ns for f in used if isinstance(f, Window)), default=0)
        return _Direct(tuple(group), columns, lookback, needs_older(used, lookback))

    @property
    def sources(self) -> list[str]:
        """The names of the sources these features read (what ``guards`` is keyed by)."""
        return [plan.reader.name for plan in self._plans]

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
        deadline: float | None = None,
        gaps: bool = False,
    ) -> Resolved:
        """The features of each entity (with its request values) as of ``as_of_ns`` (now).

        ``deadline`` (a ``time.monotonic()`` instant) bounds every source fetch. ``gaps``:
        a missing or ``null`` float or str request value that the model takes as a feature
        is served as NaN or None (the model's input schema then rejects, imputes or flags
        it) instead of refused. Raises
        RequestError for malformed entities or values, UnknownEntity for an entity without
        data whose feature declares no default, FeatureError when a source failed and a
        feature involved declares no default (or, with ``as_of_ns``, whenever one fails).
        """
        n = len(entities)
        if n == 0:
            raise RequestError("entities: send at least one entity", field="entities")
        live = as_of_ns is None
        request = Request(
            entities=entities,
            keys=_entity_columns(entities, self._entity_keys),
            values=_request_columns(values, self._request_fields, n, gaps=self._served_fields if gaps else frozenset()),
            n=n,
            as_of_ns=self._clock() if as_of_ns is None else as_of_ns,
            deadline=deadline,
        )
        steps = []
        for plan in self._plans:
            if not live:
                steps.append(self._read(plan.reader, plan.everything, request, degrade=False))
                continue
            if plan.uncached is not None:
                steps.append(self._read(plan.reader, plan.uncached, request, degrade=True))
            steps.extend(cached.resolve(request) for cached in plan.cached)
        if len(steps) == 1:
            await steps[0]
        else:
            await asyncio.gather(*steps)
        columns = request.columns
        out = {
            ref.name: request.values[(ref.source, ref.name)] if isinstance(ref, RequestField) else columns[ref.name]
            for ref in self.refs
        }
        return Resolved(
            columns=out, rows=n, as_of_ns=request.as_of_ns, degraded=request.degraded, cache=request.cache,
            fetches=request.fetches,
        )

    async def _read(self, reader: GuardedReader, direct: _Direct, request: Request, *, degrade: bool) -> None:
        keys_of = direct.sets[0].entity.keys
        unique = list(dict.fromkeys(zip(*(request.keys[k].tolist() for k in keys_of), strict=True)))
        failure: BaseException | None = None
        try:
            rows = await reader.fetch(
                unique, request.as_of_ns, direct.lookback_ns, direct.columns,
                older=direct.older, newer=False, deadline=request.deadline, record=request.fetches,
            )
        except SOURCE_FAILURES as exc:
            if not degrade:
                raise
            failure = exc
            rows = rows_from_records([], len(keys_of), direct.columns)
        ts = np.full(request.n, request.as_of_ns, dtype=np.int64)
        for feature_set in direct.sets:
            used = self._used[feature_set.name]
            queries = Queries(keys=[request.keys[k] for k in feature_set.entity.keys], ts=ts)
            if failure is not None:
                require_defaults(feature_set, used, failure, len(unique))
                request.degraded.append(degradation("feature_defaults", feature_set, failure, len(unique)))
            base = compute_base(feature_set, queries, rows, used)
            if failure is None and not base.found.all():
                check_known(feature_set, used, base.found, request.entities)
            request.columns.update(apply_transforms(feature_set, base.columns, request.values, request.n, used))


def _entity_columns(entities: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for index, entity in enumerate(entities):
        if not isinstance(entity, Mapping):
            raise RequestError(f"entities[{index}]: must be an object like {{{', '.join(repr(k) + ': ...' for k in keys)}}}", field=f"entities[{index}]")
        for key in keys:
            if key not in entity:
                raise RequestError(f"entities[{index}]: missing key '{key}'", field=f"entities[{index}].{key}")
            value = entity[key]
            where = f"entities[{index}].{key}"
            if not isinstance(value, int | str) or isinstance(value, bool):
                raise RequestError(
                    f"{where}: an entity key must be an integer or a string, got {type(value).__name__}",
                    field=where,
                )
            # Checked here, before any source or cache sees the key: a key no source column
            # can hold is the client's mistake (400), never a source failure for the breaker.
            if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                raise RequestError(f"{where}: an integer key must fit in 64 bits (-2**63 to 2**63 - 1)", field=where)
            if isinstance(value, str) and len(value) > MAX_KEY_LENGTH:
                raise RequestError(f"{where}: a key has at most {MAX_KEY_LENGTH} characters, got {len(value)}", field=where)
            columns[key].append(value)
    return {k: key_array(v) for k, v in columns.items()}


def check_entity_count(entities: Sequence[Any], limit: int = MAX_ENTITIES) -> None:
    """Refuse a request of more than ``limit`` entities before any of them is looked at."""
    if len(entities) > limit:
        raise RequestError(
            f"entities: {len(entities)} in one request; send at most {limit} (STALWART_MAX_ENTITIES)",
            field="entities",
        )


def _request_columns(
    values: Sequence[Mapping[str, Any]] | None,
    fields: Sequence[RequestField],
    n: int,
    *,
    gaps: frozenset[tuple[str, str]] = frozenset(),
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
        # Only floats (NaN) and strings (None) can hold a gap for validation to judge.
        gap = _GAPS.get(field_.type, _NO_GAP) if (field_.source, field_.name) in gaps else _NO_GAP
        column: list[Any] = []
        for index, row in enumerate(values):
            where = f"values[{index}].{field_.name}"
            if not isinstance(row, Mapping):
                raise RequestError(f"{where}: missing request value '{field_.name}' ({field_.type})", field=where)
            value = row.get(field_.name, _NO_GAP)
            if (value is _NO_GAP or value is None) and gap is not _NO_GAP:
                column.append(gap)
                continue
            if value is _NO_GAP:
                raise RequestError(f"{where}: missing request value '{field_.name}' ({field_.type})", field=where)
            column.append(_convert(value, field_.type, convert, where))
        array = np.empty(n, dtype=field_.dtype) if field_.type == "str" else np.asarray(column, dtype=field_.dtype)
        if field_.type == "str":
            array[:] = column
        out[(field_.source, field_.name)] = array
    return out


_NO_GAP: Any = object()
_GAPS: dict[str, Any] = {"float": math.nan, "str": None}


def _convert(value: Any, kind: str, convert: Any, where: str) -> Any:
    ok = {
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise RequestError(f"{where}: expected {kind}, got {_brief(value)}", field=where)
    if kind == "float" and not math.isfinite(value):
        raise RequestError(f"{where}: must be a finite number", field=where)
    if kind == "int" and not -(2**63) <= value < 2**63:
        raise RequestError(f"{where}: out of range for a 64-bit integer", field=where)
    return convert(value)


def _brief(value: Any) -> str:
    """A client's value as an error message shows it, at a cost that does not grow with it:
    the repr of a 4,000-digit int or of a megabyte of nested lists is never built."""
    kind = type(value).__name__
    if isinstance(value, str):
        return f"str {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit int"
    if isinstance(value, bool | int | float) or value is None:
        return f"{kind} {value!r}"
    return kind
