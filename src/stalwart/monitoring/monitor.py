"""One deployment's traffic against its training data: the reads behind alerts, the report
and ``GET /v1/deployments/{name}/monitoring``.

The **current** side is the deployment's live profile over a window
(:mod:`~stalwart.monitoring.live_profiles`, merged across replicas and buckets). The
**baseline** is the training profile the registry recorded for the model version that
served the most rows in that window (``model_profiles``), its columns renamed to the live
profile's names: a feature ``amount`` is ``feature:amount``, the j-th column of an OIP
input matrix ``x`` is ``input:x[j]`` (the training profile's j-th column). Outputs have no
baseline; they are profiled for the predictions over time.

:class:`MonitorSource` is the alert engine's :class:`~stalwart.monitoring.alerts.MetricSource`
over these reads:

========================================== =========================================
metric                                     value per column (``""``: the deployment)
========================================== =========================================
``drift``                                  the column's default method's score and
                                           p-value (:func:`~.drift.default_method`)
``psi``, ``js``, ``ks``, ``wasserstein``,  that method's score (and p-value for the
``hellinger``, ``chi2``, ``linf``, ``z``   tests), on the columns it applies to
``drift_share``                            ``""``: the share of drifted columns
``missing_rate``                           the share of missing values served
``rows``                                   ``""``: rows answered in the window
``accuracy``, ``f1``, ``roc_auc``, ...     ``""``: realised from labels in the window
``estimated_accuracy``, ...                ``""``: CBPE's estimate for the window
========================================== =========================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from stalwart.errors import ConfigError
from stalwart.monitoring.alerts import Observation
from stalwart.monitoring.drift import (
    METHODS,
    ColumnDrift,
    DatasetDrift,
    column_drift,
    dataset_drift,
)
from stalwart.monitoring.live_profiles import merged_profile
from stalwart.monitoring.profiles import FeatureProfile, Profile
from stalwart.monitoring.quality import quality_over_time
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["MonitorSource", "Served", "Window", "baseline_profile", "read_window", "served_versions"]

_NUMBER_KINDS = frozenset(("numeric", "integer"))
_CALIBRATION_POINTS = 4_000  # reference values drawn from a training profile's quantiles


@dataclass(frozen=True, slots=True)
class Served:
    """A model version that answered for the deployment, and how many rows it answered."""

    variant: str
    model: str
    version: int
    rows: int


@dataclass(frozen=True, slots=True)
class Window:
    """What a deployment served over ``[since, until)`` and its baseline."""

    deployment: str
    since: datetime
    until: datetime
    served: tuple[Served, ...]  # most rows first
    current: Profile  # every live column
    baseline: Profile  # the training profile, under the live names of the columns it covers

    @property
    def monitored(self) -> list[str]:
        """The columns with a baseline that were served in the window."""
        return [name for name in self.baseline if name in self.current]

    def drift(self, *, methods: str | Mapping[str, str] | None = None) -> DatasetDrift:
        """Every monitored column scored against its baseline (sketch mode)."""
        names = self.monitored
        reference = Profile({n: self.baseline[n] for n in names}, rows=self.baseline.rows)
        current = Profile({n: self.current[n] for n in names}, rows=self.current.rows)
        return dataset_drift(reference, current, methods=methods)

    def column(self, name: str, method: str | None = None) -> ColumnDrift:
        return column_drift(self.baseline[name], self.current[name], column=name, method=method)


def served_versions(database: Database, deployment: str, since: datetime, until: datetime) -> list[Served]:
    """The model versions that answered for ``deployment`` in the window, most rows first
    (from the live profiles' hour rows, so a window is read in a few rows)."""
    pb = t.profile_buckets
    lo = int(since.timestamp()) // 3600 * 3600
    hi = int(until.timestamp())
    with database.read() as conn:
        rows = conn.execute(
            select(pb.c.variant, pb.c.model, pb.c.version, func.sum(pb.c.rows))
            .where(
                pb.c.deployment == deployment, pb.c.granularity == "hour",
                pb.c.bucket_start >= lo, pb.c.bucket_start < hi,
            )
            .group_by(pb.c.variant, pb.c.model, pb.c.version)
        ).all()
    found = [Served(str(v), str(m), int(ver), int(n or 0)) for v, m, ver, n in rows]
    return sorted(found, key=lambda s: (-s.rows, s.variant, s.model, -s.version))


def training_profile(database: Database, model: str, version: int) -> Profile | None:
    """The training profile the registry recorded for ``model`` version ``version``."""
    # The registry's SchemaStore.profile reads the same row; monitoring sits below the
    # registry in the layers, so it reads the table itself.
    mp = t.model_profiles
    with database.read() as conn:
        body = conn.execute(
            select(mp.c.body).where(mp.c.name == model, mp.c.version == version, mp.c.kind == "training")
        ).scalar_one_or_none()
    return None if body is None else Profile.from_dict(body)


def baseline_profile(training: Profile, live_columns: Iterable[str]) -> Profile:
    """``training``'s columns under the live profile's names (see the module docstring);
    live columns the training profile does not cover are left out."""
    order = list(training)
    renamed: dict[str, FeatureProfile] = {}
    for live in live_columns:
        role, _, rest = live.partition(":")
        if role not in ("feature", "input"):
            continue
        if rest.endswith("]") and "[" in rest:
            index = rest[rest.rindex("[") + 1 : -1]
            if index.isdigit() and int(index) < len(order):
                renamed[live] = training[order[int(index)]]
        elif rest in training:
            renamed[live] = training[rest]
    return Profile(renamed, rows=training.rows)


def read_window(database: Database, deployment: str, since: datetime, until: datetime) -> Window:
    """The deployment's live profile over the window and its baseline (empty when no
    version served, or the serving version has no training profile)."""
    served = tuple(served_versions(database, deployment, since, until))
    current = merged_profile(database, deployment, since=since, until=until)
    baseline = Profile()
    if served:
        training = training_profile(database, served[0].model, served[0].version)
        if training is not None:
            baseline = baseline_profile(training, current)
    return Window(deployment, since, until, served, current, baseline)


class MonitorSource:
    """The alert engine's metrics (see the module docstring's table) from the live
    profiles, the training profiles and the labels in ``database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @staticmethod
    def check(metric: str) -> None:
        """ConfigError unless this source computes ``metric``."""
        if metric in _DRIFT_METRICS or metric in _QUALITY or metric.removeprefix("estimated_") in _QUALITY:
            return
        raise ConfigError(
            f"metric {metric!r} is not one Stalwart computes; use one of "
            f"{', '.join(sorted(_DRIFT_METRICS | _QUALITY))} or estimated_<quality metric>"
        )

    def values(self, deployment: str, metric: str, window_seconds: float, now: datetime) -> Mapping[str, Observation]:
        self.check(metric)
        since = now - timedelta(seconds=window_seconds)
        if metric not in _DRIFT_METRICS:
            return self._quality(deployment, metric, since, now)
        window = read_window(self._db, deployment, since, now)
        if metric == "rows":
            return {"": Observation(float(window.current.rows), rows=window.current.rows)}
        if not window.monitored:
            return {}
        if metric == "missing_rate":
            return {
                name: Observation(window.current[name].missing_fraction, rows=window.current[name].count)
                for name in window.monitored
            }
        if metric == "drift_share":
            drift = window.drift()
            return {"": Observation(drift.share, rows=window.current.rows)}
        method = None if metric == "drift" else metric
        found: dict[str, Observation] = {}
        for name in window.monitored:
            try:
                scored = window.column(name, method)
            except ConfigError:
                continue  # a method that does not apply to this column's kind
            if not math.isnan(scored.score):
                found[name] = Observation(scored.score, scored.p_value, rows=scored.current_count)
        return found

    def reference(self, deployment: str, column: str) -> np.ndarray[Any, Any] | None:
        """Reference values of a numeric column for threshold calibration: points at evenly
        spaced ranks of the baseline's quantile sketch (the training data is not kept,
        its distribution is)."""
        now = datetime.now(UTC)
        window = read_window(self._db, deployment, now - timedelta(days=1), now)
        profile = window.baseline.get(column)
        if profile is None or profile.kind not in _NUMBER_KINDS:
            return None
        ranks = (np.arange(_CALIBRATION_POINTS) + 0.5) / _CALIBRATION_POINTS
        values = profile.quantiles(ranks.tolist())
        return None if values is None else np.asarray(values, dtype=np.float64)

    def _quality(self, deployment: str, metric: str, since: datetime, now: datetime) -> Mapping[str, Observation]:
        width = max(1.0, (now - since).total_seconds())
        windows = quality_over_time(self._db, deployment, since=since, until=now, bucket=f"{width}s", align=False)
        if not windows:
            return {}
        last = windows[-1]
        estimated = metric.startswith("estimated_")
        values = last.estimated if estimated else last.realised
        value = values.get(metric.removeprefix("estimated_")) if values else None
        if value is None or not math.isfinite(value):
            return {}
        return {"": Observation(float(value), rows=last.labelled if not estimated else last.predictions)}


_DRIFT_METRICS = frozenset((*METHODS, "drift", "drift_share", "missing_rate", "rows"))
_QUALITY = frozenset(
    ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier", "mae", "rmse", "mape")
)
