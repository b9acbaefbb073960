"""Issue 14: what shadowing costs the event loop, and what pairing the answers costs.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks.bench_shadow [--requests 50000] [--runs 5]

or as the ``shadow`` suite of ``python -m benchmarks``. No server, no wrk: the costs are
measured in-process, on uvloop (as uvicorn[standard] runs) and on asyncio's default loop,
medians of ``--runs``:

- **submit, accepted**: :meth:`ShadowRunner.submit` as the request path calls it, in bursts
  of 8 (c=8, 8 workers), each burst's shadow calls finished before the next; time inside
  ``submit`` only;
- **submit, dropped**: the same with the queue full (a shadow that hangs): a length check
  and a counter;
- **shadow call on the loop**: everything the loop does per shadowed request for a shadow
  that answers at once (submit, waking a worker, the call's task, the time limit, the
  callback): wall time of the whole run divided by the requests. This work is off the
  critical path (no response waits for it) but shares the loop with the primary;
- **pairing**: :meth:`PairedReport.add` for a pair with a class, a score and a latency on
  each side; and merging two reports of 100,000 pairs, and ``to_dict``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from stalwart.rollout.paired import Answer, PairedReport
from stalwart.rollout.shadow_runner import ShadowMetrics, ShadowRunner

BURST = 8  # requests per loop iteration, as at concurrency 8


@dataclass(frozen=True)
class Options:
    requests: int = 50_000
    runs: int = 5


async def _submit_accepted(requests: int) -> tuple[float, float]:
    """(µs inside submit, µs of loop time per shadowed request) for a shadow answering at once."""

    async def call(item: int) -> int:
        return item

    answered = 0

    def on_result(item: int, outcome: object, latency: float) -> None:
        nonlocal answered
        answered += 1

    runner = ShadowRunner(
        "bench", call, on_result, metrics=ShadowMetrics(CollectorRegistry()), workers=BURST, queue_size=4096,
        time_limit=1.0,
    )
    runner.start()
    inside = 0.0
    start = time.perf_counter()
    for base in range(0, requests, BURST):
        t0 = time.perf_counter()
        for i in range(base, base + BURST):
            if not runner.submit(i):
                raise RuntimeError("a submit was dropped: the measurement would not be of accepted ones")
        inside += time.perf_counter() - t0
        while answered < base + BURST:  # the burst's shadow calls done before the next burst
            await asyncio.sleep(0)
    total = time.perf_counter() - start
    await runner.close(1.0)
    return inside / requests * 1e6, total / requests * 1e6


async def _submit_dropped(requests: int) -> float:
    never = asyncio.Event()

    async def call(item: int) -> int:
        await never.wait()
        return item

    runner: ShadowRunner[int, int] = ShadowRunner(
        "bench", call, lambda *_: None, metrics=ShadowMetrics(CollectorRegistry()), workers=2, queue_size=64
    )
    runner.start()
    for i in range(200):
        runner.submit(i)
    start = time.perf_counter()
    for i in range(requests):
        runner.submit(i)
    elapsed = time.perf_counter() - start
    await runner.close(0.0)
    never.set()
    return elapsed / requests * 1e6


def _on_loop(factory: Callable[[], Any], coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    loop = factory()
    try:
        return loop.run_until_complete(coro())
    finally:
        loop.close()


def _pairing(requests: int) -> tuple[float, float, float]:
    """(µs per add, ms per merge of two 100k-pair reports, ms per to_dict)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, requests)).tolist()
    scores = rng.random((2, requests)).tolist()
    latencies = rng.lognormal(-5, 0.5, (2, requests)).tolist()
    pairs = [
        (Answer(labels[0][i], scores[0][i], latencies[0][i]), Answer(labels[1][i], scores[1][i], latencies[1][i]))
        for i in range(requests)
    ]
    report = PairedReport()
    start = time.perf_counter()
    for primary, shadow in pairs:
        report.add(primary, shadow)
    add_us = (time.perf_counter() - start) / requests * 1e6
    big = [PairedReport() for _ in range(2)]
    for r in big:
        for _ in range(max(1, 100_000 // requests)):
            for primary, shadow in pairs:
                r.add(primary, shadow)
    start = time.perf_counter()
    big[0].merge(big[1])
    merge_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    big[0].to_dict()
    dict_ms = (time.perf_counter() - start) * 1e3
    return add_us, merge_ms, dict_ms


def run(options: Options) -> str:
    """Run the benchmark; returns the markdown report."""
    import uvloop

    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop,
    }
    rows = []
    for name, factory in loops.items():
        accepted = [_on_loop(factory, lambda: _submit_accepted(options.requests)) for _ in range(options.runs)]
        dropped = [_on_loop(factory, lambda: _submit_dropped(options.requests)) for _ in range(options.runs)]
        rows.append(
            f"| {name} | {statistics.median(a for a, _ in accepted):.2f} | {statistics.median(dropped):.2f} "
            f"| {statistics.median(t for _, t in accepted):.1f} |"
        )
    pairing = [_pairing(options.requests) for _ in range(options.runs)]
    add_us, merge_ms, dict_ms = (statistics.median(p[i] for p in pairing) for i in range(3))
    lines = [
        "# Shadow calls and paired comparison: cost (issue 14)",
        "",
        f"{options.requests:,} requests per run, median of {options.runs} runs, in bursts of {BURST} "
        "(c=8), each burst's shadow calls done before the next; 8 workers, a shadow answering at once.",
        "",
        "| loop | submit, accepted (µs) | submit, dropped: queue full (µs) | loop time per shadowed request (µs) |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        "The first two columns are what the request path pays; the third is all the work the loop "
        "does per shadow call (off the critical path, but on the same loop as the primary).",
        "",
        "| pairing | cost |",
        "| --- | ---: |",
        f"| `PairedReport.add` (class, score, latency on each side) | {add_us:.2f} µs per pair |",
        f"| merge two reports of 100,000 pairs | {merge_ms:.2f} ms |",
        f"| `to_dict` (summary with tests, state with sketches) | {dict_ms:.2f} ms |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(run(Options(requests=args.requests, runs=args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
