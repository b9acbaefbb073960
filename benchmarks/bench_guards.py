"""Cost of the guards per call, beside an unguarded call of the same trivial function.

Run from the repository root::

    PYTHONPATH=src python -m benchmarks.bench_guards [--calls 20000] [--runs 7] [--uvloop]

Each run times every variant once, in turn, on the same event loop (so they share the
machine's noise); the table shows the median over the runs of the time per call and the
overhead over the unguarded call. The function is an ``async def`` that returns at once,
so what is measured is the guard's own cost, not a model's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import numpy as np

from stalwart.pipeline import Exchange
from stalwart.resilience import (
    BreakerConfig,
    BulkheadConfig,
    CircuitBreaker,
    Guard,
    GuardConfig,
    GuardStage,
    TimeoutConfig,
)

Loop = Callable[[int], Awaitable[None]]


async def model(x: int) -> int:
    return x


def variants() -> dict[str, Loop]:
    breaker = CircuitBreaker("bench", BreakerConfig())
    breaker_bulkhead = Guard("bench", GuardConfig(timeout=None))
    full = Guard("bench", GuardConfig())
    full_deadline = Guard("bench", GuardConfig())
    bulkhead_only = Guard("bench", GuardConfig(breaker=None, timeout=None, bulkhead=BulkheadConfig()))
    timeout_only = Guard("bench", GuardConfig(breaker=None, bulkhead=None, timeout=TimeoutConfig()))

    async def model_stage(exchange: Exchange) -> None:
        exchange.results = exchange.inputs

    stage = GuardStage(Guard("bench", GuardConfig(timeout=None)), model_stage)
    timed_stage = GuardStage(Guard("bench", GuardConfig()), model_stage)
    exchange = Exchange("r1", {"x": np.zeros(3)}, 1, ("y",), deadline=None)

    async def unguarded(n: int) -> None:
        for i in range(n):
            await model(i)

    async def breaker_permit(n: int) -> None:
        for i in range(n):
            permit = breaker.acquire()
            await model(i)
            permit.on_success()

    async def breaker_call(n: int) -> None:
        for i in range(n):
            await breaker.call(model, i)

    async def bulkhead_guard(n: int) -> None:
        for i in range(n):
            await bulkhead_only.call(model, i)

    async def breaker_and_bulkhead(n: int) -> None:
        for i in range(n):
            await breaker_bulkhead.call(model, i)

    async def timeout_guard(n: int) -> None:
        for i in range(n):
            await timeout_only.call(model, i)

    async def full_guard(n: int) -> None:
        for i in range(n):
            await full.call(model, i)

    async def full_guard_deadline(n: int) -> None:
        for i in range(n):
            await full_deadline.call(model, i, deadline=time.monotonic() + 0.5)

    async def unguarded_stage(n: int) -> None:
        for _ in range(n):
            await model_stage(exchange)

    async def guard_stage(n: int) -> None:
        for _ in range(n):
            await stage(exchange)

    async def timed_guard_stage(n: int) -> None:
        for _ in range(n):
            await timed_stage(exchange)

    return {
        "unguarded await": unguarded,
        "breaker (acquire/on_success)": breaker_permit,
        "breaker.call": breaker_call,
        "guard: bulkhead only": bulkhead_guard,
        "guard: breaker + bulkhead": breaker_and_bulkhead,
        "guard: timeout only": timeout_guard,
        "guard: breaker + bulkhead + timeout": full_guard,
        "  same, with a request deadline": full_guard_deadline,
        "unguarded pipeline stage": unguarded_stage,
        "GuardStage: breaker + bulkhead": guard_stage,
        "GuardStage: + timeout (isolated copy)": timed_guard_stage,
    }


async def measure(calls: int, runs: int) -> dict[str, list[float]]:
    loops = variants()
    for run in loops.values():  # warm up
        await run(calls // 10)
    per_call: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(runs):
        for name, run in loops.items():
            start = time.perf_counter()
            await run(calls)
            per_call[name].append((time.perf_counter() - start) / calls)
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per variant per run")
    parser.add_argument("--runs", type=int, default=7, help="runs; the median is reported")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as uvicorn[standard] does)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    results = asyncio.run(measure(args.calls, args.runs))
    medians = {name: statistics.median(samples) for name, samples in results.items()}
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(f"{args.calls} calls x {args.runs} runs on {loop_name}; medians per call")
    print(f"{'variant':38} {'per call':>10} {'overhead':>10} {'spread':>8}")
    for name, samples in results.items():
        median = medians[name]
        spread = (max(samples) - min(samples)) / median * 100
        # Guarded calls are compared with the unguarded call, stages with the bare stage.
        base = "unguarded pipeline stage" if name.startswith("GuardStage") else "unguarded await"
        overhead = "" if name.startswith("unguarded") else f"{(median - medians[base]) * 1e6:8.2f} us"
        print(f"{name:38} {median * 1e6:7.2f} us {overhead:>10} {spread:6.0f} %")
    print("spread = (max - min) / median over the runs; overhead = median minus its baseline")


if __name__ == "__main__":
    main()
