"""Issue 13: what drift scoring costs, from sketches and from raw values.

Run from the repository root::

    PYTHONPATH=src python -m benchmarks.bench_drift [--rows 1000000] [--features 30] [--repeats 3]

or as the ``drift`` suite of ``python -m benchmarks``. Two measurements, medians over
``--repeats`` runs (inputs built once, outside the timing):

- **sketch**: every method that applies (psi, js, ks, wasserstein, hellinger, chi2, linf,
  z) for ``--features`` numeric features x 24 hourly profiles (10,000 rows each, so the
  quantile sketches are compacting) against a training profile. Target: < 1 s.
- **exact**: the default method per column (Wasserstein on these sizes) on ``--rows``
  current rows x ``--features`` features against a reference of as many rows: once
  from raw columns (both sides sorted) and once against a reference prepared once
  (``prepare_reference``; only the window is sorted), as a monitor comparing many
  windows to one training set runs. Target: < 2 s. Plus all methods per column
  against the prepared reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stalwart.monitoring.drift import column_drifts, dataset_drift, prepare_reference
from stalwart.monitoring.profiles import Profile

HOURS = 24
ROWS_PER_HOUR = 10_000


@dataclass(frozen=True)
class Options:
    rows: int = 1_000_000
    features: int = 30
    repeats: int = 3


Timing = tuple[float, float]  # wall seconds, CPU seconds of this process (all threads)


def _median_seconds(fn: Callable[[], object], repeats: int) -> Timing:
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _columns(rng: np.random.Generator, rows: int, features: int, shift: float) -> dict[str, np.ndarray]:
    return {f"f{i:02d}": rng.normal(shift * (i % 3), 1.0 + 0.1 * (i % 5), rows) for i in range(features)}


def bench_sketch(options: Options, rng: np.random.Generator) -> tuple[Timing, int]:
    """Seconds to score every method on features x 24 hourly profiles, and the scores made."""
    training = Profile.of(_columns(rng, 100_000, options.features, 0.0))
    hours = [Profile.of(_columns(rng, ROWS_PER_HOUR, options.features, 0.05 * h)) for h in range(HOURS)]

    def run() -> int:
        reference = prepare_reference(training)
        made = 0
        for hour in hours:
            for name, side in reference.items():
                made += len(column_drifts(side, hour[name], column=name))
        return made

    made = run()
    return _median_seconds(run, options.repeats), made


def bench_exact(options: Options, rng: np.random.Generator) -> dict[str, Timing]:
    """Seconds for exact drift on rows x features: raw, prepared reference, all methods."""
    reference = _columns(rng, options.rows, options.features, 0.0)
    current = _columns(rng, options.rows, options.features, 0.1)
    prepared = prepare_reference(reference)
    return {
        "default method, raw reference and window": _median_seconds(
            lambda: dataset_drift(reference, current), options.repeats
        ),
        "default method, prepared reference": _median_seconds(
            lambda: dataset_drift(prepared, current), options.repeats
        ),
        "reference prepared (once per training set)": _median_seconds(
            lambda: prepare_reference(reference), options.repeats
        ),
        "all 8 methods per column, prepared reference": _median_seconds(
            lambda: [column_drifts(prepared[n], current[n], column=n) for n in prepared], options.repeats
        ),
    }


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    rng = np.random.default_rng(0)
    (sketch_wall, sketch_cpu), made = bench_sketch(options, rng)
    exact = bench_exact(options, rng)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Drift scoring (issue 13)",
        "",
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; medians of {options.repeats} runs. "
        "CPU is this process's CPU time (all threads): on a shared machine it is the steadier figure.",
        "",
        "| measurement | wall s | CPU s | target |",
        "| --- | --- | --- | --- |",
        f"| sketch: all methods, {options.features} features x {HOURS} hourly profiles ({made} scores) "
        f"| {sketch_wall:.3f} | {sketch_cpu:.3f} | < 1 |",
    ]
    for name, (wall, cpu) in exact.items():
        target = "< 2" if name.startswith("default") else ""
        lines.append(
            f"| exact, {options.rows:,} rows x {options.features} features: {name} | {wall:.3f} | {cpu:.3f} | {target} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=Options.rows)
    parser.add_argument("--features", type=int, default=Options.features)
    parser.add_argument("--repeats", type=int, default=Options.repeats)
    args = parser.parse_args()
    print(run(Options(rows=args.rows, features=args.features, repeats=args.repeats)))


if __name__ == "__main__":
    main()
