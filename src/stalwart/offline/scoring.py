"""Batch scoring: a registered model over a file of events, as serving would have scored them.

>>> summary = score_events(project, "fraud", "events.parquet", "scores.parquet", engine="duckdb")  # doctest: +SKIP
>>> summary.scored, summary.rejected  # doctest: +SKIP

For each event, the model's features are computed point-in-time on the chosen engine (the
features the model was registered with, checked against the project's FeatureSet
versions, as a deployment checks them); then, batch by batch, the same artifact the
server loads (sha256-verified), the same input layout (one matrix or named columns) and
the same validator, built from the version's active schema with the given policy
overrides. Nothing is dropped silently: a row whose values break a ``reject`` rule gets
no outputs, ``status = "rejected"`` and its violations in the ``validation`` column
(JSON); imputed, clipped and flagged rows are scored and say what was done to them; a row
the model itself refuses (found by halving the failing call, as serving tells a request's
rows from its batch mates') gets ``status = "failed"`` and the model's error. The output
is one Parquet file: the event's keys, time and carried columns, ``status``,
``validation``, ``error`` and one column per model output (a matrix output as a list per
row).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError, ModelError, StalwartError
from stalwart.offline.batches import arrow_to_numpy
from stalwart.offline.engine import Job, OfflineEngine
from stalwart.offline.engines import resolve_engine
from stalwart.offline.plan import Plan, make_plan
from stalwart.project import Deployment, Project
from stalwart.registry import ModelVersion, Registry
from stalwart.validation.policy import PolicyOverrides
from stalwart.validation.report import ValidationReport
from stalwart.validation.validator import Validator

__all__ = ["ScoreSummary", "score_events"]

_MODEL_ROWS = 65_536  # rows per model call


@dataclass
class ScoreSummary:
    """What a scoring run did: rows in, scored, rejected by validation; what validation
    changed or flagged, by (feature, rule, action); each numeric output's mean; timings."""

    model: str
    engine: str
    rows: int = 0
    scored: int = 0
    rejected: int = 0  # by validation (a reject rule)
    failed: int = 0  # refused by the model itself
    violations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    output_means: dict[str, float] = field(default_factory=dict)
    features_seconds: float = 0.0
    scoring_seconds: float = 0.0
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "engine": self.engine,
            "rows": self.rows,
            "scored": self.scored,
            "rejected": self.rejected,
            "failed": self.failed,
            "violations": [
                {"feature": f, "rule": r, "action": a, "rows": n} for (f, r, a), n in sorted(self.violations.items())
            ],
            "output_means": self.output_means,
            "features_seconds": round(self.features_seconds, 3),
            "scoring_seconds": round(self.scoring_seconds, 3),
            "output": self.output,
        }


