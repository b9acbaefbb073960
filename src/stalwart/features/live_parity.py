"""Live parity: what was served, recomputed offline at the same entity and time.

:func:`check_live_parity` draws a uniform sample of a deployment's answered, undegraded
``/v1`` requests from the prediction log (:mod:`stalwart.monitoring.log_sampling`), and
recomputes every feature of every sampled row point-in-time, through the engine that
builds training sets (:func:`~stalwart.features.training.build_training_set`): for the
row's entity, as of the instant the served features were computed (the record's
``features_as_of_ns``; its arrival time for records from before that field), with the
request values the record logged. Each feature set is one point-in-time join for all
sampled rows that need it. Then each value is compared with the one the model saw.

What a mismatch means: the served value is not what the definition gives on the data as
it stands, e.g. the cache served a value a write should have invalidated (a write that
bypassed ``write``/``/v1/sources/.../rows``), rows were back-dated or changed after the
request, or the online copy of a source differs from its offline data.

**Same versions.** A record says which FeatureSet version computed its features
(``feature_sets``). A feature whose set has another version in the project now (or is no
longer declared) is counted ``version_changed``, never compared: the project would compute
it by another definition. Records without versions (logged before records carried them)
are skipped.

**Comparison.** Numbers are equal when ``|served - recomputed| <= atol + rtol *
max(|served|, |recomputed|)``: the default ``rtol=1e-6`` absorbs a float32 model input
(about 6e-8 relative error) and ``atol=1e-9`` values around zero. Missing values (null,
NaN: the log keeps NaN as null) equal each other only: a missing value against a default
(0, a declared default) is a mismatch. Anything else (strings, booleans) must be equal.

**Not compared.** Request values the model takes as they are (nothing to recompute); a
value validation imputed or clipped (the model saw the fix, not the feature); a transform
whose request values were not logged (``STALWART_PREDICTION_LOG_INPUTS`` not ``all``) or
were redacted; rows whose entity key was redacted. Each is counted ``skipped``.

>>> report = check_live_parity(project, settings, "fraud", since="24h", sample=500)  # doctest: +SKIP
>>> [(f.feature, f.rate) for f in report.features if f.mismatched]                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.features.readers import SourceReader, make_reader
from stalwart.features.training import build_training_set
from stalwart.monitoring.log_sampling import sample_records
from stalwart.monitoring.prediction_reads import TimeSpec, parse_time, reading_store
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks import PredictionStore, Query
from stalwart.project import FeatureSet, Project, RequestSource, Transform
from stalwart.storage import DatabasePool

__all__ = ["FeatureSkew", "LiveParityReport", "SkewMetrics", "check_live_parity", "values_match"]

EXAMPLES = 3
"""Mismatches kept per feature as examples."""
_AS_OF = "__stalwart_as_of__"  # the events' time column: no entity key or request value is called this
_REDACTED = "hmac:"  # how a keyed hash of a redacted value starts (monitoring/records.py)
_CONVERT: dict[str, Callable[[Any], Any]] = {"float": float, "int": int, "bool": bool, "str": str}
# A stand-in request value of the field's type, for a row whose own was not logged (the
# features that depend on it are then not compared).
_PLACEHOLDERS: dict[str, Any] = {"float": float("nan"), "int": 0, "bool": False}


@dataclass
class FeatureSkew:
    """How one feature's served values compared with their recomputation."""

    feature: str
    feature_set: str
    checked: int = 0  # rows compared
    mismatched: int = 0
    version_changed: int = 0  # rows served by another version of the set: not compared
    skipped: int = 0  # rows that could not be recomputed (see the module docstring)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Mismatched rows over compared rows (0 when none were compared)."""
        return self.mismatched / self.checked if self.checked else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "feature_set": self.feature_set,
            "checked": self.checked,
            "mismatched": self.mismatched,
            "rate": self.rate,
            "version_changed": self.version_changed,
            "skipped": self.skipped,
            "examples": list(self.examples),
        }


