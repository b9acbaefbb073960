"""Load shedding at twice a deployment's capacity, end to end through ``stalwart serve``.

The model is a python-flavor ``benchmarks.models.Sleepy`` holding the process's one
"device" for ``--service-ms`` per call, so the deployment's capacity is known (1 / service
time, whatever the worker count) and the CPU is not the bottleneck; batching is off. Every
deployment has the same model guard with no breaker and a 60 s timeout, so only the
shedding policy differs:

- ``off``: shedding off (max_in_flight 1 000 000, no queue-wait budget);
- ``default``: ``ShedderConfig()`` (256 in flight, 0.5 s queue-wait budget);
- ``in-flight 4`` and ``in-flight 2``: at most that many requests in flight;
- ``queue 50ms``: a 50 ms queue-wait budget alone.

Steps: the unloaded latency (one request at a time), the capacity (closed loop, 8
clients), then an open-loop generator (asyncio + one httpx.AsyncClient with keep-alive,
requests at a fixed arrival rate of 2x capacity, latency from each request's scheduled
time) against each policy in turn, ``--runs`` rounds, medians reported. Each overload run
lasts ``--seconds``, and requests unanswered ``--drain`` seconds later are abandoned.

Run from a worktree (loopback only)::

    PYTHONPATH=src python -m benchmarks.bench_shedding [--runs 3] [--seconds 6] [--service-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pandas as pd

from benchmarks.load import Outcome, closed_loop, open_loop, percentile
from benchmarks.models import Sleepy
from benchmarks.servers import serve
from stalwart.config import Settings
from stalwart.registry import Registry

GUARD = {"breaker": None, "bulkhead": None, "timeout": {"timeout_duration": "60s"}}
POLICIES: dict[str, dict[str, Any] | None] = {
    "off": {"max_in_flight": 1_000_000, "max_queue_wait": None},
    "default": None,
    "in-flight 4": {"max_in_flight": 4, "max_queue_wait": None, "priority_shares": {"normal": 1.0}},
    "in-flight 2": {"max_in_flight": 2, "max_queue_wait": None, "priority_shares": {"normal": 1.0}},
    "queue 50ms": {"max_in_flight": None, "max_queue_wait": "50ms", "priority_shares": {"normal": 1.0}},
}
PROJECT = """
from stalwart import Deployment, RequestSource

req = RequestSource("req", fields={{"x": "float"}})
{deployments}
"""


def _slug(policy: str) -> str:
    return "shed-" + "".join(c if c.isalnum() else "-" for c in policy).strip("-")


def write_project(path: Path) -> None:
    lines = []
    for policy, shedding in POLICIES.items():
        extra = f", shedding={shedding!r}" if shedding is not None else ""
        lines.append(f"Deployment({_slug(policy)!r}, model='sleepy', features=[req.x], guard={GUARD!r}{extra})")
    path.write_text(PROJECT.format(deployments="\n".join(f"d{i} = {line}" for i, line in enumerate(lines))))


def body(i: int) -> bytes:
    return msgspec.json.encode({"entities": [{"id": i}], "values": [{"x": 1.0}]})


async def wait_idle(url: str, deployment: str, timeout: float = 60.0) -> None:
    """Until the deployment has nothing in flight (the previous run has drained)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            health = (await client.get(f"/v1/deployments/{deployment}/health")).json()
            if health["shedding"]["in_flight"] == 0:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"deployment {deployment} still busy after {timeout} s")


