"""What both online paths share, cached and direct: one resolution's checked inputs, what
counts as a source failing, and the rules for entities without rows (declared defaults,
or an unknown entity) and for failed sources (stale values, defaults, or an error).

:mod:`stalwart.features.online` resolves requests and :mod:`stalwart.features.caching`
serves cached sets; both import these rules from here, so neither imports the other's
internals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stalwart.errors import FeatureError, ResilienceError, UnknownEntity
from stalwart.features.readers import Fetched
from stalwart.project import Feature, FeatureSet, Latest, Window

__all__ = [
    "SOURCE_FAILURES",
    "Request",
    "check_known",
    "degradation",
    "key_array",
    "needs_default",
    "needs_older",
    "require_defaults",
    "without_default",
]

Column = np.ndarray[Any, Any]

SOURCE_FAILURES: tuple[type[BaseException], ...] = (FeatureError, ResilienceError, OSError)
"""What counts as a source failing (stale values or defaults, not an error): the guard
refusing or giving up, the source raising, a lost connection. Anything else is a bug or a
bad request and is raised as is."""


@dataclass(slots=True)
class Request:
    """One resolution's inputs, checked: what the per-source steps share."""

    entities: Sequence[Mapping[str, Any]]
    keys: dict[str, Column]
    values: dict[tuple[str, str], Column]
    n: int
    as_of_ns: int
    deadline: float | None
    columns: dict[str, Column] = field(default_factory=dict)
    degraded: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    fetches: list[Fetched] = field(default_factory=list)  # timed round trips and cache lookups

    def entity_keys(self, feature_set: FeatureSet) -> list[tuple[Any, ...]]:
        """Each entity's key tuple for ``feature_set``, in request order."""
        return list(zip(*(self.keys[k].tolist() for k in feature_set.entity.keys), strict=True))


def needs_default(feature: Feature) -> bool:
    """Whether an entity without rows has no value for this feature unless it declares one."""
    return isinstance(feature, Latest) or (isinstance(feature, Window) and feature.agg in ("mean", "min", "max"))


def without_default(feature_set: FeatureSet, names: Sequence[str] | None) -> list[Feature]:
    """The features ``names`` need that have no value without rows: no declared default."""
    return [f for f in feature_set.closure(names) if needs_default(f) and getattr(f, "default", None) is None]


def needs_older(features: Sequence[Feature], lookback_ns: int) -> bool:
    """Rows older than the lookback matter to a ``Latest`` that may reach past it, and to
    telling an unknown entity (4xx) from a known one when a feature has no default."""
    for feature in features:
        if isinstance(feature, Latest) and (feature.max_age_ns is None or feature.max_age_ns > lookback_ns):
            return True
        if needs_default(feature) and getattr(feature, "default", None) is None:
            return True
    return False


def check_known(feature_set: FeatureSet, used: Sequence[str], found: Column, entities: Sequence[Mapping[str, Any]]) -> None:
    """An entity with no rows at all gets declared defaults; a feature without one makes
    it an unknown entity (4xx), never a silent NaN."""
    missing = without_default(feature_set, used)
    if not missing:
        return
    row = int(np.flatnonzero(~found)[0])
    key = {k: entities[row].get(k) for k in feature_set.entity.keys}
    raise UnknownEntity(
        f"entities[{row}]: {feature_set.entity.name} {key} has no data in source "
        f"'{feature_set.source.name}', and feature '{missing[0].name}' declares no default",
        field=f"entities[{row}]",
    )


def require_defaults(feature_set: FeatureSet, used: Sequence[str], failure: BaseException, entities: int) -> None:
    """Raise FeatureError when the source failed and a feature involved has no default
    to serve instead (the caller's degradation ladder takes over from there)."""
    missing = without_default(feature_set, used)
    if missing:
        raise FeatureError(
            f"source '{feature_set.source.name}' failed ({type(failure).__name__}: {failure}) for "
            f"{entities} entit{'y' if entities == 1 else 'ies'}, and feature '{missing[0].name}' of "
            f"'{feature_set.name}' declares no default to serve instead; declare default= on it, "
            f"or give the set a cache with max_staleness"
        ) from failure


def degradation(level: str, feature_set: FeatureSet, failure: BaseException, entities: int) -> dict[str, Any]:
    """One entry of :attr:`Resolved.degraded`."""
    return {
        "level": level,
        "source": feature_set.source.name,
        "feature_set": feature_set.name,
        "reason": type(failure).__name__,
        "entities": entities,
    }


def key_array(values: list[Any]) -> np.ndarray[Any, Any]:
    if all(type(v) is int for v in values):
        try:
            return np.asarray(values, dtype=np.int64)
        except OverflowError:
            pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
