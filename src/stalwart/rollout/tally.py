"""One arm's running sums over a rollout window, from its prediction records: a :class:`Tally`.

:class:`ArmCounter` counts records as :mod:`stalwart.rollout.evidence` reads them from the
prediction log; a :class:`Tally` is what it leaves: additive (:meth:`Tally.merge`), and
plain JSON (:meth:`Tally.to_dict`), so a controller that restarts resumes from it.

**Which records count** (each record is one request, its ``status`` the HTTP status):

====================  ========  ======  ==================  ===============  ======================
status                requests  errors  violation           latency, scores  why
====================  ========  ======  ==================  ===============  ======================
< 400 (answered)      yes       no      when its validation  yes              the arm answered
                                        reports violations
422 (input refused)   yes       no      yes                  no               the arm's schema (or
                                                                              model) refused it
other 4xx             no        no      no                   no               the client's mistake
                                                                              (``excluded``)
>= 500                yes       yes     as for < 400         no               our machinery failed
====================  ========  ======  ==================  ===============  ======================

A request answered by a lower rung of the ladder (fallback model, last good value, default
features) has ``degraded`` set and counts in ``degraded`` whatever its status. Latency is
taken from answered requests only: a canary that fails fast must not look fast (its
failures are the error rate's business). **Scores** are the model's score per row: the
output ``reading.score`` names (a deployment's ``quality`` declaration), else the first of
``predict_proba``, ``probabilities``, ``probability``, ``score`` present, else the first
output holding numbers; a row's list of two probabilities gives the positive class's (the
second, or ``reading.positive``'s place in ``reading.classes``), a longer list its largest
(the model's confidence). At most :data:`SCORES_PER_RECORD` rows of a record count, so one
batch request cannot outweigh the others.

>>> Tally(requests=3, errors=1).merge(Tally(requests=1)).requests
4
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np

from stalwart.errors import ConfigError
from stalwart.monitoring import scores as drift_scores
from stalwart.monitoring.quality import SCORE_OUTPUTS, OutputReading
from stalwart.rollout.sequential import Moments

__all__ = ["SCORES_PER_RECORD", "ArmCounter", "Tally", "score_divergence"]

SCORES_PER_RECORD: Final = 64

_MIN_SECONDS = 1e-6  # a latency logged as 0 ms (rounded) is a microsecond, so its log is finite
_KLL_K = 200  # ~1.3 % normalised rank error, as the monitoring profiles
_MIN_DIVERGENCE = 20  # scores per arm below which no divergence is reported
_CLIENT_STATUSES = range(400, 500)
_REJECTED = 422


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    """One arm's sums over a window: additive (:meth:`merge`), JSON-ready (:meth:`to_dict`).

    ``requests`` counts what the metrics count (see the module docstring's table);
    ``excluded`` the client errors left out; ``unreadable`` records whose JSON could not be
    read (counted as requests, without validation or scores). ``log_latency`` holds
    ``log(seconds)`` of answered requests, ``slow`` how many of them took longer than
    ``slow_ms`` (None: no threshold, nothing counted). ``scores`` are the model's scores;
    ``latency_sketch`` (milliseconds) and ``score_sketch`` are DataSketches KLL sketches,
    serialised and base64-encoded ("" while empty).
    """

    requests: int = 0
    errors: int = 0
    degraded: int = 0
    violations: int = 0
    excluded: int = 0
    unreadable: int = 0
    log_latency: Moments = Moments()
    slow: int = 0
    slow_ms: float | None = None
    scores: Moments = Moments()
    latency_sketch: str = ""
    score_sketch: str = ""

    def merge(self, other: Tally) -> Tally:
        """Both tallies' observations together. They must share ``slow_ms``: exceedances
        over different thresholds do not add up (ConfigError)."""
        if self.slow_ms != other.slow_ms:
            raise ConfigError(
                f"cannot merge tallies with different slow thresholds ({self.slow_ms} and {other.slow_ms} ms); "
                "a step's threshold is fixed before it starts"
            )
        return Tally(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            degraded=self.degraded + other.degraded,
            violations=self.violations + other.violations,
            excluded=self.excluded + other.excluded,
            unreadable=self.unreadable + other.unreadable,
            log_latency=self.log_latency.merge(other.log_latency),
            slow=self.slow + other.slow,
            slow_ms=self.slow_ms,
            scores=self.scores.merge(other.scores),
            latency_sketch=_merge_sketches(self.latency_sketch, other.latency_sketch),
            score_sketch=_merge_sketches(self.score_sketch, other.score_sketch),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data that :meth:`from_dict` reads back."""
        return dict(msgspec.to_builtins(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tally:
        """A tally from :meth:`to_dict`'s data; ConfigError naming the field when it is not one."""
        try:
            return msgspec.convert(dict(data), cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"a stored tally: {exc}") from exc

    def latency_quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """Latency quantiles in ms from the sketch (exact below about 200 requests, then
        within its rank error of about 1.3 %), or None before any answered request."""
        if not self.latency_sketch:
            return None
        return [float(v) for v in _sketch(self.latency_sketch).get_quantiles(list(qs))]

    def summary(self, primary: Tally | None = None) -> dict[str, Any]:
        """Counts, rates, latency and scores for people and the audit log; with ``primary``
        (for the canary's summary) also how far its scores diverge from the primary's."""
        quantiles = self.latency_quantiles((0.5, 0.99))
        log_mean = self.log_latency.mean
        score_sd = self.scores.variance
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _rate(self.errors, self.requests),
            "degraded": self.degraded,
            "degradation_rate": _rate(self.degraded, self.requests),
            "violations": self.violations,
            "violation_rate": _rate(self.violations, self.requests),
            "excluded": self.excluded,
            "unreadable": self.unreadable,
            "answered": self.log_latency.n,
            "latency_ms": {
                "p50": quantiles[0] if quantiles else None,
                "p99": quantiles[1] if quantiles else None,
                "geometric_mean": math.exp(log_mean) * 1000 if log_mean is not None else None,
            },
            "slow": {"threshold_ms": self.slow_ms, "count": self.slow, "rate": _rate(self.slow, self.log_latency.n)}
            if self.slow_ms is not None
            else None,
            "score": {
                "n": self.scores.n,
                "mean": self.scores.mean,
                "sd": math.sqrt(score_sd) if score_sd is not None else None,
            },
            "divergence": score_divergence(self, primary) if primary is not None else None,
        }


def score_divergence(canary: Tally, primary: Tally) -> dict[str, float] | None:
    """How far the canary's score distribution is from the primary's, from the sketches:
    Jensen-Shannon distance and PSI on the primary's score deciles (the cells of
    :mod:`stalwart.monitoring.drift`), and the Kolmogorov-Smirnov distance (the largest gap
    between the two CDFs). ``rank_error`` bounds each CDF's error (0 while the sketches
    hold every score). None with fewer than 20 scores on either side. An effect size for
    people, not a test: the judge's ``score_shift`` rule decides."""
    if not (canary.score_sketch and primary.score_sketch):
        return None
    ours, theirs = _sketch(canary.score_sketch), _sketch(primary.score_sketch)
    if min(ours.n, theirs.n) < _MIN_DIVERGENCE:
        return None
    edges = np.unique(np.asarray(theirs.get_quantiles([k / 10 for k in range(1, 10)]), dtype=np.float64)).tolist()
    reference = np.asarray(theirs.get_pmf(edges, True), dtype=np.float64)
    current = np.asarray(ours.get_pmf(edges, True), dtype=np.float64)
    points = np.union1d([v for v, _ in ours], [v for v, _ in theirs]).tolist()
    gap = np.abs(np.asarray(ours.get_cdf(points, True))[:-1] - np.asarray(theirs.get_cdf(points, True))[:-1])
    error = sum(float(s.normalized_rank_error(False)) for s in (ours, theirs) if s.is_estimation_mode())
    return {
        "js": drift_scores.js_distance(reference, current),
        "psi": drift_scores.psi(reference, current),
        "ks": float(gap.max()),
        "rank_error": error,
    }


class ArmCounter:
    """Counts one arm's records as they are read; numbers are folded in a chunk at a time
    (:meth:`flush`), so memory is bounded by a chunk, and :meth:`tally` gives the result."""

    def __init__(self, slow_ms: float | None, reading: OutputReading) -> None:
        self.slow_ms = slow_ms
        self.reading = reading
        self.counts = {"requests": 0, "errors": 0, "degraded": 0, "violations": 0, "excluded": 0, "unreadable": 0}
        self.latencies: list[float] = []
        self.scores: list[float] = []
        self.log_latency = Moments()
        self.score_moments = Moments()
        self.slow = 0
        self.latency_sketch: Any = None
        self.score_sketch: Any = None

    def take(self, status: int, degraded: bool, latency_ms: float, text: str) -> None:
        """Count one record: its status, whether it was degraded, its latency and its JSON
        (read for its validation summary and outputs; the module docstring's table)."""
        counts = self.counts
        if status in _CLIENT_STATUSES and status != _REJECTED:
            counts["excluded"] += 1
            return
        counts["requests"] += 1
        if status >= 500:
            counts["errors"] += 1
        if degraded:
            counts["degraded"] += 1
        if status == _REJECTED:
            counts["violations"] += 1
            return
        try:
            record = _logged.decode(text)
        except msgspec.DecodeError:
            counts["unreadable"] += 1
            return
        if record.validation is not None and record.validation.violations > 0:
            counts["violations"] += 1
        if status < 400:
            self.latencies.append(latency_ms)
            if record.outputs:
                self.scores.extend(_record_scores(record.outputs, self.reading))

    def flush(self) -> None:
        """Fold the chunk's numbers into the moments and sketches."""
        if self.latencies:
            ms = np.asarray(self.latencies, dtype=np.float64)
            self.log_latency = self.log_latency.merge(Moments.of(np.log(np.maximum(ms / 1000.0, _MIN_SECONDS))))
            if self.slow_ms is not None:
                self.slow += int(np.count_nonzero(ms > self.slow_ms))
            self.latency_sketch = _update(self.latency_sketch, ms)
            self.latencies = []
        if self.scores:
            values = np.asarray(self.scores, dtype=np.float64)
            self.score_moments = self.score_moments.merge(Moments.of(values))
            self.score_sketch = _update(self.score_sketch, values)
            self.scores = []

    def tally(self) -> Tally:
        """What was counted (after :meth:`flush`), as a :class:`Tally`."""
        return Tally(
            **self.counts,
            log_latency=self.log_latency,
            slow=self.slow,
            slow_ms=self.slow_ms,
            scores=self.score_moments,
            latency_sketch=_encode(self.latency_sketch),
            score_sketch=_encode(self.score_sketch),
        )


# -- reading records ------------------------------------------------------------------


class _Validation(msgspec.Struct):
    violations: int = 0


class _Logged(msgspec.Struct):
    """The parts of a stored record the tallies read (the rest is skipped while decoding)."""

    outputs: dict[str, msgspec.Raw] | None = None
    validation: _Validation | None = None


_logged = msgspec.json.Decoder(_Logged)
_values = msgspec.json.Decoder()


def _record_scores(outputs: Mapping[str, msgspec.Raw], reading: OutputReading) -> list[float]:
    """The record's scores, one per row for its first rows (module docstring)."""
    name = reading.score
    if name is None:
        name = next((candidate for candidate in SCORE_OUTPUTS if candidate in outputs), None)
    if name is not None:
        raw = outputs.get(name)
        return _row_scores(_values.decode(raw), reading) if raw is not None else []
    for raw in outputs.values():
        found = _row_scores(_values.decode(raw), reading)
        if found:
            return found
    return []


def _row_scores(column: Any, reading: OutputReading) -> list[float]:
    if not isinstance(column, list):
        return []  # a summarised tensor (too large to log) has no rows
    positive = 1
    classes = reading.classes
    if classes is not None and len(classes) == 2 and reading.positive is not None and reading.positive in classes:
        positive = classes.index(reading.positive)
    found: list[float] = []
    for value in column[:SCORES_PER_RECORD]:
        if isinstance(value, list):
            numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(numbers) != len(value) or not numbers:
                continue
            value = numbers[positive] if len(numbers) == 2 else max(numbers)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found.append(float(value))
    return found


# -- sketches ----------------------------------------------------------------------------


def _update(sketch: Any, values: np.ndarray[Any, Any]) -> Any:
    if sketch is None:
        import datasketches  # on first use: `import stalwart.rollout` stays light

        sketch = datasketches.kll_doubles_sketch(_KLL_K)
    sketch.update(np.ascontiguousarray(values, dtype=np.float64))
    return sketch


def _encode(sketch: Any) -> str:
    return "" if sketch is None or sketch.is_empty() else base64.b64encode(sketch.serialize()).decode("ascii")


def _sketch(text: str) -> Any:
    import datasketches

    try:
        return datasketches.kll_doubles_sketch.deserialize(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"a stored tally's sketch is not a serialised KLL sketch: {exc}") from exc


def _merge_sketches(left: str, right: str) -> str:
    if not right:
        return left
    if not left:
        return right
    merged = _sketch(left)
    merged.merge(_sketch(right))
    return _encode(merged)


def _rate(events: int, n: int) -> float | None:
    return events / n if n else None

