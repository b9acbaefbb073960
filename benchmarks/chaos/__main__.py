"""``python -m benchmarks.chaos`` (``make chaos``): every fault through real servers, then
the degradation curve; prints the tables and writes JSON, Markdown and an HTML page with
the plots to ``benchmarks/results/chaos-<time>.*``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import sys
import time
from typing import Any

from benchmarks.chaos.faults import PENDING, Context, ReplicaKilled, by_name
from benchmarks.chaos.report import curve_table, fault_table, write
from benchmarks.chaos.run import (
    Timing,
    healthy_answers,
    measure_capacity,
    run_curve,
    run_fault,
    say,
)
from benchmarks.chaos.traffic import request_pool
from benchmarks.chaos.world import World, WorldOptions
from benchmarks.harness import wrk_available


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("faults", nargs="*", help="faults to run (default: all); see benchmarks/chaos/faults.py")
    parser.add_argument("--rate", type=float, default=40.0, help="probe requests per second (default 40)")
    parser.add_argument("--during", type=float, default=10.0, help="seconds each fault lasts (default 10)")
    parser.add_argument("--step", type=float, default=10.0, help="seconds of each curve step (default 10)")
    parser.add_argument("--no-curve", action="store_true", help="skip the degradation curve")
    parser.add_argument("--curve-only", action="store_true", help="run only the degradation curve")
    parser.add_argument("--cards", type=int, default=1000, help="cards in the generated data and the request pool")
    args = parser.parse_args(argv)
    if not wrk_available():
        raise SystemExit("the chaos run needs wrk (apt-get install wrk; `make chaos` installs it)")
    faults = [] if args.curve_only else by_name(args.faults)
    timing = Timing(rate=args.rate, during=args.during, step=args.step)
    started = dt.datetime.now(tz=dt.UTC)
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds")}
    t0 = time.monotonic()
    with World(WorldOptions(cards=args.cards)) as world:
        say(f"world ready in {time.monotonic() - t0:.0f} s (data, models, PostgreSQL, Redis); healthy answers from a reference server")
        pool = request_pool(world.frame, cards=args.cards)
        healthy = healthy_answers(world, pool)
        server = world.start_server()
        capacity = measure_capacity(server.url, pool, world.root)
        say(f"capacity: {capacity:,.0f} answers/s at 32 connections")
        ctx = Context(world, server.url, capacity, pool, world.root)
        document["conditions"] = _conditions(timing, capacity, healthy, args.cards)
        rows = []
        offset = 0
        for fault in faults:
            say(f"fault: {fault.name} ({fault.what})")
            if isinstance(fault, ReplicaKilled):
                world.stop_server()  # three replicas and nginx of their own take its place
                with fault.cluster(ctx) as cluster_ctx:
                    result, offset = run_fault(cluster_ctx, fault, healthy, timing, offset)
                ctx.url = world.start_server().url
            else:
                result, offset = run_fault(ctx, fault, healthy, timing, offset)
            rows.append(result.as_dict())
            say(f"  yield {result.yield_:.1%}, harvest {result.harvest:.1%}, p99 {result.p99_ms:,.0f} ms, lost {result.records_lost} (late {result.records_late}), recovered in {result.recovery_s}")
            if world.server is None or world.server.process.poll() is not None:
                say("  the server died: restarting it for the next fault")
                world.server = None
                ctx.url = world.start_server().url
        if faults:
            document["faults"] = rows
            document["pending"] = PENDING
        if not args.no_curve:
            world.stop_server()  # a fresh server: no breaker or cache state from the faults
            ctx.url = world.start_server().url
            document["curve"] = run_curve(ctx, healthy, timing, offset)
    json_path, md_path, html_path = write(document)
    if faults:
        print("\nFaults, one at a time\n\n" + fault_table(document["faults"]))
        if PENDING:
            print("\nNot run: " + "; ".join(f"{k}: {v}" for k, v in PENDING.items()))
    if "curve" in document:
        print("\nDegradation curve\n\n" + curve_table(document["curve"]["steps"]))
        print(f"\nRecords lost over the curve: {document['curve']['records_lost']} (late: {document['curve']['records_late']})")
    print(f"\nwritten: {json_path}, {md_path}, {html_path}")
    return 0


def _conditions(timing: Timing, capacity: float, healthy: list[Any], cards: int) -> list[str]:
    flagged = sum(a.predict for a in healthy) / len(healthy)
    load = os.getloadavg()
    return [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at start {load[0]:.1f} (shared with other work)",
        "stalwart serve (uvicorn, one worker) on examples' fraud features with benchmarks/chaos/project.py: "
        "fallback fraud-lite:1, last_good 10m, default {predict: 0}; model guard 300 ms, source guard 200 ms, breakers open 2 s",
        "private PostgreSQL (registry, transactions, prediction log), private Redis (cache tier 2), spool on a 64 MiB tmpfs",
        f"probe: open loop at {timing.rate:g} requests/s over a pool of {2 * cards} requests "
        f"({flagged:.1%} flagged fraud by the healthy model); {timing.before:g} s before each fault, "
        f"{timing.during:g} s of fault, then until 2 s of healthy answers (at most {timing.after:g} s)",
        f"capacity {capacity:,.0f} answers/s (wrk, 32 connections, closed loop): the overload faults' unit",
        "harvest: share of answers whose decision is the healthy reference server's for the same request",
        "records lost: probe requests answered 200 whose record is not in PostgreSQL 2 min after the fault (late: not after 30 s)",
    ]


if __name__ == "__main__":
    # SIGTERM ends the run like Ctrl-C: the world's servers stopped, its tmpfs unmounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
