"""Issue 13: what live profiles cost per request, on the event loop and on their worker.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks.bench_live_profiles [--requests 20000] [--runs 5]

or as the ``profiles`` suite of ``python -m benchmarks``. Requests are realistic /v1
outcomes of a deployment serving 20 features (one float matrix, as a matrix-layout model
sees them) and answering ``predict`` and ``predict_proba`` (2 columns): 23 profiled
columns. Three costs, CPU time of the thread doing the work, medians of ``--runs``:

- **event loop**: :class:`ProfileTap` called with the outcome (an answered check and a
  deque append), per request;
- **worker**: the drain (columns read out of each outcome, grouped, concatenated, one
  sketch update per column per group), per request, with the queue holding one drain's
  worth of requests: the worker drains when a thousand are queued or their minute is
  over, checking every ``flush_seconds`` (1 s), so at r requests per second a drain
  holds max(r, 1000) of them (60 r below 1000 a minute);
- **write**: one minute bucket written with its hour and day rollups to SQLite (a
  temporary file, WAL, as the registry runs it), per bucket; amortised over a minute's
  requests at each rate.

Target: event loop + worker + write < 10 µs per request amortised.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stalwart.monitoring.live_profiles import _DRAIN_AT, LiveProfiles
from stalwart.pipeline import Exchange
from stalwart.serving.dataplane import Outcome, Prediction
from stalwart.serving.middleware import RequestInfo
from stalwart.serving.profile_tap import ProfileTap, observation
from stalwart.storage import Database

FEATURES = tuple(f"f{j:02d}" for j in range(20))
RATES = (10, 100, 1_000, 10_000)  # requests per second


@dataclass(frozen=True)
class Options:
    requests: int = 20_000
    runs: int = 5


def make_outcomes(n: int, seed: int = 7) -> list[Outcome]:
    """``n`` answered /v1 requests of one row, all in one minute."""
    rng = np.random.default_rng(seed)
    minute = time.time_ns() // 60_000_000_000 * 60_000_000_000
    out = []
    for i in range(n):
        info = RequestInfo(f"r{i}", arrived_ns=minute + i * 1_000)
        matrix = rng.lognormal(3, 1, (1, len(FEATURES)))
        exchange = Exchange(request_id=info.request_id, inputs={"input-0": matrix}, rows=1, outputs=("predict", "predict_proba"), model="fraud-gbm", version=3)
        p = float(rng.random())
        exchange.results = {"predict": np.array([int(p > 0.5)]), "predict_proba": np.array([[1 - p, p]])}
        prediction = Prediction(info.request_id, "fraud", "primary", ("fraud-gbm", 3), [{"predict": int(p > 0.5)}])
        out.append(Outcome("/v1", info, deployment="fraud", variant="primary", exchange=exchange, prediction=prediction, feature_names=FEATURES))
    return out


def _frozen_clock() -> int:
    return 0  # no minute is ever over: the drain is measured without writes


def bench_tap(outcomes: list[Outcome], runs: int) -> float:
    """CPU µs per request on the event loop."""
    samples = []
    for _ in range(runs):
        live: LiveProfiles[Outcome] = LiveProfiles(Database("sqlite:///:memory:"), extract=observation, max_queue=len(outcomes) + 1)
        tap = ProfileTap(live)
        start = time.thread_time_ns()
        for outcome in outcomes:
            tap(outcome)
        samples.append((time.thread_time_ns() - start) / len(outcomes) / 1000)
        live.database.dispose()
    return statistics.median(samples)


def bench_worker(outcomes: list[Outcome], per_drain: int, runs: int) -> float:
    """CPU µs per request on the worker, draining ``per_drain`` requests at a time."""
    samples = []
    for _ in range(runs):
        live: LiveProfiles[Outcome] = LiveProfiles(Database("sqlite:///:memory:"), extract=observation, clock=_frozen_clock)
        spent = 0
        for at in range(0, len(outcomes), per_drain):
            for outcome in outcomes[at:at + per_drain]:
                live.submit(outcome)
            start = time.thread_time_ns()
            live.flush(final=False)
            spent += time.thread_time_ns() - start
        samples.append(spent / len(outcomes) / 1000)
        live.database.dispose()
    return statistics.median(samples)


def bench_write(outcomes: list[Outcome], runs: int) -> float:
    """CPU ms per minute bucket written (minute row, hour and day rollups merged into
    stored rows), to a SQLite file."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        live: LiveProfiles[Outcome] = LiveProfiles(db, extract=observation, clock=_frozen_clock)
        for _ in range(runs + 1):  # the first run inserts the hour and day rows; later ones merge into them
            for outcome in outcomes[:1000]:
                live.submit(outcome)
            live.flush(final=False)
            start = time.thread_time_ns()
            if not live.flush(final=True):
                raise RuntimeError("the benchmark's SQLite file refused the buckets")
            samples.append((time.thread_time_ns() - start) / 1e6)
        db.dispose()
    return statistics.median(samples[1:])


def run(options: Options) -> str:
    """Run the benchmark; returns the markdown report."""
    outcomes = make_outcomes(options.requests)
    tap_us = bench_tap(outcomes, options.runs)
    write_ms = bench_write(outcomes, options.runs)
    rows = []
    for rate in RATES:
        per_drain = min(max(rate, _DRAIN_AT), rate * 60)
        worker_us = bench_worker(outcomes, per_drain, options.runs)
        write_us = write_ms * 1000 / (rate * 60)
        total = tap_us + worker_us + write_us
        rows.append(f"| {rate:,} | {per_drain:,} | {tap_us:.2f} | {worker_us:.2f} | {write_us:.3f} | **{total:.2f}** |")
    lines = [
        "# Live profiles: cost per request (issue 13)",
        "",
        f"/v1 requests of one row, 20 features + 3 output columns; {options.requests:,} requests, "
        f"median of {options.runs} runs; CPU time of the working thread. Write: {write_ms:.1f} ms per "
        f"minute bucket (minute row + hour and day rollups merged into stored rows, SQLite file).",
        "",
        "| req/s | requests per drain | event loop µs | worker µs | write µs (amortised over a minute) | total µs |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Target: < 10 µs per request amortised.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_live_profiles", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(run(Options(requests=args.requests, runs=args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
