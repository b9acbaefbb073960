"""A shadow's answers paired with the client's, per deployment, shadow and minute.

Each shadowed request yields one pair per row (entity): the answer the client got (the
primary's, or the canary's when the canary answered) and the shadow's answer to the same
row. :class:`PairBuckets` adds them to a :class:`~stalwart.rollout.paired.PairedReport` per
(deployment, shadow, minute of arrival), in O(1) per row, and hands whole buckets to the
writer (:mod:`stalwart.rollout.shadow_store`), which merges them into the stored rows.

**Reading an answer** (:func:`answer_of`) follows the deployment's ``quality`` declaration
(:class:`~stalwart.monitoring.quality.OutputReading`), as the quality reports do:

- the class is the output ``predict`` (``quality.predicted`` names another);
- the score is ``quality.score`` if declared, else the first output present of
  ``predict_proba``, ``probabilities``, ``probability``, ``score``: a number as it is; a pair
  of class probabilities as the positive class's (the second, or ``quality.positive``'s
  place in ``quality.classes``); more classes as no score (the classes are compared);
- a regression (``quality.task="regression"``, or with no score output a ``predict`` that
  is a float and a task not declared a classification) compares ``predict`` as a score, with
  no class.

A side that failed (raised, timed out, was shed) counts as an error for every row of the
request. Only the first row of a request carries the two latencies, so latency quantiles
are per request whatever the number of entities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart.monitoring.quality import SCORE_OUTPUTS, OutputReading
from stalwart.rollout.paired import Answer, PairedReport

__all__ = ["MAX_BUCKETS", "Bucket", "BucketKey", "PairBuckets", "answer_of", "merge_models"]

MAX_BUCKETS = 10_000
"""Open buckets kept in memory (while the database refuses writes); the oldest go beyond."""

BucketKey = tuple[str, str, int]
"""(deployment, shadow, minute start in seconds since the epoch)."""

_ERROR = Answer(error=True)


@dataclass(slots=True)
class Bucket:
    """One deployment's, shadow's and minute's pairs, and which versions made them."""

    report: PairedReport = field(default_factory=PairedReport)
    # Requests per model reference on each side ("fraud:2"): what the report compares.
    models: dict[str, dict[str, int]] = field(default_factory=lambda: {"primary": {}, "shadow": {}})

    def merge(self, other: Bucket) -> None:
        """Add ``other``'s pairs and model counts to this bucket, in place."""
        self.report.merge(other.report)
        merge_models(self.models, other.models)


class PairBuckets:
    """Open buckets of pairs, filled on the event loop and taken whole by the writer."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self._open: dict[BucketKey, Bucket] = {}
        self._max = max_buckets
        self.dropped_pairs = 0  # pairs of buckets dropped by the bound (the database was down)

    def __len__(self) -> int:
        return len(self._open)

    def add(
        self,
        key: BucketKey,
        reading: OutputReading,
        primary: Sequence[Mapping[str, Any]] | None,
        shadow: Sequence[Mapping[str, Any]] | None,
        rows: int,
        latencies: tuple[float, float],
        models: tuple[str | None, str | None],
    ) -> None:
        """Pair one request's ``rows`` answers: ``primary`` and ``shadow`` are each side's
        prediction rows, or None for a side that failed; ``latencies`` (seconds) and
        ``models`` (model references, None when unknown) are the two sides'."""
        bucket = self._open.get(key)
        if bucket is None:
            bucket = self._open[key] = Bucket()
            if len(self._open) > self._max:
                self._drop_oldest()
        report = bucket.report
        for i in range(max(rows, 1)):
            first = i == 0
            report.add(
                _answer(primary, i, reading, latencies[0] if first else None),
                _answer(shadow, i, reading, latencies[1] if first else None),
            )
        for side, ref in zip(("primary", "shadow"), models, strict=True):
            if ref is not None:
                counts = bucket.models[side]
                counts[ref] = counts.get(ref, 0) + 1

    def take(self) -> dict[BucketKey, Bucket]:
        """Every open bucket, which this object no longer touches (the writer's now)."""
        taken, self._open = self._open, {}
        return taken

    def restore(self, buckets: Mapping[BucketKey, Bucket]) -> None:
        """Put back buckets the writer could not write, merged with what arrived since."""
        for key, bucket in buckets.items():
            mine = self._open.get(key)
            if mine is None:
                self._open[key] = bucket
            else:
                mine.merge(bucket)
        while len(self._open) > self._max:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = min(self._open, key=lambda k: k[2])
        self.dropped_pairs += self._open.pop(oldest).report.pairs


def answer_of(row: Mapping[str, Any], reading: OutputReading, latency: float | None = None) -> Answer:
    """One prediction row's class and score, read as the module docstring says."""
    predicted = row.get(reading.predicted)
    if reading.score is not None:
        raw = row.get(reading.score)
    else:
        raw = next((row[name] for name in SCORE_OUTPUTS if row.get(name) is not None), None)
    score = _score(raw, reading)
    regression = reading.task == "regression" or (
        raw is None and reading.task != "classification" and isinstance(predicted, float)
    )
    if regression:
        return Answer(score=_finite(predicted), latency=latency)
    return Answer(label=predicted, score=score, latency=latency)


def merge_models(into: dict[str, dict[str, int]], other: Mapping[str, Mapping[str, int]]) -> None:
    """Add ``other``'s requests per side and model reference to ``into``, in place."""
    for side, counts in other.items():
        mine = into.setdefault(side, {})
        for ref, n in counts.items():
            mine[ref] = mine.get(ref, 0) + int(n)


def _answer(rows: Sequence[Mapping[str, Any]] | None, i: int, reading: OutputReading, latency: float | None) -> Answer:
    if rows is None or i >= len(rows):
        return _ERROR if latency is None else Answer(latency=latency, error=True)
    return answer_of(rows[i], reading, latency)


def _score(value: Any, reading: OutputReading) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _finite(value)
    if isinstance(value, list):
        if len(value) == 2:
            index = _positive(reading)
            return _finite(value[index]) if index < 2 else None
        if reading.classes is not None and reading.positive is not None and reading.positive in reading.classes:
            index = list(reading.classes).index(reading.positive)
            return _finite(value[index]) if index < len(value) else None
    return None


def _positive(reading: OutputReading) -> int:
    """The positive class's column of a pair of probabilities: the second unless declared."""
    if reading.classes is not None and reading.positive is not None and reading.positive in reading.classes:
        return list(reading.classes).index(reading.positive)
    return 1


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