def score_events(
    project: Project,
    model: str,
    events: Any,
    output: str | Path,
    *,
    version: int | None = None,
    deployment: str | None = None,
    engine: str | OfflineEngine = "duckdb",
    timestamp: str = "ts",
    carry: Sequence[str] = (),
    policies: PolicyOverrides | None = None,
    settings: Settings | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> ScoreSummary:
    """Score ``events`` (a DataFrame, or a Parquet file or directory) with ``model``
    (its latest version unless ``version``) into the Parquet file ``output`` (see the
    module docstring). ``deployment`` names a deployment of the project whose feature list
    and validation overrides to use, as it serves the model; ``policies`` overrides them.
    ``progress(step, done, total)`` hears rows as they are scored."""
    settings = settings or Settings()
    chosen = resolve_engine(engine)
    spec = project.deployment(deployment) if deployment is not None else None
    if spec is not None and policies is None and spec.validation:
        policies = PolicyOverrides.parse(spec.validation, source=f"deployment '{spec.name}' validation")
    registry = Registry.open(settings)
    try:
        mv = registry.get(model, version)
        refs = project.features_for(spec or Deployment("score", mv.ref), mv.ref, mv.training)
        revision = registry.schemas.active(mv.name, mv.version)
        predictor = registry.load(mv)
    finally:
        registry.db.dispose()
    validator = None
    if revision is not None:
        validator = Validator(
            revision.schema,
            matrix=None if mv.signature.is_columnar else mv.signature.inputs[0].name,
            policies=policies,
            max_violations=10**9,  # every row's violations are reported, not a sample
            subject=f"model {mv.ref}'s input schema (revision {revision.revision})",
        )
    plan = make_plan(refs, timestamp=timestamp, label=None, carry=carry)
    summary = ScoreSummary(model=mv.ref, engine=chosen.name, output=str(output))
    with tempfile.TemporaryDirectory(prefix="stalwart-score-") as scratch:
        start = time.perf_counter()
        if progress is not None:
            progress(f"computing features on {chosen.name}", 0, None)
        job = Job(plan=plan, events=events, output=Path(scratch) / "features", root=project.root, settings=settings)
        computed = chosen.compute(job)
        summary.features_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _score(computed.path or job.output, computed.rows, Path(output), plan, mv, predictor, validator, summary, progress)  # type: ignore[arg-type]  # output was given
        summary.scoring_seconds = time.perf_counter() - start
    return summary


def _score(
    features: Path,
    total: int,
    output: Path,
    plan: Plan,
    mv: ModelVersion,
    predictor: Any,
    validator: Validator | None,
    summary: ScoreSummary,
    progress: Callable[[str, int, int | None], None] | None,
) -> None:
    pa = require("pyarrow", extra="features", purpose="batch scoring")
    pq = require("pyarrow.parquet", extra="features", purpose="batch scoring")
    pads = require("pyarrow.dataset", extra="features", purpose="batch scoring")
    dataset = pads.dataset(str(features), format="parquet", partitioning="hive")
    kept = [c for c in plan.output_columns() if c not in plan.features]
    outputs = mv.signature.output_names
    sums = dict.fromkeys(outputs, 0.0)
    writer = None
    try:
        for batch in dataset.to_batches(columns=[*kept, *plan.features], batch_size=_MODEL_ROWS):
            if batch.num_rows == 0:
                continue
            scored = _score_batch(batch, plan, mv, predictor, validator, summary, sums)
            table = pa.Table.from_batches([scored])
            if writer is None:
                output.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(str(output), table.schema, compression="zstd")
            writer.write_table(table)
            if progress is not None:
                progress("scoring", summary.rows, total)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ConfigError("there are no events to score")
    summary.output_means = {name: sums[name] / summary.scored for name in outputs if summary.scored and not np.isnan(sums[name])}


def _score_batch(
    batch: Any,
    plan: Plan,
    mv: ModelVersion,
    predictor: Any,
    validator: Validator | None,
    summary: ScoreSummary,
    sums: dict[str, float],
) -> Any:
    """One batch: model inputs, validation (rejected rows set aside), the model's call on
    the rest, and the output batch."""
    pa = require("pyarrow", extra="features", purpose="batch scoring")
    n = batch.num_rows
    names = batch.schema.names
    columns = {name: arrow_to_numpy(batch.column(names.index(name))) for name in plan.features}
    inputs = _model_inputs(mv, plan.features, columns)
    notes: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    rejected = np.zeros(n, dtype=np.bool_)
    if validator is not None:
        _fixed, report = validator.check(inputs, n)
        if report.rejected:
            rejected = _rejected_rows(report, n)
            _note(report, notes, np.arange(n), only_rejected=True)
            for key, count in report.counts.items():
                if key[2] == "rejected":
                    summary.violations[key] = summary.violations.get(key, 0) + count
        keep = np.flatnonzero(~rejected)
        inputs = {k: v[keep] for k, v in inputs.items()}
        inputs, report = validator.check(inputs, len(keep))
        if report.rejected:  # pragma: no cover - the rows that broke a reject rule were taken out
            raise ConfigError("validation rejected rows it had accepted; report this")
        _note(report, notes, keep, only_rejected=False)
        for key, count in report.counts.items():
            summary.violations[key] = summary.violations.get(key, 0) + count
    keep = np.flatnonzero(~rejected)
    outputs = mv.signature.output_names
    parts, errors = _predict(predictor, mv.ref, inputs, outputs, np.arange(len(keep)))
    failed = np.zeros(n, dtype=np.bool_)
    failed[keep[list(errors)]] = True
    answered = keep[np.concatenate([idx for idx, _ in parts])] if parts else np.empty(0, dtype=np.int64)
    summary.rows += n
    summary.rejected += int(rejected.sum())
    summary.failed += int(failed.sum())
    summary.scored += len(answered)
    arrays = [batch.column(names.index(c)) for c in names if c not in plan.features]
    out_names = [c for c in names if c not in plan.features]
    status = np.where(rejected, "rejected", np.where(failed, "failed", "scored"))
    error: list[str | None] = [None] * n
    for position, message in errors.items():
        error[int(keep[position])] = message
    arrays += [
        pa.array(status.tolist(), type=pa.string()),
        pa.array([json.dumps(row) if row else None for row in notes], type=pa.string()),
        pa.array(error, type=pa.string()),
    ]
    out_names += ["status", "validation", "error"]
    for name in outputs:
        values = np.concatenate([np.asarray(result[name]) for _, result in parts]) if parts else np.empty(0)
        if values.dtype.kind in "iufb" and len(values):
            sums[name] += float(np.asarray(values, dtype=np.float64).reshape(len(answered), -1)[:, -1].sum())
        elif len(values):
            sums[name] = float("nan")
        arrays.append(_spread(values, answered, n))
        out_names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=out_names)