def summarize(outcomes: list[Outcome], seconds: float, slo: float) -> dict[str, float]:
    ok = [o for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    first = min(o.due for o in outcomes)
    last = max(o.due + o.latency for o in ok) if ok else first + seconds
    latencies = [o.latency for o in ok]
    span = max(last - first, seconds)  # until the last answer: a queue drains after the arrivals
    return {
        "offered": len(outcomes) / seconds,
        "goodput": len(ok) / span,
        "in_slo": sum(1 for o in ok if o.latency <= slo) / span,
        "shed": len(shed) / len(outcomes),
        "failed": sum(1 for o in outcomes if o.status not in (200, 503)) / len(outcomes),
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "lag_p99": percentile([o.lag for o in outcomes], 99) * 1000,
    }


async def bench(url: str, args: argparse.Namespace) -> None:
    path = "/v1/deployments/{}/predict"
    baseline = _slug("off")
    await closed_loop(url, path.format(baseline), body, concurrency=2, duration=1.0)  # warm up
    await wait_idle(url, baseline)
    unloaded, _ = await closed_loop(url, path.format(baseline), body, concurrency=1, duration=args.unloaded_seconds)
    latencies = [o.latency for o in unloaded if o.status == 200]
    p50_unloaded, p99_unloaded = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    await wait_idle(url, baseline)
    full, elapsed = await closed_loop(url, path.format(baseline), body, concurrency=8, duration=args.unloaded_seconds)
    capacity = sum(1 for o in full if o.status == 200) / elapsed
    rate = 2 * capacity
    slo = args.slo_factor * p99_unloaded / 1000
    print(f"model call {args.service_ms} ms, one at a time (ideal capacity {1000 / args.service_ms:.0f}/s); batching off")
    print(f"unloaded (1 client): p50 {p50_unloaded:.1f} ms, p99 {p99_unloaded:.1f} ms, {len(latencies) / args.unloaded_seconds:.0f} answers/s")
    print(f"capacity (8 clients, closed loop): {capacity:.1f} answers/s")
    print(f"open loop at {rate:.0f} requests/s (2x capacity) for {args.seconds:.0f} s, {args.runs} rounds; "
          f"SLO for 'in SLO' = {args.slo_factor:g} x unloaded p99 = {slo * 1000:.0f} ms\n", flush=True)
    results: dict[str, list[dict[str, float]]] = {policy: [] for policy in POLICIES}
    for run in range(args.runs):
        for policy in POLICIES:
            deployment = _slug(policy)
            await wait_idle(url, deployment)
            outcomes = await open_loop(url, path.format(deployment), body, rate=rate, duration=args.seconds, drain=args.drain)
            summary = summarize(outcomes, args.seconds, slo)
            results[policy].append(summary)
            print(f"  round {run + 1} {policy:<12} goodput {summary['goodput']:6.1f}/s  shed {summary['shed'] * 100:5.1f}%  "
                  f"p99 {summary['p99']:8.1f} ms", flush=True)
    print(f"\n{'policy':<13}{'offered/s':>10}{'goodput/s':>10}{'in SLO/s':>9}{'shed':>7}{'failed':>7}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'p99/unloaded':>13}{'gen lag p99':>12}")
    for policy, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"{policy:<13}{med['offered']:>10.0f}{med['goodput']:>10.1f}{med['in_slo']:>9.1f}{med['shed'] * 100:>6.1f}%"
              f"{med['failed'] * 100:>6.1f}%{med['p50']:>9.1f}{med['p99']:>9.1f}{med['p99'] / p99_unloaded:>12.1f}x"
              f"{med['lag_p99']:>10.1f}ms")
    print(f"{'unloaded':<13}{'':>10}{capacity:>10.1f}{'':>9}{'':>7}{'':>7}{p50_unloaded:>9.1f}{p99_unloaded:>9.1f}{1.0:>12.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="open-loop arrivals per run")
    parser.add_argument("--drain", type=float, default=20.0, help="wait for late answers, then abandon them")
    parser.add_argument("--service-ms", type=float, default=10.0, help="model call time")
    parser.add_argument("--unloaded-seconds", type=float, default=4.0)
    parser.add_argument("--slo-factor", type=float, default=5.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-shedding-"))
    registry = Registry.open(Settings(home=home))
    try:
        registry.register("sleepy", Sleepy(args.service_ms / 1000), sample=pd.DataFrame({"x": [float(i) for i in range(20)]}))
    finally:
        registry.db.dispose()
    project = home / "project.py"
    write_project(project)
    env = {"STALWART_HOME": str(home), "STALWART_PROJECT": str(project), "STALWART_BATCHING": "false"}
    with serve(env, home / "server.log") as server:
        asyncio.run(bench(server.url, args))


if __name__ == "__main__":
    main()
