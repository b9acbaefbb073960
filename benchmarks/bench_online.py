"""Online feature resolution with and without the feature cache, on the fraud example.

- ``OnlineFeatures.resolve`` p50/p99 for 1 and 100 entities (10 features, 2 request
  values), SQLite: cold (no cache: one SQL round trip per request), warm in-process cache,
  warm Redis tier alone (the in-process tier off), side by side in one run.
- Share of source calls saved for a stream of single-entity resolves whose cards follow a
  Zipf law, on a simulated clock (TTL and window expiry included), in-process cache.

Run from a worktree with Redis on 127.0.0.1:6379::

    PYTHONPATH=src python -m benchmarks.bench_online [--runs 5] [--redis-url URL]

Every latency is the median over ``--runs`` runs of that run's p50/p99. Redis keys go to a
private namespace, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import runpy
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stalwart.cache import CachePolicy, FeatureCache, MemoryTier, RedisTier
from stalwart.config import Settings
from stalwart.durations import NS
from stalwart.features import OnlineFeatures
from stalwart.features.caching import bind_caches, cache_policy
from stalwart.features.engine import SourceRows
from stalwart.features.readers import SourceReader, make_reader
from stalwart.monitoring.logs import configure_logging
from stalwart.project import FeatureSet, load_project
from stalwart.storage import DatabasePool

ROOT = Path(__file__).resolve().parent.parent / "examples" / "fraud"


class Counting:
    """The real reader, counting fetches."""

    def __init__(self, inner: SourceReader) -> None:
        self.inner = inner
        self.calls = 0

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        return self.inner.read_all(columns)

    async def fetch(
        self, keys: Sequence[tuple[Any, ...]], as_of_ns: int, lookback_ns: int, columns: Sequence[str], *, older: bool = True, newer: bool = False
    ) -> SourceRows:
        self.calls += 1
        return await self.inner.fetch(keys, as_of_ns, lookback_ns, columns, older=older, newer=newer)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def requests_for(cards: np.ndarray[Any, Any], batch: int, n: int, seed: int) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        keys = [int(k) for k in rng.choice(cards, size=batch, replace=False)]
        out.append(([{"card_id": k} for k in keys], [{"amount": 25.0, "merchant_category": "groceries"} for _ in keys]))
    return out


async def time_resolves(online: OnlineFeatures, plan: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for entities, values in plan:
        start = clock()
        await online.resolve(entities, values)
        samples.append((clock() - start) / 1e6)
    return samples


async def bench_latency(fs: FeatureSet, refs: list[Any], reader: SourceReader, cards: np.ndarray[Any, Any], redis_url: str, runs: int) -> dict[str, dict[str, float]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    policy = cache_policy(fs) or CachePolicy()
    memory_cache = FeatureCache()
    redis_cache = FeatureCache(redis=RedisTier.from_url(redis_url, namespace=namespace), namespace=namespace)
    await redis_cache.start()
    variants = {
        "cold (no cache)": OnlineFeatures(refs, {fs.source.name: reader}),
        "warm, in-process": OnlineFeatures(refs, {fs.source.name: reader}, caches=bind_caches([fs], memory_cache)),
        "warm, Redis only": OnlineFeatures(
            refs, {fs.source.name: reader}, caches={fs.name: redis_cache.bind(fs.name, fs.version, policy.model_copy(update={"memory": False}))}
        ),
    }
    results: dict[str, dict[str, float]] = {}
    try:
        for batch, n in ((1, 2000), (100, 300)):
            plan = requests_for(cards, batch, n, seed=batch)
            for name, online in variants.items():
                if name != "cold (no cache)":
                    for entities, values in plan:  # warm every entity the timed requests ask for
                        await online.resolve(entities, values)
                    await asyncio.sleep(0.2)  # write-backs to Redis land
                p50s, p99s = [], []
                for _ in range(runs):
                    samples = await time_resolves(online, plan)
                    p50s.append(pct(samples, 50))
                    p99s.append(pct(samples, 99))
                results[f"{name}|{batch}"] = {"p50_ms": statistics.median(p50s), "p99_ms": statistics.median(p99s)}
    finally:
        await _drop_namespace(redis_cache, namespace)
        await redis_cache.aclose()
    return results


async def _drop_namespace(cache: FeatureCache, namespace: str) -> None:
    if cache.redis is None:
        return
    keys = [key async for key in cache.redis.client.scan_iter(match=f"{namespace}:*", count=1000)]
    if keys:
        await cache.redis.client.unlink(*keys)


class SimClock:
    """Simulated wall clock: the features' ns and the cache's seconds, moved per request."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns

    def ns(self) -> int:
        return self.now

    def seconds(self) -> float:
        return self.now / NS


