"""The prediction log's tap on the data plane: every request's outcome becomes a record.

On the event loop, :class:`PredictionTap` only decides whether the request is recorded
(answered requests are sampled at ``STALWART_PREDICTION_LOG_SAMPLE``; every other outcome
always is), reads the clock, and queues the outcome. The record is built on the prediction
log's writer thread by :func:`to_record`: the features as the model saw them (after
transforms, imputation, clipping) with the FeatureSet versions that computed them and the
instant they were as of, the inputs (all of them, a hash, or none), the outputs,
validation, degradation, cache hits and timings; large tensors are summarised; fields
declared sensitive are dropped or replaced by a keyed hash before anything is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry

from stalwart.config import Settings
from stalwart.monitoring.prediction_log import PredictionLog
from stalwart.monitoring.records import PredictionRecord, Redaction, encode_record
from stalwart.monitoring.sinks import open_sink
from stalwart.serving.dataplane import Outcome
from stalwart.serving.errors import status_for
from stalwart.serving.policies import LogPolicy

__all__ = ["MAX_LOGGED_TEXT", "PredictionTap", "Recorded", "feature_matrix", "open_prediction_log", "to_record"]

# A tensor with more values than this is kept as a summary (shape, dtype, min, max, mean).
_MAX_LOGGED_VALUES = 4096

# A record keeps at most this many characters of text (string and bytes values) in all: a
# request at the body limit holding one 8 MiB string made an 8 MiB record, and a few a
# second filled the spool and held up delivery (docs/reliability.md). Past the budget a
# long text is logged as a stand-in: its first characters, its length and a hash.
MAX_LOGGED_TEXT = 64 * 1024
_KEPT_PREFIX = 64


@dataclass(slots=True)
class Recorded:
    """What the writer thread needs to build one record."""

    outcome: Outcome
    status: int
    latency_ms: float


class PredictionTap:
    """A :class:`~stalwart.serving.dataplane.RequestTap` feeding a :class:`PredictionLog`."""

    def __init__(self, log: PredictionLog[Recorded], *, sample: float = 1.0, deployments: Mapping[str, LogPolicy] | None = None) -> None:
        self.log = log
        self._sample = sample
        self._samples = {name: p.sample for name, p in (deployments or {}).items()}

    def __call__(self, outcome: Outcome) -> asyncio.Future[None] | None:
        error = outcome.error
        if error is None:
            status = 200
            sample = self._samples.get(outcome.deployment, self._sample) if outcome.deployment else self._sample
            if sample < 1.0 and random.random() >= sample:  # noqa: S311 - sampling, not security
                return None
        elif isinstance(error, asyncio.CancelledError):
            status = 499  # the client went away
        else:
            status = status_for(error)
        latency_ms = (time.perf_counter() - outcome.info.started) * 1000
        return self.log.submit(Recorded(outcome, status, latency_ms))


def open_prediction_log(
    settings: Settings, registry: CollectorRegistry | None = None, deployments: Mapping[str, LogPolicy] | None = None
) -> PredictionLog[Recorded] | None:
    """The prediction log the settings (and each deployment's ``log`` policy) describe; None
    when ``STALWART_PREDICTION_LOG=off``. Call ``start()`` once the server runs and
    ``close()`` when it stops."""
    sink = open_sink(settings)
    if sink is None:
        return None
    needs_key = settings.prediction_log_redact or any(p.redact for p in (deployments or {}).values())
    key = settings.resolved_prediction_log_key() if needs_key else b""
    default = Redaction(settings.prediction_log_redact, key) if settings.prediction_log_redact else None
    redactions = {
        name: Redaction({**settings.prediction_log_redact, **p.redact}, key)
        for name, p in (deployments or {}).items() if p.redact
    }
    inputs = {name: p.inputs for name, p in (deployments or {}).items() if p.inputs is not None}
    how = settings.prediction_log_inputs

    def convert(item: Recorded) -> PredictionRecord:
        name = item.outcome.deployment
        if name is None:
            return to_record(item, inputs=how, redaction=default)
        return to_record(item, inputs=inputs.get(name, how), redaction=redactions.get(name, default))

    return PredictionLog(
        sink,
        settings.home.resolve() / "spool",
        convert=convert,
        mode=settings.prediction_log_mode,
        flush_ms=settings.prediction_log_flush_ms,
        max_queue=settings.prediction_log_queue,
        retention_days=settings.prediction_log_retention_days,
        registry=registry,
    )


def to_record(
    item: Recorded,
    *,
    inputs: Literal["all", "hash", "none"] = "all",
    redaction: Redaction | None = None,
) -> PredictionRecord:
    """The prediction record of one request (on the writer thread, off the event loop)."""
    outcome = item.outcome
    info = outcome.info
    exchange = outcome.exchange
    texts = _Texts()
    record = PredictionRecord(
        request_id=info.request_id,
        time_ns=info.arrived_ns,
        entrypoint=outcome.entrypoint,
        status=item.status,
        latency_ms=round(item.latency_ms, 3),
        trace_id=info.trace_id or None,
        deployment=outcome.deployment,
        variant=outcome.routed if outcome.routed is not None else outcome.variant,
        model=info.model or None,
        version=int(info.version) if info.version.isdigit() else None,
        error=type(outcome.error).__name__ if outcome.error is not None else None,
    )
    if exchange is not None:
        record.rows = exchange.rows
        timings = dict(exchange.timings.items())
        record.timings = {k: round(v, 3) for k, v in timings.items()} or None
        if exchange.validation is not None:
            record.validation = exchange.validation.summary
    if outcome.entrypoint == "/v2":
        if exchange is not None:
            _inputs(record, {name: _values(array, texts) for name, array in exchange.inputs.items()}, inputs)
        if outcome.inferred is not None:
            record.outputs = {name: _values(array, texts) for name, array in outcome.inferred.outputs.items()}
    else:
        request = outcome.request
        if request is not None:
            record.entities = texts.keep([dict(e) if isinstance(e, Mapping) else {"entity": e} for e in request.entities[:_MAX_LOGGED_VALUES]])
            if request.values is not None:
                _inputs(record, texts.keep(_columns([dict(v) if isinstance(v, Mapping) else {"value": v} for v in request.values[:_MAX_LOGGED_VALUES]])), inputs)
        if exchange is not None:
            record.features = _features(exchange.inputs, outcome.feature_names, texts)
        if outcome.features:
            record.cache = dict(outcome.features.get("cache") or {}) or None
            record.feature_sets = dict(outcome.features.get("feature_sets") or {}) or None
            record.features_as_of_ns = outcome.features.get("as_of_ns")
        prediction = outcome.prediction
        if prediction is not None:
            record.variant = prediction.variant
            record.model, record.version = prediction.model if prediction.model else (record.model, record.version)
            record.outputs = texts.keep(_columns(prediction.predictions))
            if prediction.degraded is not None:
                record.degraded = prediction.degraded.level
                record.degraded_reason = prediction.degraded.reason
    if redaction:
        redaction.apply(record)
    return record


def _inputs(record: PredictionRecord, values: dict[str, Any], how: str) -> None:
    if how == "all":
        record.inputs = values
    elif how == "hash":
        probe = PredictionRecord(request_id="", time_ns=0, entrypoint="", status=0, latency_ms=0, inputs=values)
        record.inputs_hash = hashlib.sha256(encode_record(probe)).hexdigest()


class _Texts:
    """One record's budget of text (:data:`MAX_LOGGED_TEXT` characters)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_LOGGED_TEXT

    def keep(self, value: Any) -> Any:
        """``value`` (lists and dicts walked) with each text kept while the budget lasts."""
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, bytes):
            return self._text(value.decode("utf-8", "replace"))
        if isinstance(value, list):
            return [self.keep(v) for v in value]
        if isinstance(value, dict):
            return {k: self.keep(v) for k, v in value.items()}
        return value

    def _text(self, text: str) -> str:
        size = len(text)
        if size <= _KEPT_PREFIX or size <= self.left:
            self.left -= size
            return text
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        stand_in = f"{text[:_KEPT_PREFIX]}… [{size:,} characters, sha256 {digest}…, cut from the log]"
        self.left -= len(stand_in)
        return stand_in


