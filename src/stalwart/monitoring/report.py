"""Building the monitoring report document from the database: drift, profiles, quality,
skew and alerts of one deployment in one window.

Everything is read from what the servers already wrote: live profiles (merged across
replicas), the training profile of the version that served most, the prediction log and
its labels, the alert history. The result is the dict
:meth:`~stalwart.monitoring.report_document.ReportDocument.from_dict` reads; sections that
cannot be filled say why in ``notes``. Live parity recomputes features, which the
feature engine does (a layer above): the CLI passes its rows in as ``parity``.

Costs are bounded by the window, not by traffic: profiles are read per bucket (at most
``_MAX_BUCKETS`` of them; the granularity widens with the window), the multivariate check
reads at most ``_DOMAIN_ROWS`` logged rows per side, quality at most a million records.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import select

from stalwart.config import Settings
from stalwart.errors import ConfigError, StalwartError
from stalwart.monitoring.alert_store import AlertStore, TransitionRow
from stalwart.monitoring.drift import dataset_drift
from stalwart.monitoring.live_profiles import Granularity, read_profiles
from stalwart.monitoring.monitor import Window, read_window
from stalwart.monitoring.profiles import FeatureProfile, Profile
from stalwart.monitoring.quality import quality_over_time
from stalwart.storage.database import Database
from stalwart.storage.tables import predictions

__all__ = ["build_report"]

_MAX_BUCKETS = 96
_MAX_DISTRIBUTIONS = 48
_TOP_CATEGORIES = 12
_DOMAIN_ROWS = 2_000
_NUMBER_KINDS = frozenset(("numeric", "integer"))
_REPORT_FIELDS = frozenset((
    "column", "kind", "method", "score", "p_value", "threshold", "drifted", "reference_count",
    "current_count", "missing_reference", "missing_current", "out_of_schema", "mode", "error_bound",
))


def build_report(
    database: Database,
    deployment: str,
    since: dt.datetime,
    until: dt.datetime,
    *,
    settings: Settings,
    parity: Sequence[Mapping[str, Any]] | None = None,
    multivariate: bool = True,
) -> dict[str, Any]:
    """The report of ``deployment`` from ``since`` (inclusive) to ``until`` (exclusive), both
    aware UTC times, as the dict :meth:`ReportDocument.from_dict` reads. ``parity``: rows of
    a live parity check (:meth:`LiveParityReport.to_dict`'s features), when one was run."""
    del settings  # the database is the settings' registry database; kept for the CLI's call
    notes: dict[str, str] = {}
    window = read_window(database, deployment, since, until)
    doc: dict[str, Any] = {
        "deployment": deployment,
        "since": _iso(since),
        "until": _iso(until),
        "generated_at": _iso(dt.datetime.now(dt.UTC)),
        "variants": [{"variant": s.variant, "model": s.model, "version": s.version} for s in window.served],
    }
    if not window.served:
        notes["drift"] = "no live profiles in this window: no traffic, or STALWART_LIVE_PROFILES is off"
    elif not window.monitored:
        notes["drift"] = (
            f"model {window.served[0].model} v{window.served[0].version} has no training profile "
            f"covering the served columns: register it with training data or a sample"
        )
    else:
        drift = window.drift()
        doc["drift"] = {
            "share": drift.share, "threshold": drift.threshold, "drifted": drift.drifted,
            "columns": [_column(c.to_dict()) for c in drift.columns],
        }
        doc["distributions"] = _distributions(window)
        doc["skew"] = {"training_vs_serving": _skew(window)}
    granularity = _granularity(since, until)
    buckets = read_profiles(database, deployment, since=since, until=until, granularity=granularity)
    doc["drift_over_time"] = _drift_over_time(window, buckets)
    doc["predictions_over_time"] = _predictions_over_time(buckets)
    if not buckets:
        notes["predictions_over_time"] = "no live profiles in this window"
    doc["quality"] = _quality(database, deployment, since, until, granularity, notes)
    if parity is not None:
        doc.setdefault("skew", {})["parity"] = [_parity_row(row) for row in parity]
    else:
        notes["skew"] = "live parity not run: `stalwart monitor report --parity-sample N` recomputes N logged requests"
    if multivariate and window.monitored:
        doc["multivariate"] = _multivariate(database, deployment, window, notes)
    doc["alerts"] = _alerts(database, deployment, since, until)
    doc["notes"] = notes
    return doc


# -- sections -----------------------------------------------------------------------------


def _column(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in _REPORT_FIELDS}


def _distributions(window: Window) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name in window.monitored[:_MAX_DISTRIBUTIONS]:
        ref, cur = window.baseline[name], window.current[name]
        if ref.kind in _NUMBER_KINDS:
            numeric = _numeric(ref, cur)
            if numeric is not None:
                shown[name] = numeric
        else:
            shown[name] = {
                "kind": "categorical",
                "reference": _shares(ref.frequencies()),
                "current": _shares(cur.frequencies()),
            }
    return shown


def _numeric(ref: FeatureProfile, cur: FeatureProfile) -> dict[str, Any] | None:
    deciles = ref.quantiles([i / 10 for i in range(1, 10)])
    lows = [v for v in (ref.min, cur.min) if v is not None and math.isfinite(v)]
    highs = [v for v in (ref.max, cur.max) if v is not None and math.isfinite(v)]
    if deciles is None or not lows or not highs:
        return None
    inner = sorted({float(v) for v in deciles if math.isfinite(v)})
    inner = [v for v in inner if min(lows) < v < max(highs)]
    edges = [float(min(lows)), *inner, float(max(highs))]
    if len(edges) < 2 or edges[0] == edges[-1]:
        return None
    return {"kind": "numeric", "edges": edges, "reference": _masses(ref, inner), "current": _masses(cur, inner)}


def _masses(profile: FeatureProfile, inner: list[float]) -> list[float]:
    cdf = profile.cdf(inner) if inner else [1.0]
    if cdf is None:
        return [0.0] * (len(inner) + 1)
    cumulative = np.clip(np.asarray(cdf, dtype=np.float64), 0.0, 1.0)
    return [float(max(0.0, m)) for m in np.diff(np.concatenate(([0.0], cumulative)))]


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shares = {str(k): v / total for k, v in ranked[:_TOP_CATEGORIES]}
    rest = sum(v for _, v in ranked[_TOP_CATEGORIES:])
    if rest:
        shares["(other)"] = rest / total
    return shares


def _skew(window: Window) -> list[dict[str, Any]]:
    """Serving vs training per feature by Jensen-Shannon distance (one method for every
    column, so features compare with each other), whatever method drift chose."""
    rows = []
    for name in window.monitored:
        scored = window.column(name, "js")
        rows.append({
            "column": name, "method": "js",
            "score": None if math.isnan(scored.score) else scored.score, "drifted": scored.drifted,
        })
    return rows


def _granularity(since: dt.datetime, until: dt.datetime) -> Granularity:
    span = (until - since).total_seconds()
    if span <= _MAX_BUCKETS * 60:
        return "minute"
    if span <= _MAX_BUCKETS * 3600:
        return "hour"
    return "day"


def _drift_over_time(window: Window, buckets: list[tuple[dt.datetime, Profile]]) -> list[dict[str, Any]]:
    names = window.monitored
    if not names:
        return []
    series = []
    for start, profile in buckets:
        present = [n for n in names if n in profile and profile[n].count]
        if not present:
            continue
        drift = dataset_drift(
            Profile({n: window.baseline[n] for n in present}, rows=window.baseline.rows),
            Profile({n: profile[n] for n in present}, rows=profile.rows),
        )
        series.append({
            "bucket": _iso(start), "share": drift.share,
            "scores": {c.column: None if math.isnan(c.score) else c.score for c in drift.columns},
        })
    return series


def _predictions_over_time(buckets: list[tuple[dt.datetime, Profile]]) -> list[dict[str, Any]]:
    series = []
    for start, profile in buckets:
        entry: dict[str, Any] = {"bucket": _iso(start), "count": int(profile.rows)}
        predicted = profile.get("output:predict")
        if predicted is not None and predicted.count:
            entry["classes"] = _class_counts(predicted)
        score = _score_column(profile)
        if score is not None:
            q = score.quantiles([0.1, 0.5, 0.9])
            if q is not None and all(math.isfinite(v) for v in q):
                entry["score_quantiles"] = {"p10": q[0], "p50": q[1], "p90": q[2]}
        series.append(entry)
    return series


def _class_counts(profile: FeatureProfile) -> dict[str, int]:
    if profile.kind in _NUMBER_KINDS and profile.distinct() > 20:
        return {}  # a regression's output: not classes
    counts = profile.frequencies()
    if counts:
        return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:8]}
    return {}


