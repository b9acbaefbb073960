"""The input schema of a model: what each feature looked like in the training data.

A :class:`Schema` holds one :class:`FeatureSchema` per feature, in column order (for a
model that takes one matrix, the order of the features is the order of its columns). It
is learned from data with :func:`infer_schema`, stored with the model version, exported to
YAML or JSON for a person to edit (widen a range, add a category, change a policy) and
read back with :meth:`Schema.from_file`, which names the feature and the field of every
mistake.

>>> schema = infer_schema({"age": [23, 35, 47, 51], "plan": ["free", "pro", "free", "pro"]})
>>> schema.features["plan"].kind, sorted(schema.features["plan"].categories or {})
('categorical', ['free', 'pro'])
>>> Schema.from_yaml(schema.to_yaml()) == schema
True

Kinds: ``numeric`` (any number), ``integer`` (whole numbers), ``boolean``, ``categorical``
(one of the strings seen) and ``string`` (free text, with length bounds). A string feature
is categorical when it has at most ``categorical_max_distinct`` (50) distinct values *and*
each value was seen twice on average (distinct <= half the non-null values): few values,
each repeated. Anything else is free text.

Policies (what happens to a value that breaks a rule): ``reject`` (the request fails with
every violation listed), ``impute`` (the training median, or mode for non-numbers),
``clip`` (to the allowed range; strings truncated) and ``flag`` (served as is, and marked).
A feature without a policy takes the deployment's default, then the schema's
``default_policy``; see :mod:`stalwart.validation.policy` for the full precedence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stalwart.errors import ConfigError

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import FeatureProfile, Profile

__all__ = [
    "CATEGORICAL_MAX_DISTINCT",
    "CATEGORICAL_RULE",
    "POLICIES",
    "QUANTILES",
    "FeatureKind",
    "FeatureSchema",
    "Policy",
    "Schema",
    "feature_schema",
    "infer_schema",
]

Policy = Literal["reject", "impute", "clip", "flag"]
FeatureKind = Literal["numeric", "integer", "boolean", "categorical", "string"]
POLICIES: tuple[Policy, ...] = ("reject", "impute", "clip", "flag")

# Quantiles kept in a schema, by the readable key they have in the file.
QUANTILES: dict[str, float] = {
    "p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99,
}
CATEGORICAL_MAX_DISTINCT = 50
CATEGORICAL_RULE = (
    "a string feature is categorical when it has at most {max} distinct values and each was "
    "seen at least twice on average"
)
DEFAULT_MARGIN = 0.1

_NUMBER_KINDS = ("numeric", "integer")


class FeatureSchema(BaseModel):
    """What one feature may hold, learned from training data and editable by hand.

    ``min``/``max`` bound numbers, widened by ``margin`` times the width of the range on
    each side (a missing bound is no bound). ``categories`` maps each known value of a
    categorical feature to how often it was seen (a hand-added one can say 0).
    ``min_length``/``max_length`` bound free-text strings (widened by the margin the same
    way). ``impute`` is what the ``impute`` policy puts in place of a broken value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FeatureKind
    nullable: bool = False
    null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    min: float | None = None
    max: float | None = None
    quantiles: dict[str, float] | None = None
    categories: dict[str, int] | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    policy: Policy | None = None
    impute: bool | int | float | str | None = None
    margin: float | None = Field(default=None, ge=0.0)

    @field_validator("categories", mode="before")
    @classmethod
    def _categories_list(cls, value: Any) -> Any:
        # A hand-written list of categories is as good as a mapping with unknown counts.
        if isinstance(value, list):
            return dict.fromkeys(value, 0)
        return value

    @field_validator("min", "max", "margin")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}; leave the field out for no bound")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSchema:
        numeric = self.kind in _NUMBER_KINDS
        if not numeric:
            for name in ("min", "max", "quantiles"):
                if getattr(self, name) is not None:
                    raise ValueError(f"field '{name}' applies to numeric and integer features, not {self.kind}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"field 'min' ({self.min}) is above field 'max' ({self.max})")
        if self.categories is not None and self.kind != "categorical":
            raise ValueError(f"field 'categories' applies to categorical features, not {self.kind}")
        if self.kind == "categorical" and self.categories is None:
            raise ValueError("a categorical feature needs field 'categories' (a list or a mapping to counts)")
        if self.kind != "string" and (self.min_length is not None or self.max_length is not None):
            raise ValueError(f"fields 'min_length'/'max_length' apply to string features, not {self.kind}")
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            raise ValueError(
                f"field 'min_length' ({self.min_length}) is above field 'max_length' ({self.max_length})"
            )
        if self.impute is not None:
            _check_impute(self.kind, self.impute)
        return self

    def impute_value(self) -> bool | int | float | str | None:
        """The imputation value, as the feature's own type (ints for integer features)."""
        value = self.impute
        if value is None:
            return None
        if self.kind == "numeric":
            return float(value)
        if self.kind == "integer":
            return int(value)
        return value

    def describe(self) -> str:
        """A short description of what the feature holds (used in error messages)."""
        if self.kind == "numeric":
            return "a number"
        if self.kind == "integer":
            return "a whole number"
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "categorical":
            return f"one of {len(self.categories or {})} categories"
        return "a string"


def _check_impute(kind: str, value: object) -> None:
    ok = {
        "numeric": isinstance(value, (int, float)) and not isinstance(value, bool),
        "integer": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer()),
        "boolean": isinstance(value, bool),
        "categorical": isinstance(value, str),
        "string": isinstance(value, str),
    }[kind]
    if not ok:
        raise ValueError(f"field 'impute' ({value!r}) must be {_IMPUTE_TYPES[kind]} for a {kind} feature")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"field 'impute' must be a finite number, got {value}")


