"""Feature sets: the features of one entity computed from one source. Declarations
only, no I/O.

A feature is declared once; :mod:`stalwart.features.training` builds point-in-time
training sets from the declaration and :mod:`stalwart.features.online` computes the same
features for live requests, both through :mod:`stalwart.features.engine`.

>>> import numpy as np
>>> from stalwart.project import Entity, RequestSource, SqlSource
>>> card = Entity("card", keys=["card_id"])
>>> tx = SqlSource("transactions", table="transactions", entity=card, timestamp="ts")
>>> txn = RequestSource("txn", fields={"amount": "float"})
>>> activity = FeatureSet("card_activity", entity=card, source=tx, features=[
...     Window("amount_mean_30d", column="amount", agg="mean", window="30d", default=0.0),
...     Transform("amount_ratio", inputs=[txn.amount, "amount_mean_30d"],
...               fn=lambda amount, mean: amount / np.maximum(mean, 1.0)),
... ])
>>> len(activity.version)
16

A FeatureSet's ``version`` is a hash of its whole definition, transform code included: a
changed definition is a new version, and a model trained on the old one is not served
with the new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from stalwart.durations import Duration, format_duration, parse_ns
from stalwart.errors import ConfigError
from stalwart.project.entities import Entity, check_identifier
from stalwart.project.sources import (
    RequestField,
    RequestSource,
    Source,
    code_identity,
    declare_feature_set,
)

__all__ = [
    "AGGREGATIONS",
    "Feature",
    "FeatureLike",
    "FeatureRef",
    "FeatureSet",
    "Latest",
    "Transform",
    "Window",
    "feature_refs",
    "feature_sets_of",
    "names_in",
    "request_fields_of",
]

Aggregation = Literal["count", "sum", "mean", "min", "max"]
AGGREGATIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max")


@dataclass(frozen=True)
class Feature:
    """Base of the three kinds of feature."""

    name: str

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Latest(Feature):
    """The most recent value of ``column`` at or before the time asked, if not older than
    ``max_age``."""

    column: str
    max_age: Duration | None = None
    default: Any = None

    def __post_init__(self) -> None:
        _ = self.max_age_ns  # a bad max_age fails at declaration, naming the feature

    def spec(self) -> dict[str, Any]:
        age = format_duration(self.max_age_ns) if self.max_age_ns is not None else None
        return {"kind": "latest", "column": self.column, "max_age": age, "default": self.default}

    @cached_property
    def max_age_ns(self) -> int | None:
        return parse_ns(self.max_age, f"feature '{self.name}' max_age") if self.max_age is not None else None


@dataclass(frozen=True)
class Window(Feature):
    """An aggregate of ``column`` over the rows in ``(t - window, t]``.

    ``count`` without a column counts rows; with one, its non-null values. Nulls are
    ignored by every aggregate. An empty window gives 0 for ``count`` and ``sum`` and
    ``default`` (or NaN) for the others.
    """

    agg: Aggregation
    window: Duration
    column: str | None = None
    default: Any = None

    def __post_init__(self) -> None:
        if self.agg not in AGGREGATIONS:
            raise ConfigError(f"feature '{self.name}': agg {self.agg!r} is not one of {', '.join(AGGREGATIONS)}")
        if self.agg != "count" and self.column is None:
            raise ConfigError(f"feature '{self.name}': {self.agg} needs a column")
        _ = self.window_ns  # a bad window fails at declaration, naming the feature

    @cached_property
    def window_ns(self) -> int:
        return parse_ns(self.window, f"feature '{self.name}' window")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "window",
            "agg": self.agg,
            "window": format_duration(self.window_ns),
            "column": self.column,
            "default": self.default,
        }


@dataclass(frozen=True)
class Transform(Feature):
    """A row-level function of other features of the set and request-time values.

    ``fn`` receives one numpy column per input, in order, and returns one column: write it
    with numpy operations so it runs once per batch, not once per row.
    """

    inputs: Sequence[str | RequestField]
    fn: Callable[..., Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not callable(self.fn):
            raise ConfigError(f"transform '{self.name}': fn must be a function of its inputs")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "transform",
            "inputs": [_input_name(i) for i in self.inputs],
            "code": code_identity(self.fn),
        }


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of one entity computed from one source.

    ``cache`` is how online values are cached: None for the defaults, False for no cache,
    or a mapping of :class:`stalwart.cache.CachePolicy` fields (``ttl``, ``negative_ttl``,
    ``max_staleness``, ...), checked when the server binds the set to its cache. It is
    not part of the definition: changing it does not change ``version``.
    """

    name: str
    entity: Entity
    source: Source
    features: Sequence[Feature]
    description: str = ""
    cache: Mapping[str, Any] | bool | None = None
    version: str = field(init=False)

    def __post_init__(self) -> None:
        check_identifier("feature set", self.name)
        object.__setattr__(self, "features", tuple(self.features))
        if self.source.entity is not None and tuple(self.source.entity.keys) != tuple(self.entity.keys):
            raise ConfigError(
                f"feature set '{self.name}' is for entity '{self.entity.name}' but source "
                f"'{self.source.name}' holds rows keyed by {list(self.source.entity.keys)}"
            )
        if isinstance(self.source, RequestSource):
            raise ConfigError(
                f"feature set '{self.name}': request values are not a row source; use them "
                f"directly in a feature list or as Transform inputs"
            )
        seen: set[str] = set()
        for feature in self.features:
            check_identifier(f"feature of '{self.name}'", feature.name)
            if feature.name in seen:
                raise ConfigError(f"feature set '{self.name}' defines '{feature.name}' twice")
            if isinstance(feature, Transform):
                for inp in feature.inputs:
                    if isinstance(inp, str) and inp not in seen:
                        raise ConfigError(
                            f"transform '{feature.name}' in '{self.name}' uses '{inp}', which is "
                            f"not a feature defined before it in the set (nor a request field)"
                        )
            seen.add(feature.name)
        if self.cache is not None and not isinstance(self.cache, bool | Mapping):
            raise ConfigError(
                f"feature set '{self.name}': cache must be None, False or a mapping of cache "
                f"policy fields such as {{'ttl': 30, 'max_staleness': 600}}"
            )
        object.__setattr__(self, "version", self._hash())
        declare_feature_set(self.source, self)

    def __getitem__(self, name: str) -> FeatureRef:
        if name not in self.feature_names:
            raise ConfigError(f"feature set '{self.name}' has no feature '{name}'")
        return FeatureRef(self, name)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def closure(self, names: Sequence[str] | None = None) -> list[Feature]:
        """The features needed to compute ``names`` (all when None): them and every
        feature their transforms read, in definition order."""
        if names is None:
            return list(self.features)
        needed = set(names)
        for feature in reversed(self.features):
            if feature.name in needed and isinstance(feature, Transform):
                needed.update(i for i in feature.inputs if isinstance(i, str))
        return [f for f in self.features if f.name in needed]

    def source_columns(self, names: Sequence[str] | None = None) -> list[str]:
        """The source columns read to compute ``names`` (all features when None)."""
        columns = (getattr(f, "column", None) for f in self.closure(names))
        return list(dict.fromkeys(c for c in columns if c is not None))

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise ConfigError(f"feature set '{self.name}' has no feature '{name}'")

    def definition(self) -> dict[str, Any]:
        """The canonical definition the version hashes."""
        return {
            "name": self.name,
            "entity": {"name": self.entity.name, "keys": list(self.entity.keys)},
            "source": {"name": self.source.name, **self.source.describe()},
            "features": [{"name": f.name, **f.spec()} for f in self.features],
        }

    def _hash(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, default=repr).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class FeatureRef:
    """One feature of a set, as named in a training set or a deployment."""

    feature_set: FeatureSet
    name: str