async def bench_zipf(fs: FeatureSet, refs: list[Any], reader: SourceReader, cards: np.ndarray[Any, Any], start_ns: int, runs: int, n: int = 50_000, rate: float = 50.0) -> list[dict[str, Any]]:
    """Source calls saved when single-card resolves follow a Zipf law over the cards, at
    ``rate`` requests per simulated second (so TTLs and windows expire during the run)."""
    out = []
    ranks = np.arange(1, len(cards) + 1, dtype=np.float64)
    for s in (0.9, 1.1):
        saved = []
        for run in range(runs):
            p = ranks**-s
            p /= p.sum()
            stream = np.random.default_rng(run).choice(cards, size=n, p=p)
            clock = SimClock(start_ns)
            counting = Counting(reader)
            cache = FeatureCache(memory=MemoryTier(), clock=clock.seconds)
            online = OnlineFeatures(refs, {fs.source.name: counting}, caches=bind_caches([fs], cache), clock=clock.ns)
            step = round(NS / rate)
            for card in stream.tolist():
                clock.now += step
                await online.resolve([{"card_id": card}], [{"amount": 25.0, "merchant_category": "groceries"}])
            saved.append(1.0 - counting.calls / n)
        out.append({"s": s, "saved": statistics.median(saved), "requests": n, "simulated_s": n / rate})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cards", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("console", "warning")
    generator = runpy.run_path(str(ROOT / "generate.py"))
    # Data up to this hour, so "now" sees full windows.
    end = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    frame = generator["generate"](n_cards=args.cards, days=60, end=end)
    home = Path(tempfile.mkdtemp())
    url = f"sqlite:///{home / 'online.db'}"
    generator["load"](frame, url)
    project = load_project(ROOT / "project.py")
    fs = project.feature_sets["card_activity"]
    txn = project.sources["txn"]
    refs = [*(fs[n] for n in fs.feature_names), txn.field("amount"), txn.field("merchant_category")]  # type: ignore[attr-defined]
    pool = DatabasePool(Settings(home=home, db_url=url))
    reader = make_reader(fs.source, pool)
    cards = frame["card_id"].unique()
    try:
        latency = asyncio.run(bench_latency(fs, refs, reader, cards, args.redis_url, args.runs))
        zipf = asyncio.run(bench_zipf(fs, refs, reader, cards, int(end.timestamp()) * NS, max(1, args.runs // 2)))
    finally:
        pool.dispose()
    print(f"Online resolution, fraud example: {len(frame):,} rows, {len(cards):,} cards, SQLite; "
          f"10 features + 2 request values; medians of {args.runs} runs")
    print(f"{'':<20} {'1 entity p50':>13} {'p99':>9} {'100 entities p50':>17} {'p99':>9}")
    for name in ("cold (no cache)", "warm, in-process", "warm, Redis only"):
        one, hundred = latency[f"{name}|1"], latency[f"{name}|100"]
        print(f"{name:<20} {one['p50_ms']:>11.3f}ms {one['p99_ms']:>7.3f}ms {hundred['p50_ms']:>15.3f}ms {hundred['p99_ms']:>7.3f}ms")
    cold = latency["cold (no cache)|1"]["p50_ms"]
    print(f"speed-up at p50, 1 entity: in-process {cold / latency['warm, in-process|1']['p50_ms']:.1f}x, "
          f"Redis only {cold / latency['warm, Redis only|1']['p50_ms']:.1f}x")
    print("\nSource calls saved, single-card resolves, Zipf over the cards, in-process cache (card_activity's policy):")
    for row in zipf:
        print(f"  s={row['s']}: {row['saved'] * 100:.1f}% of {row['requests']:,} resolves over {row['simulated_s']:.0f} simulated s")


if __name__ == "__main__":
    main()