@dataclass
class LiveParityReport:
    """What :func:`check_live_parity` found for one deployment over one time range."""

    deployment: str
    since_ns: int | None
    until_ns: int | None
    scanned: int  # answered records of the deployment read from the log
    eligible: int  # of those, records with features to compare (the sample is drawn from these)
    sampled: int  # records recomputed
    rows: int  # their rows (entities)
    truncated: bool  # the scan stopped at max_scan: older records were not sampled
    rtol: float
    atol: float
    features: list[FeatureSkew]
    unversioned: int = 0  # records without FeatureSet versions, skipped
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no compared value differed."""
        return all(f.mismatched == 0 for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary and one row per feature (``feature``, ``checked``,
        ``mismatched``, ``rate``, ``version_changed``, ``skipped``, ``examples``)."""
        return {
            "deployment": self.deployment,
            "since_ns": self.since_ns,
            "until_ns": self.until_ns,
            "scanned": self.scanned,
            "eligible": self.eligible,
            "sampled": self.sampled,
            "rows": self.rows,
            "truncated": self.truncated,
            "unversioned": self.unversioned,
            "rtol": self.rtol,
            "atol": self.atol,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "features": [f.to_dict() for f in self.features],
        }


class SkewMetrics:
    """``stalwart_feature_skew_rate{deployment,feature}``: the latest live parity rate of
    each feature, in ``registry``. Labels are bounded by the project's deployments and
    feature names (a report only names features its project declares)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rate = Gauge(
            "stalwart_feature_skew_rate",
            "Share of sampled served values that differ from their point-in-time recomputation",
            ("deployment", "feature"),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )

    def publish(self, report: LiveParityReport) -> None:
        """Set each compared feature's rate (features with nothing compared are left as they were)."""
        for item in report.features:
            if item.checked:
                self.rate.labels(report.deployment, item.feature).set(item.rate)


