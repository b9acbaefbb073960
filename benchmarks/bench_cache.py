"""Feature cache benchmarks: hit latency per tier, invalidation propagation, calls saved.

Run from a worktree with Redis on 127.0.0.1:6379::

    PYTHONPATH=src python -m benchmarks.bench_cache [--redis-url URL] [--runs 5]

Every figure is the median over ``--runs`` runs. Keys go to a private namespace that is
deleted afterwards. The end-to-end ``/v1/deployments/fraud/predict`` figure lives with the
serving benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from stalwart.cache import CachePolicy, FeatureCache, MemoryTier, RedisTier
from stalwart.cache.invalidation import Invalidation
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from stalwart.monitoring.logs import configure_logging

ROW: Row = {"amount_1h": 42.0, "count_24h": 7, "country": "FR", "merchant_risk": 0.13, "is_new": False}


async def load(keys: list[EntityKey]) -> dict[EntityKey, Row | None]:
    return {k: ROW for k in keys}


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


async def time_calls(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await call()
        out.append((clock() - start) / 1000.0)  # microseconds
    return out


async def bench_hits(url: str, namespace: str, runs: int) -> dict[str, Any]:
    """p50/p99 of a get_many served entirely by one tier, 1 key and 50 keys per call."""
    results: dict[str, Any] = {}
    cache = FeatureCache(redis=RedisTier.from_url(url, namespace=namespace), namespace=namespace)
    await cache.start()
    try:
        memory = cache.bind("bench_memory", "v1", CachePolicy(ttl=3600))
        shared = cache.bind("bench_redis", "v1", CachePolicy(ttl=3600, memory=False))
        one: list[EntityKey] = [(17,)]
        fifty: list[EntityKey] = [(i,) for i in range(50)]
        for view in (memory, shared):
            await view.get_many(fifty, load)
        await asyncio.sleep(0.1)  # let the write-backs land
        plans = [
            ("memory_hit_1", memory, one, 20_000),
            ("memory_hit_50", memory, fifty, 5_000),
            ("redis_hit_1", shared, one, 3_000),
            ("redis_hit_50", shared, fifty, 2_000),
        ]
        for name, view, keys, n in plans:
            p50s, p99s = [], []
            for _ in range(runs):
                samples = await time_calls(functools.partial(view.get_many, keys, load), n)
                p50s.append(pct(samples, 50))
                p99s.append(pct(samples, 99))
            results[name] = {"p50_us": statistics.median(p50s), "p99_us": statistics.median(p99s), "calls": n}
        check = await shared.get_many(one, load)
        results["redis_hit_checked"] = check.redis_hits == 1
    finally:
        await cache.aclose()
    return results


async def subscriber(url: str, namespace: str, count: int) -> None:
    """The second replica (a separate process): print each invalidation's delay."""
    configure_logging("json", "warning", sys.stderr)
    cache = FeatureCache(redis=RedisTier.from_url(url, namespace=namespace), namespace=namespace)
    delays: list[float] = []
    done = asyncio.Event()

    def heard(message: Invalidation, delay: float) -> None:
        delays.append(delay)
        if len(delays) >= count:
            done.set()

    cache.invalidator.listeners.append(heard)
    await cache.start()
    if cache.bus is None or not await cache.bus.wait_connected(10):
        raise SystemExit("subscriber could not connect")
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        print(json.dumps(delays), flush=True)
        await cache.aclose()


