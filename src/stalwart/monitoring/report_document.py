"""The monitoring report as one JSON document: what ``stalwart monitor report --json`` prints,
``GET /v1/deployments/{name}/monitoring`` answers, and the HTML report and the terminal
status table render.

Every time is ISO 8601 in UTC (``2024-05-01T12:00:00Z``); every number is a finite JSON
number or ``null`` (a score that could not be computed). Shape, top level first::

    deployment, since, until, generated_at, format
    variants                [{variant, model, version}]
    drift                   {share, threshold, drifted, columns: [ColumnDrift]}
    multivariate            {auroc, threshold, drifted} | null
    drift_over_time         [{bucket, share, scores: {column: score}}]
    distributions           {column: {kind: "numeric", edges, reference, current}
                                   | {kind: "categorical", reference: {cat: share}, current}}
    predictions_over_time   [{bucket, count, classes: {class: count}, score_quantiles}]
    quality                 [{bucket, predictions, labelled, realised, estimated,
                              label_delay_seconds}]
    skew                    {training_vs_serving: [...], parity: [...]}
    alerts                  [{name, column, severity, state, started_at, ended_at,
                              value, threshold}]
    notes                   {section: why it is empty or partial}

A column's ``threshold`` applies to its ``p_value`` when that is not null (drift when
``p_value < threshold``: the test-based methods, KS and chi-squared), else to its ``score``
(drift when ``score >= threshold``). ``notes`` is how the builder explains an empty or
partial section (``{"quality": "no labels yet"}``); renderers show it in place of the
section's generic explanation.

>>> doc = ReportDocument.from_dict({"deployment": "fraud", "since": "2024-05-01T00:00:00Z",
...     "until": "2024-05-02T00:00:00Z", "generated_at": "2024-05-02T00:00:05Z"})
>>> doc.to_dict()["until"], doc.drift.share
('2024-05-02T00:00:00Z', 0.0)
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from stalwart.errors import ConfigError

__all__ = [
    "FORMAT",
    "QUALITY_ORDER",
    "SECTIONS",
    "AlertEntry",
    "CategoricalDistribution",
    "ColumnDrift",
    "DelayQuantiles",
    "Distribution",
    "DriftBucket",
    "DriftSummary",
    "Multivariate",
    "NumericDistribution",
    "ParityFeature",
    "PredictionBucket",
    "QualityBucket",
    "ReportDocument",
    "ScoreQuantiles",
    "Skew",
    "SkewColumn",
    "Variant",
    "latest",
    "quality_metrics",
    "severity_rank",
    "sorted_alerts",
    "sorted_columns",
    "state_rank",
]

FORMAT = 1
"""The document's format version; a renderer refuses a newer one rather than misread it."""

SECTIONS = ("drift", "multivariate", "drift_over_time", "distributions", "predictions_over_time", "quality", "skew", "alerts")
"""The sections a ``notes`` entry may explain."""

