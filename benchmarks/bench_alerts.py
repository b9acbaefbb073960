"""Alert false alarms and detection delay (issue 13, "Alerts": measure the false-alarm control).

A synthetic stream of 30 standard-normal features, one window of ``--rows`` rows per
hour, against a reference of 5,000 rows per feature, runs through the real alert engine
(:class:`stalwart.monitoring.alerts.AlertEngine`, state in a temporary SQLite database)
with four rules over every column (``column="*"``, hourly window, ``for_=0``):

- ``ks p<0.05``: the KS test's p-value below 0.05 per column, uncorrected;
- ``ks BH q=0.05``: the same p-values, Benjamini-Hochberg across the 30 columns;
- ``psi>0.1``: PSI (10 bins at the reference's deciles, epsilon 1e-4) above the common 0.1;
- ``psi calibrated``: the same rule with ``calibrate=True`` (bootstrap 0.99 quantile of the
  window's PSI against the reference, 200 draws; 0.1 stays the floor).

Scores come from scipy and numpy directly. Stationary days give **false alarms per day**
(firing episodes: an alert that starts firing, summed over the 30 columns). Then one
feature shifts by +0.5 standard deviation (``--shift``) and the **detection delay** is the
number of hourly windows (and minutes, evaluated at each window's end) until the rule
fires on it. Each figure is the median (false alarms: the mean) over ``--seeds`` streams.

Run: ``PYTHONPATH=src python -m benchmarks.bench_alerts`` (``--quick`` for 2 days, 2 seeds),
or ``python -m benchmarks alerts``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats

FEATURES = 30
REFERENCE_ROWS = 5_000
SHIFTED = "f07"
PSI_EPSILON = 1e-4
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Options:
    days: float = 7.0
    rows: int = 200
    shift: float = 0.5
    seeds: int = 3
    shifted_hours: int = 24


def psi(reference: npt.NDArray[np.float64], window: npt.NDArray[np.float64]) -> float:
    """PSI over 10 bins at the reference's deciles: sum((w - r) * ln(w / r)), each share
    floored at 1e-4 so an empty bin is finite."""
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=10) / reference.size
    w = np.bincount(np.searchsorted(edges, window, side="right"), minlength=10) / window.size
    r, w = np.maximum(r, PSI_EPSILON), np.maximum(w, PSI_EPSILON)
    return float(np.sum((w - r) * np.log(w / r)))


class _Stream:
    """Hourly windows of the synthetic features, scored on request (a MetricSource)."""

    def __init__(self, seed: int, rows: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.columns = [f"f{i:02d}" for i in range(FEATURES)]
        self.reference = {c: self.rng.normal(size=REFERENCE_ROWS) for c in self.columns}
        self.rows = rows
        self.window: dict[str, npt.NDArray[np.float64]] = {}
        self._cache: dict[str, Mapping[str, object]] = {}

    def next_hour(self, shift: float) -> None:
        self.window = {c: self.rng.normal(loc=shift if c == SHIFTED else 0.0, size=self.rows) for c in self.columns}
        self._cache = {}

    def values(self, deployment: str, metric: str, window_seconds: float, now: datetime) -> Mapping[str, object]:
        from stalwart.monitoring.alerts import Observation

        if metric not in self._cache:
            out: dict[str, Observation] = {}
            for c in self.columns:
                if metric == "psi":
                    out[c] = Observation(psi(self.reference[c], self.window[c]), rows=self.rows)
                else:  # "ks" (the statistic) and "ks_p" (its p-value as the value)
                    result = stats.ks_2samp(self.reference[c], self.window[c])
                    value = float(result.pvalue) if metric == "ks_p" else float(result.statistic)
                    out[c] = Observation(value, float(result.pvalue), rows=self.rows)
            self._cache[metric] = out
        return self._cache[metric]


def _rules() -> list[object]:
    from stalwart.project import Alert

    common = {"window": "1h", "for_": 0}
    return [
        Alert("ks-raw", "synthetic", "ks_p", threshold=0.05, op="<", **common),  # type: ignore[arg-type]
        Alert("ks-bh", "synthetic", "ks", threshold=0.05, correction="bh", **common),  # type: ignore[arg-type]
        Alert("psi-fixed", "synthetic", "psi", threshold=0.1, **common),  # type: ignore[arg-type]
        Alert("psi-calibrated", "synthetic", "psi", threshold=0.1, calibrate=True, **common),  # type: ignore[arg-type]
    ]


LABELS = {"ks-raw": "ks p<0.05", "ks-bh": "ks BH q=0.05", "psi-fixed": "psi>0.1", "psi-calibrated": "psi calibrated"}


def _one_stream(seed: int, options: Options, workdir: Path) -> tuple[dict[str, float], dict[str, int | None], float]:
    """False alarms per day and detection delay (windows) per rule, for one stream."""
    from stalwart.monitoring.alert_stats import ReferenceCalibrator
    from stalwart.monitoring.alert_store import AlertStore
    from stalwart.monitoring.alerts import AlertEngine, State
    from stalwart.storage import Database

    stream = _Stream(seed, options.rows)
    calibrator = ReferenceCalibrator(lambda d, c: stream.reference[c], {"psi": psi}, n_boot=200, seed=seed)
    db = Database(f"sqlite:///{workdir / f'alerts-{seed}.db'}")
    engine = AlertEngine(_rules(), stream, AlertStore(db), calibrator=calibrator)  # type: ignore[arg-type]
    hours = round(options.days * 24)
    false_alarms = dict.fromkeys(LABELS, 0)
    delay: dict[str, int | None] = dict.fromkeys(LABELS)
    firing: set[tuple[str, str]] = set()
    cpu = 0.0
    for hour in range(hours + options.shifted_hours):
        shifted = hour >= hours
        stream.next_hour(options.shift if shifted else 0.0)
        started = time.process_time()
        moves = engine.evaluate(T0 + timedelta(hours=hour + 1))
        cpu += time.process_time() - started
        for tr in moves:
            if tr.to_state == State.FIRING:
                firing.add((tr.alert, tr.column))
                if not shifted:
                    false_alarms[tr.alert] += 1
            else:
                firing.discard((tr.alert, tr.column))
        if shifted:
            # Detected: the alert on the shifted column is firing at the window's end (an
            # episode already going on when the shift began counts too).
            for rule in LABELS:
                if delay[rule] is None and (rule, SHIFTED) in firing:
                    delay[rule] = hour - hours + 1
    db.dispose()
    return {k: v / options.days for k, v in false_alarms.items()}, delay, cpu / (hours + options.shifted_hours)


def run(options: Options) -> str:
    from stalwart.monitoring.logs import configure_logging

    configure_logging("console", "warning")  # one line per transition would time the terminal
    per_day: dict[str, list[float]] = {k: [] for k in LABELS}
    delays: dict[str, list[int | None]] = {k: [] for k in LABELS}
    eval_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-alerts-") as tmp:
        for seed in range(options.seeds):
            fa, delay, per_eval = _one_stream(seed, options, Path(tmp))
            eval_seconds.append(per_eval)
            for k in LABELS:
                per_day[k].append(fa[k])
                delays[k].append(delay[k])
    lines = [
        "# Alerts: false alarms and detection delay",
        "",
        f"{FEATURES} N(0, 1) features, hourly windows of {options.rows} rows, reference {REFERENCE_ROWS} rows per feature, "
        f"{options.days:g} stationary days then +{options.shift:g} sd in {SHIFTED} for up to {options.shifted_hours} windows; "
        f"{options.seeds} streams (seeds 0..{options.seeds - 1}). Rules over every column, for_=0.",
        "",
        "| rule | false alarms / day (mean) | per stream | detection delay, windows (median) | = minutes | per stream |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in LABELS.items():
        found = [d for d in delays[key] if d is not None]
        med = statistics.median(found) if found else None
        shown = "never" if med is None else f"{med:g}"
        minutes = "never" if med is None else f"{med * 60:g}"
        missed = len(delays[key]) - len(found)
        streams = ", ".join("-" if d is None else str(d) for d in delays[key])
        lines.append(
            f"| {label} | {statistics.mean(per_day[key]):.2f} | {', '.join(f'{v:.2f}' for v in per_day[key])} | "
            f"{shown}{f' ({missed} missed)' if missed else ''} | {minutes} | {streams} |"
        )
    lines += ["", f"One evaluation of the 4 rules over {FEATURES} columns (scores, state, history): "
              f"{statistics.median(eval_seconds) * 1000:.1f} ms of CPU per window, mean over the run (the first one's "
              "calibration included)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 days, 2 streams")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--rows", type=int, default=200, help="rows per hourly window")
    parser.add_argument("--shift", type=float, default=0.5, help="mean shift of one feature, in sd")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    options = Options(days=2.0, rows=args.rows, shift=args.shift, seeds=2) if args.quick else Options(
        days=args.days, rows=args.rows, shift=args.shift, seeds=args.seeds
    )
    print(run(options))


if __name__ == "__main__":
    main()