def check_live_parity(
    project: Project,
    settings: Settings,
    deployment: str,
    *,
    since: TimeSpec | None = "24h",
    until: TimeSpec | None = None,
    sample: int = 1000,
    seed: int = 0,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_scan: int = 1_000_000,
    max_rows: int = 100_000,
    store: PredictionStore | None = None,
    readers: Mapping[str, SourceReader] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> LiveParityReport:
    """Sample ``sample`` answered requests of ``deployment`` logged in ``[since, until)``
    and compare each served feature with its point-in-time recomputation.

    ``settings`` locates the prediction log (unless ``store`` is given) and the sources'
    databases (unless ``readers`` maps source names to readers). At most ``max_scan``
    records are read and ``max_rows`` rows (entities) recomputed, drawn at random when the
    sample has more. ``progress(stage, done, total)`` reports the stages ("reading the
    log", "recomputing", with a total) as they go. Raises DeploymentNotFound for a
    deployment the project does not declare, PredictionLogError when the log cannot be
    read back.
    """
    start = time.perf_counter()
    project.deployment(deployment)  # DeploymentNotFound, naming the declared ones
    if max_rows < 1:
        raise ConfigError(f"max_rows: {max_rows} must be at least 1")
    now = time.time_ns()
    since_ns, until_ns = parse_time(since, "since", now_ns=now), parse_time(until, "until", now_ns=now)
    query = Query(deployment=deployment, status=200, degraded=False, since_ns=since_ns, until_ns=until_ns)

    def reading(done: int) -> None:
        if progress is not None:
            progress("reading the log", done, None)

    if store is None:
        with reading_store(settings) as opened:
            drawn = sample_records(opened, query, sample, seed=seed, max_scan=max_scan, keep=_comparable, progress=reading)
    else:
        drawn = sample_records(store, query, sample, seed=seed, max_scan=max_scan, keep=_comparable, progress=reading)
    rows = _rows(drawn.records, max_rows, seed)
    plan = _Plan(project, rows)
    _recompute(plan, project, settings, readers, progress)
    return LiveParityReport(
        deployment=deployment, since_ns=since_ns, until_ns=until_ns, scanned=drawn.scanned,
        eligible=drawn.eligible, sampled=len(drawn.records), rows=len(rows), truncated=drawn.truncated,
        rtol=rtol, atol=atol, features=plan.compare(rtol, atol), unversioned=plan.unversioned,
        seconds=time.perf_counter() - start,
    )


def values_match(served: Any, recomputed: Any, rtol: float, atol: float) -> bool:
    """Whether a served value and its recomputation agree (the rule in the module docstring)."""
    a, b = _plain(served), _plain(recomputed)
    a_missing, b_missing = _is_missing(a), _is_missing(b)
    if a_missing or b_missing:
        return a_missing and b_missing
    if _is_number(a) and _is_number(b):
        x, y = float(a), float(b)
        if math.isinf(x) or math.isinf(y):
            return x == y
        return abs(x - y) <= atol + rtol * max(abs(x), abs(y))
    return bool(a == b)


# --- rows of the sample -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """One entity of one sampled request."""

    record: PredictionRecord
    index: int  # its position in the request
    as_of_ns: int


def _comparable(record: PredictionRecord) -> bool:
    """A record with features and entities to compare, none of them summarised."""
    if not record.features or not record.entities:
        return False
    return all(isinstance(values, list) and len(values) == len(record.entities) for values in record.features.values())


def _rows(records: Sequence[PredictionRecord], max_rows: int, seed: int) -> list[_Row]:
    rows = [
        _Row(record, i, record.features_as_of_ns if record.features_as_of_ns is not None else record.time_ns)
        for record in records
        for i in range(len(record.entities or ()))
    ]
    if len(rows) <= max_rows:
        return rows
    picks = np.sort(np.random.default_rng(seed + 1).choice(len(rows), size=max_rows, replace=False))
    return [rows[int(i)] for i in picks]


# --- which rows need which feature set ------------------------------------------------------


class _NotRecomputed:
    """Stands for a value that could not be recomputed (entity or request value not logged)."""


_NOT_RECOMPUTED = _NotRecomputed()


class _Plan:
    """Per feature set of the project, the sampled rows it recomputes and, once computed,
    their values; per feature, its tally."""

    def __init__(self, project: Project, rows: Sequence[_Row]) -> None:
        unversioned: set[str] = set()
        self.tallies: dict[str, FeatureSkew] = {}
        self.rows_of: dict[str, list[_Row]] = {}  # set name -> rows to recompute
        self.wanted: dict[str, list[str]] = {}  # set name -> its features the rows use
        self.values: dict[str, dict[str, list[Any]]] = {}  # set name -> feature -> value per row of rows_of
        self.pairs: list[tuple[_Row, str, str, int]] = []  # (row, feature, set, position in rows_of[set])
        request_names = {f for s in project.sources.values() if isinstance(s, RequestSource) for f in s.fields}
        sets = project.feature_sets
        for row in rows:
            record = row.record
            if record.feature_sets is None:
                unversioned.add(record.request_id)
                continue
            names = set(record.features or {})
            claimed: set[str] = set()
            changed: list[str] = []
            for set_name, version in record.feature_sets.items():
                fs = sets.get(set_name)
                if fs is None or fs.version != version:
                    changed.append(set_name)
                    continue
                used = [n for n in fs.feature_names if n in names]
                if not used:
                    continue
                claimed.update(used)
                same_set = self.rows_of.setdefault(set_name, [])
                wanted = self.wanted.setdefault(set_name, [])
                wanted.extend(n for n in used if n not in wanted)
                self.pairs.extend((row, name, set_name, len(same_set)) for name in used)
                same_set.append(row)
            for name in sorted(names - claimed - request_names):
                if changed:
                    # Served by a definition the project no longer has (when several sets
                    # changed, which one it came from is unknowable: the first is named).
                    self._tally(name, changed[0]).version_changed += 1
        for _, name, set_name, _ in self.pairs:  # a line for every feature compared
            self._tally(name, set_name)
        self.unversioned = len(unversioned)

    def _tally(self, feature: str, feature_set: str) -> FeatureSkew:
        tally = self.tallies.get(feature)
        if tally is None:
            tally = self.tallies[feature] = FeatureSkew(feature, feature_set)
        return tally

    def compare(self, rtol: float, atol: float) -> list[FeatureSkew]:
        """Tally every (row, feature) pair against its recomputed value."""
        for row, name, set_name, position in self.pairs:
            tally = self.tallies[name]
            record = row.record
            recomputed = self.values.get(set_name, {}).get(name, [_NOT_RECOMPUTED] * (position + 1))[position]
            if recomputed is _NOT_RECOMPUTED or _adjusted(record, name, row.index):
                tally.skipped += 1
                continue
            served = (record.features or {})[name][row.index]
            tally.checked += 1
            if not values_match(served, recomputed, rtol, atol):
                tally.mismatched += 1
                if len(tally.examples) < EXAMPLES:
                    tally.examples.append({
                        "request_id": record.request_id,
                        "entity": (record.entities or [{}])[row.index],
                        "as_of_ns": row.as_of_ns,
                        "served": _json(served),
                        "recomputed": _json(recomputed),
                    })
        return sorted(self.tallies.values(), key=lambda t: (t.feature_set, t.feature))


def _adjusted(record: PredictionRecord, feature: str, index: int) -> bool:
    """Whether validation replaced this value (the model saw the fix, not the feature)."""
    validation = record.validation or {}
    for action in ("imputed", "clipped"):
        rows = (validation.get(action) or {}).get(feature)
        if isinstance(rows, list) and index in rows:
            return True
    return False


# --- the offline recomputation ----------------------------------------------------------------


def _recompute(
    plan: _Plan,
    project: Project,
    settings: Settings,
    readers: Mapping[str, SourceReader] | None,
    progress: Callable[[str, int, int | None], None] | None,
) -> None:
    """One point-in-time join per feature set, over all the rows that need it."""
    pd = require("pandas", extra="features", purpose="live parity")
    total = len(plan.rows_of)
    pool = DatabasePool(settings)
    try:
        chosen = dict(readers or {})
        for done, (set_name, rows) in enumerate(plan.rows_of.items()):
            if progress is not None:
                progress(f"recomputing {set_name}", done, total)
            fs = project.feature_sets[set_name]
            if fs.source.name not in chosen:
                chosen[fs.source.name] = make_reader(fs.source, pool, project.root)
            wanted = plan.wanted[set_name]
            events, usable, no_request = _events(pd, fs, rows)
            values: dict[str, list[Any]] = {name: [_NOT_RECOMPUTED] * len(rows) for name in wanted}
            where = np.flatnonzero(usable)
            if len(where):
                built = build_training_set(
                    events, [fs[n] for n in wanted],
                    timestamp=_AS_OF, settings=settings, root=project.root, readers=chosen,
                )
                needing = _needing_request(fs)
                for name in wanted:
                    column = built.frame[name].to_numpy(dtype=object)
                    for j, i in enumerate(where):
                        if not (no_request[i] and name in needing):
                            values[name][i] = column[j]
            plan.values[set_name] = values
        if progress is not None:
            progress("recomputed", total, total)
    finally:
        pool.dispose()


def _events(pd: Any, fs: FeatureSet, rows: Sequence[_Row]) -> tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The events frame of ``fs``'s join for the usable rows (entity keys, the as-of
    instant, the request values its transforms read), which rows are usable (entity keys
    logged and not redacted), and which lack a request value (logged as a hash, not at
    all, or redacted)."""
    keys = list(fs.entity.keys)
    fields = {f.name: f for feature in fs.features if isinstance(feature, Transform) for f in feature.inputs if not isinstance(f, str)}
    columns: dict[str, list[Any]] = {k: [] for k in [*keys, *fields, _AS_OF]}
    usable = np.ones(len(rows), dtype=bool)
    no_request = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        entity = (row.record.entities or [{}])[row.index]
        found = [entity.get(key) if isinstance(entity, Mapping) else None for key in keys]
        if any(value is None or _redacted(value) for value in found):
            usable[i] = False
            continue
        for key, value in zip(keys, found, strict=True):
            columns[key].append(value)
        inputs = row.record.inputs or {}
        for name, request_field in fields.items():
            logged = inputs.get(name)
            value = logged[row.index] if isinstance(logged, list) and row.index < len(logged) else None
            if value is None or _redacted(value):
                no_request[i] = True
                value = _PLACEHOLDERS.get(request_field.type, "")
            else:
                # As the online path converts a request value (an int sent for a float field).
                value = _CONVERT.get(request_field.type, str)(value)
            columns[name].append(value)
        columns[_AS_OF].append(row.as_of_ns)
    frame = pd.DataFrame({k: v for k, v in columns.items() if k != _AS_OF})
    frame[_AS_OF] = pd.to_datetime(np.asarray(columns[_AS_OF], dtype=np.int64), unit="ns", utc=True)
    return frame, usable, no_request


def _needing_request(fs: FeatureSet) -> set[str]:
    """The features of ``fs`` whose value depends on a request value (directly or through
    another transform)."""
    needing: set[str] = set()
    for feature in fs.features:
        if isinstance(feature, Transform) and any(not isinstance(i, str) or i in needing for i in feature.inputs):
            needing.add(feature.name)
    return needing


def _redacted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(_REDACTED)


# --- values ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_missing(value: Any) -> bool:
    value = _plain(value)
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value