# Time zone required: a naive time in the document would be read differently by each reader.
Time = Annotated[dt.datetime, msgspec.Meta(tz=True)]
# Numbers are finite (NaN and infinities are refused where they are read: JSON has neither);
# a number that could not be computed is null where the field allows it.
Real = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class _Part(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every part of the document: unknown fields are a mistake, not an extension."""


class Variant(_Part, frozen=True):
    """A variant served in the window and the model version behind it."""

    variant: str
    model: str
    version: int | None = None


class ColumnDrift(_Part, frozen=True):
    """One column's drift in the window (serving vs the training profile)."""

    column: str
    kind: Literal["numeric", "categorical"]
    method: str
    score: Real | None
    threshold: Real
    drifted: bool
    p_value: Real | None = None
    reference_count: Count = 0
    current_count: Count = 0
    missing_reference: Share = 0.0
    missing_current: Share = 0.0
    out_of_schema: Share = 0.0
    mode: Literal["exact", "sketch"] = "exact"
    error_bound: Real | None = None

    @property
    def tests_p_value(self) -> bool:
        """Whether ``threshold`` applies to the p-value (see the module docstring)."""
        return self.p_value is not None

    def severity(self) -> float:
        """How far past (> 1) or short of (< 1) its threshold the column is: the report's
        sort key. ``score / threshold``, or ``threshold / p_value`` for test-based methods."""
        if self.p_value is not None:
            return self.threshold / max(self.p_value, 1e-300)
        if self.score is None:
            return 0.0
        if self.threshold <= 0:
            return math.inf if self.score > 0 else 0.0
        return self.score / self.threshold


class DriftSummary(_Part, frozen=True):
    """The dataset-level verdict: the share of drifted columns against its threshold."""

    share: Share = 0.0
    threshold: Share = 0.5
    drifted: bool = False
    columns: list[ColumnDrift] = msgspec.field(default_factory=list)


class Multivariate(_Part, frozen=True):
    """The domain classifier's verdict: cross-validated AUROC of reference vs window rows."""

    auroc: Real
    threshold: Real
    drifted: bool


class DriftBucket(_Part, frozen=True):
    """Drift in one time bucket: the share of drifted columns and each column's score."""

    bucket: Time
    share: Share
    scores: dict[str, Real | None] = msgspec.field(default_factory=dict)


class NumericDistribution(_Part, frozen=True, tag_field="kind", tag="numeric"):
    """Probability mass per bin (``len(edges) - 1`` bins), reference and window."""

    edges: list[Real]
    reference: list[Real]
    current: list[Real]

    def __post_init__(self) -> None:
        bins = len(self.edges) - 1
        if bins < 1 or len(self.reference) != bins or len(self.current) != bins:
            raise ValueError(
                f"a numeric distribution needs len(edges) - 1 masses on each side, got {len(self.edges)} edges, "
                f"{len(self.reference)} reference and {len(self.current)} current masses"
            )


class CategoricalDistribution(_Part, frozen=True, tag_field="kind", tag="categorical"):
    """The share of each category, reference and window (rare ones may be summed under a
    category the builder names, e.g. ``"(other)"``)."""

    reference: dict[str, Real]
    current: dict[str, Real]


Distribution = NumericDistribution | CategoricalDistribution


class ScoreQuantiles(_Part, frozen=True):
    """Quantiles of the model's score in a bucket."""

    p10: Real
    p50: Real
    p90: Real


class PredictionBucket(_Part, frozen=True):
    """What the model answered in one bucket: predictions, per class, and the score."""

    bucket: Time
    count: Count
    classes: dict[str, int] = msgspec.field(default_factory=dict)
    score_quantiles: ScoreQuantiles | None = None


class DelayQuantiles(_Part, frozen=True):
    """Seconds from a prediction to its label."""

    p50: Real
    p90: Real
    p99: Real


class QualityBucket(_Part, frozen=True):
    """Quality in one bucket: realised from labels, estimated (CBPE) without them."""

    bucket: Time
    predictions: Count
    labelled: Count
    realised: dict[str, Real | None] = msgspec.field(default_factory=dict)
    estimated: dict[str, Real | None] = msgspec.field(default_factory=dict)
    label_delay_seconds: DelayQuantiles | None = None


class SkewColumn(_Part, frozen=True):
    """Training-serving skew of one feature: its serving distribution vs its training one."""

    column: str
    method: str
    score: Real | None
    drifted: bool


class ParityFeature(_Part, frozen=True):
    """Live parity of one feature: served values recomputed offline, compared one by one."""

    feature: str
    checked: Count
    mismatched: Count
    rate: Share | None = None


class Skew(_Part, frozen=True):
    """Both kinds of skew."""

    training_vs_serving: list[SkewColumn] = msgspec.field(default_factory=list)
    parity: list[ParityFeature] = msgspec.field(default_factory=list)


class AlertEntry(_Part, frozen=True):
    """An alert that was pending, firing or resolved in the window."""

    name: str
    severity: str
    state: str
    started_at: Time
    column: str | None = None
    ended_at: Time | None = None
    value: Real | None = None
    threshold: Real | None = None


class ReportDocument(_Part, frozen=True):
    """The whole report for one deployment and window (see the module docstring)."""

    deployment: str
    since: Time
    until: Time
    generated_at: Time
    format: int = FORMAT
    variants: list[Variant] = msgspec.field(default_factory=list)
    drift: DriftSummary = msgspec.field(default_factory=DriftSummary)
    multivariate: Multivariate | None = None
    drift_over_time: list[DriftBucket] = msgspec.field(default_factory=list)
    distributions: dict[str, Distribution] = msgspec.field(default_factory=dict)
    predictions_over_time: list[PredictionBucket] = msgspec.field(default_factory=list)
    quality: list[QualityBucket] = msgspec.field(default_factory=list)
    skew: Skew = msgspec.field(default_factory=Skew)
    alerts: list[AlertEntry] = msgspec.field(default_factory=list)
    notes: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format > FORMAT:
            raise ValueError(f"format {self.format} is newer than this Stalwart reads ({FORMAT}); upgrade Stalwart")
        if self.until < self.since:
            raise ValueError(f"until ({_iso(self.until)}) is before since ({_iso(self.since)})")
        unknown = sorted(set(self.notes) - set(SECTIONS))
        if unknown:
            raise ValueError(f"notes name unknown sections {unknown}; known: {', '.join(SECTIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """The document as JSON-ready builtins: times as ISO 8601 UTC, NaN and infinities as
        ``None`` (JSON has neither)."""
        return _plain(msgspec.to_builtins(self, builtin_types=(dt.datetime,)))  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        """The document as JSON bytes (:meth:`to_dict`, encoded)."""
        return msgspec.json.encode(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportDocument:
        """Read and check a document (from :meth:`to_dict`, a JSON file, the builder).

        Raises :class:`~stalwart.errors.ConfigError` naming the first wrong field."""
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"not a monitoring report document: {exc}; produce one with `stalwart monitor report --json`") from None

    @classmethod
    def from_json(cls, data: bytes | str) -> ReportDocument:
        """Decode and check a document saved with ``--json``."""
        try:
            return cls.from_dict(msgspec.json.decode(data))
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not a monitoring report document: the JSON does not parse ({exc})") from None


# Metrics in the order people look for them; others follow alphabetically.
QUALITY_ORDER = ("accuracy", "roc_auc", "f1", "precision", "recall", "log_loss", "brier", "mae", "rmse", "mape")
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_STATE_RANK = {"firing": 0, "pending": 1, "resolved": 2}


def sorted_columns(columns: Iterable[ColumnDrift]) -> list[ColumnDrift]:
    """Drifted columns first, then by how far past (or short of) their threshold, then name."""
    return sorted(columns, key=lambda c: (not c.drifted, -c.severity(), c.column))


def sorted_alerts(alerts: Iterable[AlertEntry]) -> list[AlertEntry]:
    """Firing first, then pending, then resolved; within each, most severe, then newest."""
    return sorted(alerts, key=lambda a: (state_rank(a.state), severity_rank(a.severity), -a.started_at.timestamp(), a.name))


def severity_rank(severity: str) -> int:
    """0 for critical, 1 warning, 2 info, 3 anything else."""
    return _SEVERITY_RANK.get(severity, 3)


def state_rank(state: str) -> int:
    """0 for firing, 1 pending, 2 resolved, 3 anything else."""
    return _STATE_RANK.get(state, 3)


def quality_metrics(buckets: Iterable[QualityBucket]) -> list[str]:
    """The metrics with a value (realised or estimated) in some bucket, in
    :data:`QUALITY_ORDER`, then the others alphabetically."""
    names = {k for b in buckets for values in (b.realised, b.estimated) for k, v in values.items() if v is not None}
    known = [m for m in QUALITY_ORDER if m in names]
    return known + sorted(names - set(known))


def latest(buckets: Sequence[QualityBucket], metric: str, which: Literal["realised", "estimated"]) -> float | None:
    """The newest bucket's value of ``metric`` (``which`` kind) that is not null."""
    for bucket in reversed(buckets):
        value = (bucket.realised if which == "realised" else bucket.estimated).get(metric)
        if value is not None:
            return float(value)
    return None


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """``value`` with times as ISO 8601 UTC and NaN and infinities as None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