async def bench_propagation(url: str, namespace: str, runs: int, count: int = 300) -> dict[str, Any]:
    """Delay from publication on one replica to application on another (separate processes)."""
    p50s, p99s, maxes = [], [], []
    for _ in range(runs):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.bench_cache", "--subscriber", namespace, "--count", str(count),
            "--redis-url", url, stdout=asyncio.subprocess.PIPE,
        )
        if child.stdout is None:
            raise RuntimeError("no pipe to the subscriber")
        if (await child.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the subscriber did not start")
        cache = FeatureCache(redis=RedisTier.from_url(url, namespace=namespace), namespace=namespace)
        try:
            for i in range(count):
                await cache.invalidate("fraud", [(i,)])
                await asyncio.sleep(0.002)  # ~500 writes/s, not a burst
            delays = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
        finally:
            await cache.aclose()
            await child.wait()
        ms = [d * 1000 for d in delays]
        p50s.append(pct(ms, 50))
        p99s.append(pct(ms, 99))
        maxes.append(max(ms))
    return {
        "messages_per_run": count,
        "p50_ms": statistics.median(p50s),
        "p99_ms": statistics.median(p99s),
        "max_ms": statistics.median(maxes),
    }


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def zipf_stream(n_keys: int, s: float, n: int, seed: int) -> np.ndarray[Any, Any]:
    ranks = np.arange(1, n_keys + 1, dtype=np.float64)
    p = ranks**-s
    p /= p.sum()
    rng = np.random.default_rng(seed)
    keys: np.ndarray[Any, Any] = rng.choice(n_keys, size=n, p=p)
    return keys


def lru_misses(stream: np.ndarray[Any, Any], capacity: int, ttl: float, step: float) -> int:
    """The same stream through a plain LRU with the same TTL, for comparison."""
    cache: OrderedDict[int, float] = OrderedDict()
    misses = 0
    for i, key in enumerate(stream.tolist()):
        now = i * step
        expiry = cache.get(key)
        if expiry is not None and expiry > now:
            cache.move_to_end(key)
            continue
        misses += 1
        cache[key] = now + ttl
        cache.move_to_end(key)
        if len(cache) > capacity:
            cache.popitem(last=False)
    return misses


async def bench_zipf(runs: int, requests: int = 200_000, rate: float = 1000.0) -> list[dict[str, Any]]:
    """Share of loader calls saved for single-entity lookups drawn from a Zipf law."""
    out = []
    n_keys = 100_000
    # TTL-bound (the cache holds every key: expiry decides), then capacity-bound (a 10%
    # cache and a TTL longer than the run: the eviction policy decides), then both.
    scenarios = [(100_000, 60.0), (10_000, 3600.0), (10_000, 60.0)]
    for s in (0.9, 1.1):
        for capacity, ttl in scenarios:
            saved, lru_saved = [], []
            for run in range(runs):
                stream = zipf_stream(n_keys, s, requests, seed=run)
                clock = _Clock()
                cache = FeatureCache(memory=MemoryTier(max_entries=capacity), clock=clock)
                view = cache.bind("zipf", "v1", CachePolicy(ttl=ttl))  # XFetch on, beta 1
                calls = 0

                async def counted(keys: list[EntityKey]) -> dict[EntityKey, Row | None]:
                    nonlocal calls
                    calls += 1
                    return {k: ROW for k in keys}

                for key in stream.tolist():
                    clock.now += 1.0 / rate
                    await view.get_many([(key,)], counted)
                saved.append(1 - calls / requests)
                lru_saved.append(1 - lru_misses(stream, capacity, ttl, 1.0 / rate) / requests)
            out.append(
                {
                    "zipf_s": s,
                    "keys": n_keys,
                    "memory_entries": capacity,
                    "ttl_s": ttl,
                    "requests": requests,
                    "rate_per_s": rate,
                    "calls_saved": statistics.median(saved),
                    "calls_saved_plain_lru": statistics.median(lru_saved),
                }
            )
    return out


def cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


async def main(args: argparse.Namespace) -> None:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    configure_logging("json", "warning", sys.stderr)
    try:
        hits = await bench_hits(args.redis_url, namespace, args.runs)
        propagation = await bench_propagation(args.redis_url, namespace, args.runs)
    finally:
        cleanup(args.redis_url, namespace)
    zipf = await bench_zipf(max(1, min(args.runs, 3)))
    print(f"Feature cache benchmarks (median of {args.runs} runs; Python {sys.version.split()[0]})")
    print("\nHit latency, whole get_many call (microseconds)")
    print(f"{'case':<16}{'p50':>10}{'p99':>10}")
    for name in ("memory_hit_1", "memory_hit_50", "redis_hit_1", "redis_hit_50"):
        row = hits[name]
        print(f"{name:<16}{row['p50_us']:>10.1f}{row['p99_us']:>10.1f}")
    print(
        f"\nInvalidation propagation between two processes ({propagation['messages_per_run']} "
        f"messages/run): p50 {propagation['p50_ms']:.2f} ms, p99 {propagation['p99_ms']:.2f} ms, "
        f"max {propagation['max_ms']:.2f} ms"
    )
    print("\nLoader calls saved, one entity per request, simulated clock")
    print(f"{'zipf s':>7}{'keys':>9}{'entries':>9}{'ttl s':>7}{'req/s':>7}{'saved':>9}{'plain LRU':>11}")
    for row in zipf:
        print(
            f"{row['zipf_s']:>7}{row['keys']:>9}{row['memory_entries']:>9}{row['ttl_s']:>7.0f}"
            f"{row['rate_per_s']:>7.0f}{row['calls_saved']:>9.1%}{row['calls_saved_plain_lru']:>11.1%}"
        )
    if args.json:
        print(json.dumps({"hits": hits, "propagation": propagation, "zipf": zipf}))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--subscriber", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        asyncio.run(subscriber(args.redis_url, args.subscriber, args.count))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
