"""Issue 14: what routing a request costs (sticky canary assignment and shadow sampling).

Run from the repository root::

    PYTHONPATH=src python -m benchmarks.bench_routing [--calls 200000] [--repeats 5]

or as the ``routing`` suite of ``python -m benchmarks`` (no server, no wrk). Each row is the
cost of one request's routing, from the entity key to the decision: ``routing_key`` (the
entity as canonical JSON) and ``Router.route``, over ``--calls`` distinct keys, timed in
batches of 1,000 calls (a single sub-microsecond call is below the clock's resolution).
The figures are the median and the 99th percentile of the batches' per-call means, and
the median per call of the whole run, over ``--repeats`` runs. Target: < 5 us per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from stalwart.rollout.routing import Router, routing_key

BATCH = 1_000
TARGET_US = 5.0


@dataclass(frozen=True)
class Options:
    calls: int = 200_000
    repeats: int = 5


CASES: list[tuple[str, Router]] = [
    ("no canary (weight 0), no shadow", Router("bench", 0.0)),
    ("canary at 25 %", Router("bench", 0.25)),
    ("canary at 25 %, one shadow at 10 %", Router("bench", 0.25, {"shadow": 0.1})),
    ("canary at 25 %, three shadows (10 %, 50 %, 100 %)", Router("bench", 0.25, {"a": 0.1, "b": 0.5, "c": 1.0})),
]


def _batches_us(router: Router, entities: list[dict[str, int]]) -> list[float]:
    """Per-call microseconds of each batch: routing key from the entity, then the route."""
    clock = time.perf_counter_ns
    route = router.route
    out = []
    for start in range(0, len(entities), BATCH):
        chunk = entities[start : start + BATCH]
        began = clock()
        for entity in chunk:
            route(routing_key(entity, None, "request-id"))
        out.append((clock() - began) / 1000.0 / len(chunk))
    return out


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    entities = [{"customer_id": i} for i in range(options.calls)]
    rows = []
    for name, router in CASES:
        _batches_us(router, entities[: 10 * BATCH])  # warm up
        medians, p99s, means = [], [], []
        for _ in range(options.repeats):
            batches = _batches_us(router, entities)
            medians.append(statistics.median(batches))
            p99s.append(float(np.percentile(batches, 99)))
            means.append(statistics.fmean(batches))
        rows.append((name, statistics.median(medians), statistics.median(p99s), statistics.median(means)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Routing cost per request (issue 14)",
        "",
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; {options.calls:,} distinct entity keys, "
        f"batches of {BATCH:,} calls, medians of {options.repeats} runs. Each call: `routing_key(entity)` "
        "(canonical JSON) + `Router.route`.",
        "",
        "| case | median us/call | p99 of batches us/call | mean us/call | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, median, p99, mean in rows:
        verdict = "ok" if p99 < TARGET_US else "OVER"
        lines.append(f"| {name} | {median:.3f} | {p99:.3f} | {mean:.3f} | < {TARGET_US:g} ({verdict}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=Options.calls)
    parser.add_argument("--repeats", type=int, default=Options.repeats)
    args = parser.parse_args()
    print(run(Options(calls=args.calls, repeats=args.repeats)))


if __name__ == "__main__":
    main()