def _score_column(profile: Profile) -> FeatureProfile | None:
    """The positive class's score: ``output:predict_proba[1]`` of a binary classifier."""
    for name in ("output:predict_proba[1]", "output:probabilities[1]", "output:score"):
        found = profile.get(name)
        if found is not None and found.count and f"{name[:-2]}2]" not in profile:
            return found
    return None


def _quality(
    database: Database, deployment: str, since: dt.datetime, until: dt.datetime, granularity: Granularity, notes: dict[str, str]
) -> list[dict[str, Any]]:
    bucket = {"minute": "1m", "hour": "1h", "day": "1d"}[granularity]
    try:
        windows = quality_over_time(database, deployment, since=since, until=until, bucket=bucket)
    except ConfigError as exc:
        notes["quality"] = str(exc)
        return []
    rows = [w.to_dict() for w in windows if w.predictions]
    if rows and not any(r["labelled"] for r in rows):
        notes["quality"] = "no labels yet (POST /v1/feedback): estimated quality only"
    return rows


def _parity_row(row: Mapping[str, Any]) -> dict[str, Any]:
    checked = int(row.get("checked", 0))
    mismatched = int(row.get("mismatched", 0))
    return {
        "feature": str(row["feature"]), "checked": checked, "mismatched": mismatched,
        "rate": mismatched / checked if checked else None,
    }