FeatureLike = FeatureSet | FeatureRef | RequestField


def feature_refs(features: Sequence[FeatureLike]) -> list[FeatureRef | RequestField]:
    """Flatten a feature list (whole sets, single features, request fields), checking that
    no two outputs share a name."""
    flat: list[FeatureRef | RequestField] = []
    for item in features:
        if isinstance(item, FeatureSet):
            flat.extend(FeatureRef(item, name) for name in item.feature_names)
        elif isinstance(item, FeatureRef | RequestField):
            flat.append(item)
        else:
            raise ConfigError(
                f"{item!r} is not a feature: list FeatureSets, set['feature'] or request fields"
            )
    names = [ref.name for ref in flat]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two features are both called {', '.join(duplicates)}; rename one")
    return flat


def feature_sets_of(refs: Sequence[FeatureRef | RequestField]) -> list[FeatureSet]:
    """The distinct feature sets a feature list draws on, in first-use order."""
    seen: dict[str, FeatureSet] = {}
    for ref in refs:
        if isinstance(ref, FeatureRef):
            existing = seen.get(ref.feature_set.name)
            if existing is not None and existing is not ref.feature_set:
                raise ConfigError(f"two different feature sets are both called '{ref.feature_set.name}'")
            seen[ref.feature_set.name] = ref.feature_set
    return list(seen.values())


def names_in(feature_set: FeatureSet, refs: Sequence[FeatureRef | RequestField]) -> list[str]:
    """The names of ``feature_set``'s features that ``refs`` asks for."""
    return [r.name for r in refs if isinstance(r, FeatureRef) and r.feature_set.name == feature_set.name]


def request_fields_of(refs: Sequence[FeatureRef | RequestField]) -> list[RequestField]:
    """Every request-time value a feature list needs: listed directly or read by the
    transforms it needs."""
    fields: dict[tuple[str, str], RequestField] = {}
    for ref in refs:
        if isinstance(ref, RequestField):
            fields[(ref.source, ref.name)] = ref
    for feature_set in feature_sets_of(refs):
        for feature in feature_set.closure(names_in(feature_set, refs)):
            if isinstance(feature, Transform):
                for item in feature.inputs:
                    if isinstance(item, RequestField):
                        fields[(item.source, item.name)] = item
    return list(fields.values())


def _input_name(item: str | RequestField) -> str:
    return item if isinstance(item, str) else f"request.{item.source}.{item.name}"
