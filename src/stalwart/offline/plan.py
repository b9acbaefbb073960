"""What every query engine compiles: a feature list taken apart, engine by engine alike.

A :class:`Plan` says, per feature set, which source columns are read, which ``Latest``
features are looked up as of each event, which ``Window`` aggregates run over which
window widths, and which transforms run afterwards; plus the request-time values the
transforms read and the columns an output row carries. The DuckDB and Spark engines each
turn it into their own query; nothing here runs anything.

Computed columns get internal names (``__f<set>_<feature>``) until the last step, so a
feature can never collide with an event column of the same name (a request field
``amount`` beside a feature over the source's ``amount``).

The semantics are :mod:`stalwart.features.engine`'s, which the conformance suite holds
every engine to:

- ``Latest``: the value of the entity's last row (by time, then source order) at or before
  the event's time, if not older than ``max_age``; a null (or NaN) there gives the default;
- ``Window``: over rows with ``t - w < time <= t``; nulls and NaN are ignored; an empty
  window gives 0 for count and sum, the default (or null) otherwise;
- numbers come out as float64 (``Latest`` of an integer column too), counts as int64,
  strings as strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from stalwart.errors import ConfigError, FeatureError
from stalwart.project import FeatureRef, FeatureSet, Latest, RequestField, Transform, Window
from stalwart.project.feature_sets import feature_sets_of, names_in, request_fields_of

__all__ = ["ColumnKind", "Plan", "SetPlan", "internal_name", "key_columns", "make_plan"]

ColumnKind = Literal["number", "string"]


def internal_name(index: int, feature: str) -> str:
    """The name a computed feature has inside an engine's query."""
    return f"__f{index}_{feature}"


@dataclass(frozen=True)
class SetPlan:
    """One feature set's part of a plan (``index`` numbers it within the plan)."""

    index: int
    feature_set: FeatureSet
    wanted: list[str]  # the features asked for, in the order asked
    latest: list[Latest]
    windows: dict[int, list[Window]]  # window width (ns) -> its aggregates
    transforms: list[Transform]
    columns: list[str]  # source value columns read, in first-use order

    @property
    def keys(self) -> list[str]:
        return list(self.feature_set.entity.keys)

    def name(self, feature: str) -> str:
        return internal_name(self.index, feature)

    @property
    def join_keys(self) -> list[str]:
        """The internal names of the entity key columns both sides are joined on (the keys
        themselves, or their text where one side holds numbers and the other strings: the
        numpy engine compares such keys as text, so "17" is 17)."""
        return [f"__k{self.index}_{j}" for j in range(len(self.keys))]

    def value_column(self, column: str) -> str:
        """The internal name of a source value column."""
        return f"__v{self.index}_{self.columns.index(column)}"

    def column_kinds(
        self, types: Mapping[str, str], kind_of: Callable[[str], ColumnKind | None], *, timestamp: str | None
    ) -> dict[str, ColumnKind]:
        """Each value column's kind, from the source's column ``types`` (an engine's type
        names, read by its ``kind_of``); refuses a source without the keys, ``timestamp``
        (None: the engine stamps rows itself) or a value column, and a column of another type."""
        source = self.feature_set.source
        wanted = [*self.keys, *([timestamp] if timestamp is not None else []), *self.columns]
        missing = [c for c in wanted if c not in types]
        if missing:
            raise ConfigError(f"source '{source.name}' has no column {', '.join(repr(m) for m in missing)}")
        kinds: dict[str, ColumnKind] = {}
        for column in self.columns:
            kind = kind_of(types[column])
            if kind is None:
                raise FeatureError(
                    f"column '{column}' of source '{source.name}' is {types[column]}; features read "
                    f"numbers, booleans or strings (convert it in the source)"
                )
            kinds[column] = kind
        return kinds

    def check_kinds(self, kinds: dict[str, ColumnKind], engine: str) -> None:
        """Refuse, before running, what only the numpy engine can give: aggregates other
        than count over strings, and defaults of another type than their column (numpy
        makes such a column hold objects of both types; a SQL column has one type)."""
        features: list[Latest | Window] = [*self.latest, *(w for ws in self.windows.values() for w in ws)]
        for feature in features:
            column = feature.column
            if column is None:
                continue
            kind = kinds[column]
            if isinstance(feature, Window) and feature.agg != "count" and kind != "number":
                raise FeatureError(
                    f"feature '{feature.name}' takes the {feature.agg} of '{column}', which holds "
                    f"non-numbers; only count works on such a column"
                )
            default = feature.default
            if default is None or (isinstance(feature, Window) and feature.agg in ("count", "sum")):
                continue
            numeric_default = isinstance(default, int | float) and not isinstance(default, bool)
            if (kind == "number") != numeric_default:
                raise ConfigError(
                    f"feature '{feature.name}' of '{self.feature_set.name}' has default {default!r} "
                    f"for a column of {'numbers' if kind == 'number' else 'strings'}; the {engine} "
                    f"engine gives one type per column: use a default of the column's type"
                )


