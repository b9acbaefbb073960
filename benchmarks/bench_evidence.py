"""Issue 14: what one look of a rollout controller costs: reading new records into tallies.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks.bench_evidence [--records 10000] [--history 50000] [--runs 5]

or as the ``evidence`` suite of ``python -m benchmarks``. No server: a SQLite file database
(WAL, as the registry opens it) holds ``--history`` older records of the deployment and
``--records`` new ones, /v1 records as the tap writes them (two entities, ten features,
``predict`` and ``predict_proba`` per row, a validation summary, timings, cache hits), a
tenth of them to the canary, 1 % failed. Medians of ``--runs``:

- **advance**: one :meth:`Evidence.advance` over the new records (a fresh evidence each
  run, its watermark just before them): the indexed range read in chunks, each record's
  JSON decoded for its validation summary and outputs, both arms' moments and sketches;
- **the read alone**: the same range's rows fetched without counting them;
- **observations + judge**, **to_dict + from_dict** of the evidence, one
  :func:`latency_threshold` (the newest 50,000 primary latencies), and one
  :func:`accuracy` with every row of the new records labelled.
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
from sqlalchemy import select

from stalwart.monitoring.feedback import FeedbackItem, store_feedback
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.rollout.evidence import Evidence, accuracy, default_rules, latency_threshold
from stalwart.rollout.judge import Judge
from stalwart.storage import Database
from stalwart.storage.tables import predictions

T0 = 1_700_000_000 * 10**9
MS = 10**6


@dataclass(frozen=True)
class Options:
    records: int = 10_000
    history: int = 50_000
    runs: int = 5


def _records(start: int, n: int, first_ns: int, rng: np.random.Generator) -> list[PredictionRecord]:
    features = [f"f{k}" for k in range(10)]
    out = []
    for i in range(start, start + n):
        p = rng.uniform(size=2).round(6).tolist()
        failed = rng.uniform() < 0.01
        out.append(
            PredictionRecord(
                request_id=f"req-{i:08d}", time_ns=first_ns + (i - start) * MS, entrypoint="/v1",
                status=500 if failed else 200, latency_ms=round(float(rng.lognormal(np.log(12.0), 0.4)), 3),
                trace_id=f"{i:032x}", deployment="fraud", variant="canary" if i % 10 == 0 else "primary",
                model="fraud-gbm", version=3, error="ModelError" if failed else None, rows=2,
                entities=[{"card_id": 2 * i}, {"card_id": 2 * i + 1}],
                features={name: rng.normal(size=2).round(4).tolist() for name in features},
                feature_sets={"card_stats": "0123456789abcdef"}, features_as_of_ns=first_ns,
                outputs=None if failed else {"predict": [int(v >= 0.5) for v in p], "predict_proba": [[1 - v, v] for v in p]},
                validation={"violations": 0}, cache={"card_stats": {"memory": 1, "redis": 1, "source": 0}},
                timings={"features": 1.25, "validate": 0.25, "model": 3.5, "total": 5.0},
            )
        )
    return out


def _populate(db: Database, options: Options) -> int:
    """Writes history then the new records; returns the new records' first time."""
    rng = np.random.default_rng(0)
    sink = SqlSink(db)
    first_new = T0 + options.history * MS
    for start in range(0, options.history, 5_000):
        sink.write(_records(start, min(5_000, options.history - start), T0 + start * MS, rng), None)
    for start in range(0, options.records, 5_000):
        n = min(5_000, options.records - start)
        sink.write(_records(options.history + start, n, first_new + start * MS, rng), None)
    return first_new


def _median_ms(work: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(options: Options) -> str:
    """Run the benchmark; returns the markdown report."""
    with tempfile.TemporaryDirectory() as home:
        db = Database(f"sqlite:///{Path(home) / 'registry.db'}")
        try:
            first_new = _populate(db, options)
            until = first_new + options.records * MS
            last: list[Evidence] = []

            def advance() -> None:
                evidence = Evidence(first_new, slow_ms=30.0)
                progress = evidence.advance(db, "fraud", until)
                if progress.rows != options.records:
                    raise RuntimeError(f"read {progress.rows} records, expected {options.records}")
                last.append(evidence)

            def read_only() -> None:
                p = predictions.c
                with db.read() as conn:
                    rows = conn.execute(
                        select(p.time_ns, p.request_id, p.variant, p.status, p.degraded, p.latency_ms, p.record)
                        .where(p.deployment == "fraud", p.time_ns >= first_new, p.time_ns <= until)
                        .order_by(p.time_ns, p.request_id)
                    ).all()
                if len(rows) != options.records:
                    raise RuntimeError("the read missed records")

            advance_ms = _median_ms(advance, options.runs)
            read_ms = _median_ms(read_only, options.runs)
            evidence = last[-1]
            rules = default_rules()
            judge = Judge(rules)
            judge_ms = _median_ms(lambda: judge.judge(evidence.observations(rules=rules), window=evidence.window()), options.runs)
            state_ms = _median_ms(lambda: Evidence.from_dict(evidence.to_dict()), options.runs)
            threshold_ms = _median_ms(lambda: latency_threshold(db, "fraud", first_new), options.runs)
            size = len(str(evidence.to_dict()))
            labels = [
                FeedbackItem(label=(i + row) % 2, request_id=f"req-{i:08d}", row=row)
                for i in range(options.history, options.history + options.records)
                for row in (0, 1)
            ]
            for start in range(0, len(labels), 5_000):
                store_feedback(db, labels[start : start + 5_000], now_ns=until)
            accuracy_ms = _median_ms(lambda: accuracy(db, "fraud", first_new, until), options.runs)
        finally:
            db.dispose()
    per_record = advance_ms / options.records * 1e3
    lines = [
        "# Rollout evidence: the cost of one look (issue 14)",
        "",
        f"SQLite file database (WAL) with {options.history:,} older records and {options.records:,} new ones "
        "(/v1 records as the tap writes them: 2 rows, 10 features, predict and predict_proba; 10 % canary, "
        f"1 % failed); median of {options.runs} runs.",
        "",
        "| step | cost |",
        "| --- | ---: |",
        f"| `Evidence.advance` over {options.records:,} new records | {advance_ms:.1f} ms ({per_record:.1f} µs per record) |",
        f"| of which the indexed read alone (rows fetched, not counted) | {read_ms:.1f} ms |",
        f"| `observations` + `Judge.judge` (7 rules) | {judge_ms:.2f} ms |",
        f"| `Evidence.to_dict` + `from_dict` ({size:,} characters) | {state_ms:.2f} ms |",
        f"| `latency_threshold` (newest 50,000 primary latencies) | {threshold_ms:.1f} ms |",
        f"| `accuracy` ({2 * options.records:,} labelled rows) | {accuracy_ms:.1f} ms |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_evidence", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(run(Options(records=args.records, history=args.history, runs=args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