_IMPUTE_TYPES = {
    "numeric": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "categorical": "a string",
    "string": "a string",
}


class Schema(BaseModel):
    """Every feature's :class:`FeatureSchema`, in column order, with the defaults they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    default_policy: Policy = "reject"
    margin: float = Field(default=DEFAULT_MARGIN, ge=0.0)
    rows: int | None = Field(default=None, ge=0)
    description: str = ""
    features: dict[str, FeatureSchema]

    @field_validator("features")
    @classmethod
    def _named(cls, value: dict[str, FeatureSchema]) -> dict[str, FeatureSchema]:
        if not value:
            raise ValueError("a schema needs at least one feature")
        if any(not name for name in value):
            raise ValueError("feature names must not be empty")
        return value

    @property
    def names(self) -> list[str]:
        """Feature names in column order."""
        return list(self.features)

    def margin_of(self, name: str) -> float:
        """The range margin of a feature (its own, else the schema's)."""
        own = self.features[name].margin
        return self.margin if own is None else own

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data, without the fields left at None."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_yaml(self, header: str | None = None) -> str:
        """The schema as YAML, with ``header`` as a leading comment."""
        import yaml

        body = yaml.safe_dump(
            self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
        )
        if header:
            comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
            return comment + body
        return body

    @classmethod
    def from_dict(cls, data: object, *, source: str = "the schema") -> Schema:
        """Validate ``data``; a mistake raises :class:`ConfigError` naming feature and field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping with 'features', got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "\n".join(f"  - {_describe_error(err)}" for err in exc.errors())
            raise ConfigError(
                f"{source} is not a valid schema ({exc.error_count()} problem"
                f"{'s' if exc.error_count() > 1 else ''}):\n{problems}\n"
                f"fix the file and attach it again"
            ) from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "the schema") -> Schema:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "the schema") -> Schema:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> Schema:
        """Read a schema file: JSON when it ends in ``.json``, YAML otherwise."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read schema file {file}: {exc}") from None
        source = f"schema file {file}"
        if file.suffix.lower() == ".json":
            return cls.from_json(text, source=source)
        return cls.from_yaml(text, source=source)


def _describe_error(err: Mapping[str, Any]) -> str:
    loc = [str(part) for part in err.get("loc", ())]
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        message = "unknown field (check the spelling)"
    got = err.get("input")
    where: str
    if len(loc) >= 2 and loc[0] == "features":
        feature, rest = loc[1], loc[2:]
        if "[key]" in rest:
            where = f"feature '{feature}', field '{rest[0]}'"
            return (
                f"{where}: the name {got!r} is read as {type(got).__name__}, not a string; "
                f"quote it in YAML ('no', 'yes', 'on', '1')"
            )
        where = f"feature '{feature}', field '{'.'.join(rest)}'" if rest else f"feature '{feature}'"
    elif loc:
        where = f"field '{'.'.join(loc)}'"
    else:
        where = "the schema"
    if got is not None and not isinstance(got, (dict, list)) and err.get("type") != "extra_forbidden":
        shown = repr(got)
        message += f" (got {shown[:60]})"
    return f"{where}: {message}"