@dataclass(frozen=True)
class Plan:
    """A whole feature list, taken apart (see the module docstring)."""

    refs: list[FeatureRef | RequestField]
    sets: list[SetPlan]
    request_fields: list[RequestField]
    timestamp: str
    label: str | None
    keys: list[str] = field(default_factory=list)  # every entity key column, first-use order
    carry: list[str] = field(default_factory=list)  # further event columns kept (an event id)

    @property
    def features(self) -> list[str]:
        return [ref.name for ref in self.refs]

    @property
    def has_transforms(self) -> bool:
        return any(s.transforms for s in self.sets)

    def output_columns(self) -> list[str]:
        """An output row: entity keys, the event time, the features in order, the label,
        the carried columns."""
        row = [*self.keys, self.timestamp, *self.features, *([self.label] if self.label else [])]
        return row + [c for c in self.carry if c not in row]

    def event_columns(self) -> list[str]:
        """The event columns a query carries along: keys, time, label, carried columns,
        request values."""
        wanted = [*self.keys, self.timestamp, *([self.label] if self.label else []), *self.carry]
        wanted += [f.name for f in self.request_fields]
        return list(dict.fromkeys(wanted))

    def computed_name(self, ref: FeatureRef | RequestField) -> str:
        """Where a feature's values are in an engine's result before the last step."""
        if isinstance(ref, RequestField):
            return ref.name
        set_plan = next(s for s in self.sets if s.feature_set.name == ref.feature_set.name)
        return set_plan.name(ref.name)


def make_plan(refs: Sequence[FeatureRef | RequestField], *, timestamp: str, label: str | None, carry: Sequence[str] = ()) -> Plan:
    """The plan of a flattened feature list (:func:`stalwart.project.feature_refs`);
    ``carry`` names event columns the output keeps besides keys, time and label."""
    refs = list(refs)
    sets: list[SetPlan] = []
    for index, feature_set in enumerate(feature_sets_of(refs)):
        wanted = names_in(feature_set, refs)
        closure = feature_set.closure(wanted)
        windows: dict[int, list[Window]] = {}
        for feature in closure:
            if isinstance(feature, Window):
                windows.setdefault(feature.window_ns, []).append(feature)
        sets.append(SetPlan(
            index=index,
            feature_set=feature_set,
            wanted=wanted,
            latest=[f for f in closure if isinstance(f, Latest)],
            windows=dict(sorted(windows.items())),
            transforms=[f for f in closure if isinstance(f, Transform)],
            columns=feature_set.source_columns(wanted),
        ))
    plan = Plan(refs=refs, sets=sets, request_fields=request_fields_of(refs), timestamp=timestamp, label=label, keys=key_columns(refs), carry=list(carry))
    clash = set(plan.keys) & {timestamp, *([label] if label else [])}
    if clash:
        raise ConfigError(f"column {sorted(clash)} is both an entity key and the timestamp or label; rename one")
    return plan


def key_columns(refs: Sequence[FeatureRef | RequestField]) -> list[str]:
    """Every entity key column the feature sets of ``refs`` need, in first-use order."""
    keys: list[str] = []
    for feature_set in feature_sets_of(refs):
        keys.extend(k for k in feature_set.entity.keys if k not in keys)
    return keys