def _multivariate(database: Database, deployment: str, window: Window, notes: dict[str, str]) -> dict[str, Any] | None:
    """The domain classifier on logged feature rows: this window against the window of the
    same length before it (the training rows themselves are not kept)."""
    from stalwart.monitoring.domain import domain_drift

    span = window.until - window.since
    current = _feature_rows(database, deployment, window.since, window.until)
    reference = _feature_rows(database, deployment, window.since - span, window.since)
    names = sorted(set(current) & set(reference))
    rows = min((len(v) for v in (*current.values(), *reference.values())), default=0)
    if not names or rows < 50:
        notes["multivariate"] = (
            "needs logged features (prediction log on, /v1) in this window and the one before it, "
            "50 rows or more in each"
        )
        return None
    try:
        found = domain_drift({n: reference[n] for n in names}, {n: current[n] for n in names}, max_rows=_DOMAIN_ROWS)
    except (StalwartError, ImportError) as exc:
        notes["multivariate"] = str(exc)
        return None
    return {"auroc": found.auroc, "threshold": found.threshold, "drifted": found.drifted}


class _Logged(msgspec.Struct):
    features: dict[str, Any] | None = None


_logged = msgspec.json.Decoder(_Logged)


def _feature_rows(database: Database, deployment: str, since: dt.datetime, until: dt.datetime) -> dict[str, list[Any]]:
    """Up to ``_DOMAIN_ROWS`` rows of features as logged (newest first), by feature name."""
    statement = (
        select(predictions.c.record)
        .where(
            predictions.c.deployment == deployment,
            predictions.c.time_ns >= _ns(since), predictions.c.time_ns < _ns(until),
            predictions.c.status < 400,
        )
        .order_by(predictions.c.time_ns.desc())
        .limit(_DOMAIN_ROWS)
    )
    with database.read() as conn:
        texts = conn.execute(statement).scalars().all()
    columns: dict[str, list[Any]] = {}
    count = 0
    for text in texts:
        features = _logged.decode(text).features
        if not features:
            continue
        width = max((len(v) for v in features.values() if isinstance(v, list)), default=0)
        for name, values in features.items():
            if isinstance(values, list) and len(values) == width:
                columns.setdefault(name, [None] * count).extend(values)
        count += width
        for values in columns.values():
            values.extend([None] * (count - len(values)))
    return columns


def _alerts(database: Database, deployment: str, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """Episodes of each (alert, column) that overlap the window: from the first pending or
    firing to resolved (or still open)."""
    lo, hi = since.timestamp(), until.timestamp()
    transitions = sorted(
        (r for r in AlertStore(database).history(limit=10_000) if r.deployment == deployment),
        key=lambda r: r.at,
    )
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    episodes: list[dict[str, Any]] = []
    for row in transitions:
        key = (row.alert, row.column)
        entry = open_.get(key)
        if row.to_state in ("pending", "firing"):
            if entry is None:
                entry = open_[key] = _episode(row)
                episodes.append(entry)
            entry.update(state=row.to_state, value=_finite(row.value), threshold=_finite(row.threshold))
        elif entry is not None:
            entry.update(state="resolved" if row.to_state == "resolved" else "inactive", ended_at=row.at)
            del open_[key]
    shown = []
    for entry in episodes:
        ended = entry.get("ended_at")
        if entry["started_at"] >= hi or (ended is not None and ended < lo) or entry["state"] == "inactive":
            continue
        shown.append({
            **entry,
            "started_at": _iso(dt.datetime.fromtimestamp(entry["started_at"], dt.UTC)),
            "ended_at": None if ended is None else _iso(dt.datetime.fromtimestamp(ended, dt.UTC)),
        })
    return shown


def _episode(row: TransitionRow) -> dict[str, Any]:
    return {
        "name": row.alert, "column": row.column or None, "severity": row.severity,
        "state": row.to_state, "started_at": row.at, "ended_at": None,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _ns(value: dt.datetime) -> int:
    return int(value.timestamp() * 1_000_000_000)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
