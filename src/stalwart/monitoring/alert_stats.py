"""False-alarm control for alert rules: Benjamini-Hochberg across columns, and thresholds
calibrated on the reference by bootstrap.

Why both. With 30 features checked every hour at a 5 % level, about 36 columns a day cross
the line by chance. A fixed score threshold has the same problem from another side: a
score such as PSI grows as the window shrinks (fewer rows, noisier bins), so a threshold
right for 10,000 rows fires all day on 200.

- :func:`benjamini_hochberg` keeps the expected share of false discoveries among the columns
  that fire at or below ``q`` (step-up procedure, Benjamini and Hochberg 1995): with ``m``
  p-values sorted ascending, fire the ``k`` smallest, ``k`` the largest rank with
  ``p_(k) <= k / m * q``.
- :func:`calibrate_threshold` asks the reference itself how large the score gets when
  nothing has changed: it draws ``n_boot`` windows of the serving window's size from the
  reference (with replacement), scores each against the whole reference, and returns the
  ``quantile`` of those scores. A threshold at the 0.99 quantile fires by chance on about
  1 % of windows per column.

>>> sorted(benjamini_hochberg({"a": 0.001, "b": 0.02, "c": 0.04, "d": 0.5}, q=0.05))
['a', 'b']
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from stalwart.errors import ConfigError

if TYPE_CHECKING:
    from stalwart.monitoring.alerts import Observation
    from stalwart.project.alerts import Alert

__all__ = [
    "MAX_BOOTSTRAP",
    "MAX_REFERENCE_ROWS",
    "MAX_WINDOW_ROWS",
    "ReferenceCalibrator",
    "ScoreFn",
    "benjamini_hochberg",
    "calibrate_threshold",
]

ScoreFn = Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], float]
"""``score(reference, window) -> float``: a drift score of a window against a reference."""

# The bounds of one calibration's cost, whatever a rule or a reference asks for:
# MAX_BOOTSTRAP scores, each over at most MAX_REFERENCE_ROWS + MAX_WINDOW_ROWS values.
MAX_BOOTSTRAP = 2_000
MAX_REFERENCE_ROWS = 100_000
MAX_WINDOW_ROWS = 100_000


def benjamini_hochberg(p_values: Mapping[str, float], q: float) -> set[str]:
    """The keys whose p-values Benjamini-Hochberg rejects at false discovery rate ``q``.

    A NaN p-value counts as 1 (no evidence); ``m`` is the number of p-values given."""
    if not 0 < q < 1:
        raise ConfigError(f"the false discovery rate q={q!r} must be in (0, 1)")
    m = len(p_values)
    if m == 0:
        return set()
    ranked = sorted(p_values.items(), key=lambda kv: (1.0 if math.isnan(kv[1]) else kv[1], kv[0]))
    cut = 0
    for rank, (_, p) in enumerate(ranked, start=1):
        if not math.isnan(p) and p <= rank / m * q:
            cut = rank  # step-up: the largest rank that passes, all smaller ones go with it
    return {key for key, _ in ranked[:cut]}


def calibrate_threshold(
    reference: npt.ArrayLike,
    score_fn: ScoreFn,
    window_size: int,
    quantile: float = 0.99,
    n_boot: int = 200,
    seed: int | None = None,
) -> float:
    """The ``quantile`` of ``score_fn(reference, window)`` over ``n_boot`` windows of
    ``window_size`` rows drawn with replacement from ``reference``: the score a window of
    that size reaches by chance when serving data is distributed as the reference.

    Cost is bounded: ``n_boot`` at most :data:`MAX_BOOTSTRAP`, the reference subsampled to
    :data:`MAX_REFERENCE_ROWS` and windows capped at :data:`MAX_WINDOW_ROWS` (beyond that
    the chance score barely moves). NaN values in the reference are left out."""
    if not 0 < quantile < 1:
        raise ConfigError(f"calibration quantile {quantile!r} must be in (0, 1)")
    if n_boot < 1:
        raise ConfigError(f"calibration n_boot={n_boot!r} must be at least 1")
    if window_size < 1:
        raise ConfigError(f"calibration window_size={window_size!r} must be at least 1 row")
    values = np.asarray(reference, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ConfigError("cannot calibrate a threshold on an empty reference; register the model with training data")
    rng = np.random.default_rng(seed)
    if values.size > MAX_REFERENCE_ROWS:
        values = rng.choice(values, size=MAX_REFERENCE_ROWS, replace=False)
    size = min(int(window_size), MAX_WINDOW_ROWS)
    boots = min(int(n_boot), MAX_BOOTSTRAP)
    scores = np.empty(boots)
    for i in range(boots):
        window = values[rng.integers(0, values.size, size=size)]
        scores[i] = score_fn(values, window)
    return float(np.quantile(scores, quantile))


class ReferenceCalibrator:
    """Calibrated thresholds for the engine (:class:`~stalwart.monitoring.alerts.Calibrator`),
    computed once per (rule, column, window size) and kept.

    ``reference(deployment, column)`` gives the reference values of a column (None when
    there are none: the declared threshold then applies); ``scores`` maps a rule's metric to
    its score function. Window sizes are rounded down to a power of two, so a window that
    grows by a few rows does not cost a new calibration, and the smaller size gives the
    larger, safer threshold. An observation without ``rows`` uses ``default_window_rows``.
    """

    def __init__(
        self,
        reference: Callable[[str, str], npt.ArrayLike | None],
        scores: Mapping[str, ScoreFn],
        *,
        default_window_rows: int = 1_000,
        quantile: float = 0.99,
        n_boot: int = 200,
        seed: int | None = 0,
    ) -> None:
        self._reference = reference
        self._scores = dict(scores)
        self._default_rows = default_window_rows
        self._quantile = quantile
        self._n_boot = n_boot
        self._seed = seed
        self._known: dict[tuple[str, str, int], float | None] = {}
        self._lock = threading.Lock()

    def threshold(self, alert: Alert, column: str, observation: Observation) -> float | None:
        """The calibrated threshold of ``alert`` on ``column``, or None when the metric has
        no score function here or the column no reference."""
        score = self._scores.get(alert.metric)
        if score is None:
            return None
        rows = observation.rows if observation.rows is not None and observation.rows > 0 else self._default_rows
        bucket = 1 << (min(int(rows), MAX_WINDOW_ROWS).bit_length() - 1)
        key = (alert.name, column, bucket)
        with self._lock:
            if key in self._known:
                return self._known[key]
        reference = self._reference(alert.deployment, column)
        found: float | None = None
        if reference is not None:
            tail = self._quantile if alert.fires_above else 1 - self._quantile
            found = calibrate_threshold(reference, score, bucket, tail, self._n_boot, self._seed)
        with self._lock:
            self._known[key] = found
        return found