def _predict(predictor: Any, ref: str, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str], rows: np.ndarray[Any, Any]) -> tuple[list[tuple[np.ndarray[Any, Any], Any]], dict[int, str]]:
    """The model on ``rows`` of ``inputs``: the answered parts (rows, outputs) and, for rows
    the model refuses, why. A failing call is split in halves until the rows at fault are
    found (as serving tells a request's own rows from its batch mates'); a model that
    refuses every row of a batch is broken, and that is an error."""
    if len(rows) == 0:
        return [], {}
    try:
        return [(rows, predictor.predict({k: v[rows] for k, v in inputs.items()}, outputs))], {}
    except Exception as exc:  # a user's model can raise anything: the rows at fault are found and reported
        if len(rows) == 1:
            return [], {int(rows[0]): f"{type(exc).__name__}: {str(exc)[:500]}"}
        half = len(rows) // 2
        first, first_errors = _predict(predictor, ref, inputs, outputs, rows[:half])
        second, second_errors = _predict(predictor, ref, inputs, outputs, rows[half:])
        if not first and not second:
            raise ModelError(f"model {ref} raised {type(exc).__name__} on every row of a batch", detail=str(exc)[:2000], error_type=type(exc).__name__) from exc
        return first + second, {**first_errors, **second_errors}


def _model_inputs(mv: ModelVersion, features: Sequence[str], columns: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """The model's inputs from its features, as the data plane builds them for ``/v1``:
    one matrix in feature order, or a column per input."""
    signature = mv.signature
    try:
        if not signature.is_columnar:
            spec = signature.inputs[0]
            width = spec.shape[1] if len(spec.shape) > 1 else -1
            if width not in (-1, len(features)):
                raise ConfigError(f"model {mv.ref} takes {width} columns but has {len(features)} features")
            return {spec.name: np.column_stack([np.asarray(columns[f], dtype=spec.dtype) for f in features])}
        return {spec.name: np.asarray(columns[spec.name], dtype=spec.dtype) for spec in signature.inputs}
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"features of {mv.ref} do not fit its inputs: {exc}") from exc


def _rejected_rows(report: ValidationReport, n: int) -> np.ndarray[Any, Any]:
    rows = np.zeros(n, dtype=np.bool_)
    for violation in report.violations:
        if violation.action == "rejected":
            if violation.row is None:
                rows[:] = True
            else:
                rows[violation.row] = True
    return rows


def _note(report: ValidationReport, notes: list[list[dict[str, Any]]], positions: np.ndarray[Any, Any], *, only_rejected: bool) -> None:
    """Each row's violations, as the client of ``/v1`` would be told them."""
    for violation in report.violations:
        if only_rejected and violation.action != "rejected":
            continue
        targets = positions if violation.row is None else positions[[violation.row]]
        entry = {"feature": violation.feature, "rule": violation.rule, "action": violation.action, "value": violation.value}
        for row in targets.tolist():
            notes[row].append(entry)


def _spread(values: np.ndarray[Any, Any], keep: np.ndarray[Any, Any], n: int) -> Any:
    """Outputs of the kept rows in place among ``n`` rows, null for the others (a matrix
    output as one list per row)."""
    pa = require("pyarrow", extra="features", purpose="batch scoring")
    full: list[Any] = [None] * n
    listed = values.tolist()
    for position, value in zip(keep.tolist(), listed, strict=True):
        full[position] = value
    try:
        return pa.array(full)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StalwartError(f"a model output cannot be written to Parquet ({exc})") from exc