def infer_schema(
    data: object,
    *,
    names: Sequence[str] | None = None,
    categorical_max_distinct: int = CATEGORICAL_MAX_DISTINCT,
    margin: float = DEFAULT_MARGIN,
    default_policy: Policy = "flag",
    description: str = "",
) -> Schema:
    """Learn a schema from training data.

    ``data`` is a DataFrame (pandas or polars), a mapping of columns, a 2-D array with
    ``names``, a :class:`~stalwart.monitoring.profiles.Profile`, or a mapping of feature
    names to :class:`~stalwart.monitoring.profiles.FeatureProfile`. Feature order is the
    data's column order.

    A learned schema defaults to the ``flag`` policy: structural problems (a missing
    feature, a wrong type, which ``flag`` cannot serve) are still rejected, but a value
    outside the training range or an unseen category is served and marked, because a
    training sample's range is an estimate, not a contract. Edit the schema to ``reject``
    (or ``clip``/``impute``) where it is one.
    """
    from stalwart.monitoring.profiles import FeatureProfile, Profile

    profile: Profile
    if isinstance(data, Profile):
        profile = data
    elif (
        isinstance(data, Mapping)
        and data
        and all(isinstance(v, FeatureProfile) for v in data.values())
    ):
        profile = Profile(data, rows=max(v.count for v in data.values()))
    else:
        profile = Profile.of(data, names)
    if not profile.features:
        raise ConfigError("cannot infer a schema from data without columns")
    features = {
        name: feature_schema(fp, categorical_max_distinct=categorical_max_distinct)
        for name, fp in profile.features.items()
    }
    return Schema(
        default_policy=default_policy,
        margin=margin,
        rows=profile.rows,
        description=description
        or f"inferred from {profile.rows} rows; "
        + CATEGORICAL_RULE.format(max=categorical_max_distinct),
        features=features,
    )


def feature_schema(
    profile: FeatureProfile, *, categorical_max_distinct: int = CATEGORICAL_MAX_DISTINCT
) -> FeatureSchema:
    """The schema of one feature, from its profile (see :func:`infer_schema`)."""
    nullable = profile.nulls + profile.nan > 0
    null_fraction = round(profile.missing_fraction, 6)
    kind = profile.kind
    if kind in _NUMBER_KINDS:
        qs = profile.quantiles(list(QUANTILES.values()))
        median = profile.quantile(0.5)
        impute: float | int | None = None
        if median is not None:
            impute = round(median) if kind == "integer" else median
        return FeatureSchema(
            kind=kind,
            nullable=nullable,
            null_fraction=null_fraction,
            min=profile.min,
            max=profile.max,
            quantiles=dict(zip(QUANTILES, qs, strict=True)) if qs is not None else None,
            impute=impute,
        )
    if kind == "boolean":
        return FeatureSchema(
            kind="boolean", nullable=nullable, null_fraction=null_fraction, impute=profile.mode()
        )
    if kind == "string":
        freqs = profile.frequencies()
        distinct = len(freqs) if profile.frequencies_exact else profile.distinct()
        mode = profile.mode()
        if distinct <= categorical_max_distinct and profile.present >= 2 * distinct:
            return FeatureSchema(
                kind="categorical",
                nullable=nullable,
                null_fraction=null_fraction,
                categories=freqs,
                impute=mode if isinstance(mode, str) else None,
            )
        return FeatureSchema(
            kind="string",
            nullable=nullable,
            null_fraction=null_fraction,
            min_length=profile.min_length,
            max_length=profile.max_length,
            impute=mode if isinstance(mode, str) else None,
        )
    # No value was ever seen: only nulls pass, anything else is an unseen category.
    return FeatureSchema(kind="categorical", nullable=True, null_fraction=null_fraction, categories={})
