"""Cached online features: a FeatureSet's row-dependent values per entity, in the cache.

What is cached, per entity, is the output of :func:`~stalwart.features.engine.compute_base`
for *every* ``Latest`` and ``Window`` feature of the set, as of the moment it was loaded:
one row ``{feature: value}`` (or None when the source has no row for the entity, cached
negatively). Transforms are not cached: they run per request over these values and the
request's own values, with the same engine function as everywhere else, so a cached
answer is the uncached answer, bit for bit.

A cached row is right until the earliest of: its TTL, an invalidation (a write to the
source: :mod:`stalwart.features.writes`, or a PostgreSQL NOTIFY), and the instant the
engine says the values change by themselves (``valid_until_ns``: an event leaving a
window, a latest value growing older than ``max_age``, a row stored with a later time
coming into view). The last one is why windows slide exactly under the cache.

>>> caches = bind_caches(project.feature_sets.values(), cache)        # doctest: +SKIP
>>> online = OnlineFeatures(refs, readers, guards=guards, caches=caches)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from stalwart.cache.cache import CachePolicy, Expiring, FeatureCache, FeatureSetCache
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from stalwart.durations import NS
from stalwart.errors import ConfigError, FeatureError
from stalwart.features.engine import NEVER, Queries, apply_transforms, compute_base
from stalwart.features.readers import Fetched, GuardedReader, rows_from_records
from stalwart.features.resolution import (
    SOURCE_FAILURES,
    Request,
    check_known,
    degradation,
    key_array,
    needs_older,
    require_defaults,
    without_default,
)
from stalwart.project import FeatureSet, Latest, Window

__all__ = ["CachedSet", "bind_caches", "cache_policy"]

Column = np.ndarray[Any, Any]

# Cache entries expire this much before the engine's instant, so that rounding ns to the
# cache's float seconds can never keep a value a moment too long.
_MARGIN_NS = 1_000


def cache_policy(feature_set: FeatureSet) -> CachePolicy | None:
    """The set's :class:`CachePolicy` (None when its ``cache`` is False), checked.

    Raises ConfigError naming the set and the field at fault.
    """
    declared = feature_set.cache
    if declared is False:
        return None
    if declared is None or declared is True:
        return CachePolicy()
    try:
        return CachePolicy.model_validate(dict(declared))
    except ValidationError as exc:
        problems = "; ".join(
            f"cache.{'.'.join(str(p) for p in err['loc']) or 'policy'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"feature set '{feature_set.name}': {problems}") from None


def bind_caches(feature_sets: Iterable[FeatureSet], cache: FeatureCache) -> dict[str, FeatureSetCache]:
    """Each set's cache, bound to its current version with its policy (sets whose
    ``cache`` is False are left out): the ``caches`` argument of ``OnlineFeatures``."""
    bound: dict[str, FeatureSetCache] = {}
    for feature_set in feature_sets:
        policy = cache_policy(feature_set)
        if policy is not None:
            bound[feature_set.name] = cache.bind(feature_set.name, feature_set.version, policy)
    return bound


class _EngineFailed(Exception):
    """The engine refused the loaded rows (a bug or bad data, not the source failing):
    carried through the cache, which must not serve stale values for it, and re-raised."""

    def __init__(self, error: FeatureError) -> None:
        super().__init__(error.message)
        self.error = error


class CachedSet:
    """One FeatureSet's values for live requests, through its cache."""

    def __init__(
        self,
        feature_set: FeatureSet,
        cache: FeatureSetCache,
        used: Sequence[str],
        reader: GuardedReader,
        clock: Callable[[], int],
    ) -> None:
        if cache.version != feature_set.version or cache.name != feature_set.name:
            raise ConfigError(
                f"the cache given for feature set '{feature_set.name}' (version "
                f"{feature_set.version}) is bound to '{cache.name}' version {cache.version}; "
                f"bind it with bind_caches()"
            )
        self.feature_set = feature_set
        self.cache = cache
        self.used = list(used)
        self.reader = reader
        self.clock = clock
        base = [f for f in feature_set.features if isinstance(f, Latest | Window)]
        # Rows hold every base feature of the set, whatever this deployment uses, so that
        # deployments sharing the set share its cache entries.
        self.names = [f.name for f in base]
        self.columns = tuple(feature_set.source_columns())
        self.lookback_ns = max((f.window_ns for f in base if isinstance(f, Window)), default=0)
        self.older = needs_older(base, self.lookback_ns)
        self.used_base = [f.name for f in feature_set.closure(self.used) if isinstance(f, Latest | Window)]
        self.kinds = {f.name: _kind(f) for f in base}
        self.strict = bool(without_default(feature_set, self.used))
        self.n_keys = len(feature_set.entity.keys)
        empty = rows_from_records([], self.n_keys, self.columns)
        nothing = compute_base(feature_set, Queries([np.zeros(1, dtype=np.int64)] * self.n_keys, np.zeros(1, dtype=np.int64)), empty)
        self.default_row: Row = {name: nothing.columns[name].tolist()[0] for name in self.names}

    async def resolve(self, request: Request) -> None:
        """The set's features for the request's entities into ``request.columns``, with
        what was stale or defaulted in ``request.degraded``."""
        feature_set = self.feature_set
        keys = request.entity_keys(feature_set)
        unique = list(dict.fromkeys(keys))
        deadline = request.deadline
        fetches = request.fetches

        async def load(missing: list[EntityKey]) -> dict[EntityKey, Row | Expiring | None]:
            return await self._load(missing, deadline, fetches)

        start = time.perf_counter()
        result = await self.cache.get_many(unique, load, allow_partial=True)
        fetches.append(Fetched(self.reader.name, feature_set.name, start, time.perf_counter() - start))
        failed = result.failed
        if failed:
            for error in failed.values():
                if isinstance(error, _EngineFailed):
                    raise error.error
                if not isinstance(error, SOURCE_FAILURES):
                    raise error
            cause = next(iter(failed.values()))
            require_defaults(feature_set, self.used, cause, len(failed))
            request.degraded.append(degradation("feature_defaults", feature_set, cause, len(failed)))
        if result.stale:
            cause = next(iter(result.stale_errors.values()), FeatureError("the source failed"))
            request.degraded.append(degradation("stale_features", feature_set, cause, len(result.stale)))
        rows = result.rows
        default = self.default_row
        filled: list[Row] = []
        found = np.ones(len(keys), dtype=np.bool_)
        for i, key in enumerate(keys):
            row = rows.get(key)
            if row is None:
                found[i] = key in failed  # a failed entity is not an unknown one
                row = default
            filled.append(row)
        if self.strict and not found.all():
            check_known(feature_set, self.used, found, request.entities)
        columns = {name: _column(self.kinds[name], [row[name] for row in filled]) for name in self.used_base}
        request.columns.update(apply_transforms(feature_set, columns, request.values, request.n, self.used))
        request.cache[feature_set.name] = {
            "memory": result.memory_hits,
            "redis": result.redis_hits,
            "loaded": result.loaded,
            "coalesced": result.coalesced,
            "stale": len(result.stale),
            "defaults": len(failed),
        }

    async def _load(
        self, keys: list[EntityKey], deadline: float | None, fetches: list[Fetched] | None = None
    ) -> dict[EntityKey, Row | Expiring | None]:
        """One fetch for entities the cache lacks, and their base values as of now."""
        as_of = self.clock()
        rows = await self.reader.fetch(
            keys, as_of, self.lookback_ns, self.columns, older=self.older, newer=True, deadline=deadline,
            record=fetches,
        )
        queries = Queries(
            keys=[key_array([key[i] for key in keys]) for i in range(self.n_keys)],
            ts=np.full(len(keys), as_of, dtype=np.int64),
        )
        try:
            base = compute_base(self.feature_set, queries, rows)
        except FeatureError as exc:
            raise _EngineFailed(exc) from exc
        names = self.names
        values = [base.columns[name].tolist() for name in names]
        found = base.found.tolist()
        until = base.valid_until_ns.tolist()
        out: dict[EntityKey, Row | Expiring | None] = {}
        for i, key in enumerate(keys):
            row = dict(zip(names, [column[i] for column in values], strict=True)) if found[i] else None
            out[key] = row if until[i] == NEVER else Expiring(row, (until[i] - _MARGIN_NS) / NS)
        return out


def _kind(feature: Latest | Window) -> str:
    """How a column is rebuilt from cached values, to the dtype the engine gives it."""
    if isinstance(feature, Window):
        if feature.agg == "count":
            return "int"
        if feature.agg == "sum" or feature.default is None or _number(feature.default):
            return "float"
    return "auto"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _column(kind: str, values: list[Any]) -> Column:
    if kind == "int":
        return np.asarray(values, dtype=np.int64)
    if kind == "float" or all(v is None or type(v) is float or type(v) is int for v in values):
        # The engine gives numbers (latest values included) as float64, missing as NaN.
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