def _values(array: np.ndarray[Any, Any], texts: _Texts) -> Any:
    """A tensor as JSON-ready values, or a summary when it is large."""
    if array.size <= _MAX_LOGGED_VALUES:
        if array.dtype.kind in "iub" or (array.dtype.kind == "f" and np.isfinite(array).all()):
            return array.tolist()  # nothing in it needs a JSON stand-in
        values = _jsonable(array.tolist())
        return texts.keep(values) if array.dtype.kind in "OUS" else values
    summary: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype), "summarised": True}
    if array.dtype.kind in "iuf":
        with np.errstate(all="ignore"):
            summary.update(min=_jsonable(float(np.nanmin(array))), max=_jsonable(float(np.nanmax(array))), mean=_jsonable(float(np.nanmean(array))))
    return summary


def feature_matrix(inputs: Mapping[str, np.ndarray[Any, Any]], names: tuple[str, ...] | None) -> np.ndarray[Any, Any] | None:
    """The model's one input matrix when its columns are the deployment's features
    ``names`` (a ``/v1`` matrix layout, :attr:`Outcome.feature_names`), else None (the
    inputs are then the features, one per name)."""
    if names is not None and len(inputs) == 1:
        matrix = next(iter(inputs.values()))
        if matrix.ndim == 2 and matrix.shape[1] == len(names):
            return matrix
    return None


def _features(inputs: Mapping[str, np.ndarray[Any, Any]], names: tuple[str, ...] | None, texts: _Texts) -> dict[str, Any]:
    matrix = feature_matrix(inputs, names)
    if matrix is not None and names is not None:
        return {name: _values(matrix[:, i], texts) for i, name in enumerate(names)}
    return {name: _values(array, texts) for name, array in inputs.items()}


def _columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-row answers as columns (``{"predict": [...], "predict_proba": [...]}``)."""
    names = dict.fromkeys(k for row in rows for k in row)
    return {name: [row.get(name) for row in rows] for name in names}


def _jsonable(value: Any) -> Any:
    """NaN and infinities have no JSON form: they are logged as null."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
