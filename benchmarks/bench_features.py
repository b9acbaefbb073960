"""Feature pipeline benchmarks (issue: define features once).

- Training-set build: 1 million events x 10 features from the fraud example's
  transactions table (SQLite), wall time, median of runs; the engine alone beside it.
- Online resolution: p50/p99 for 1 and 100 entities, on SQLite and on PostgreSQL, beside
  the bare SQL query that fetches the same rows (the same statement on a raw DB-API
  cursor); the ratio is the figure.

Run: ``python -m benchmarks.bench_features`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import runpy
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "examples" / "fraud"
PG_ADMIN = os.environ.get("STALWART_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = np.sort(np.asarray(samples))
    return float(np.percentile(ordered, 50)), float(np.percentile(ordered, 99))


def bench_training_set(db_url: str, frame: Any, runs: int) -> dict[str, float]:
    import stalwart
    from stalwart.config import Settings
    from stalwart.features.engine import Queries, compute
    from stalwart.features.readers import make_reader
    from stalwart.features.timecodec import to_ns
    from stalwart.storage import DatabasePool

    project = stalwart.load_project(ROOT / "project.py")
    card_activity = project.feature_sets["card_activity"]
    events = frame[["card_id", "ts", "amount", "merchant_category", "is_fraud"]].iloc[:1_000_000].copy()
    events["ts"] = events["ts"] - 0.001
    settings = Settings(home=Path(tempfile.mkdtemp()), db_url=db_url)
    totals = []
    for _ in range(runs):
        start = time.perf_counter()
        ts = stalwart.build_training_set(events, [card_activity], timestamp="ts", label="is_fraud", settings=settings)
        totals.append(time.perf_counter() - start)
    if len(ts.frame) != len(events) or len(ts.features) != 10:
        raise SystemExit("the training set does not have the expected shape")
    pool = DatabasePool(settings)
    rows = make_reader(card_activity.source, pool).read_all(card_activity.source_columns())
    pool.dispose()
    queries = Queries(keys=[events["card_id"].to_numpy()], ts=to_ns(events["ts"]))
    request = {("txn", "amount"): events["amount"].to_numpy(), ("txn", "merchant_category"): events["merchant_category"].to_numpy(dtype=object)}
    engine = []
    for _ in range(runs):
        start = time.perf_counter()
        compute(card_activity, queries, rows, request)
        engine.append(time.perf_counter() - start)
    return {"events": float(len(events)), "source_rows": float(len(frame)), "build_s": statistics.median(totals), "engine_s": statistics.median(engine)}


def bench_online(db_url: str, frame: Any, batch: int, repeats: int) -> dict[str, float]:
    import stalwart
    from stalwart.config import Settings
    from stalwart.features import OnlineFeatures
    from stalwart.features.readers import SqlReader, make_reader
    from stalwart.storage import DatabasePool

    project = stalwart.load_project(ROOT / "project.py")
    fs = project.feature_sets["card_activity"]
    txn = project.sources["txn"]
    settings = Settings(home=Path(tempfile.mkdtemp()), db_url=db_url)
    pool = DatabasePool(settings)
    reader = make_reader(fs.source, pool)
    if not isinstance(reader, SqlReader):
        raise SystemExit("the benchmark needs a SQL source")
    online = OnlineFeatures([*(fs[n] for n in fs.feature_names), txn.field("amount")], {fs.source.name: reader})  # type: ignore[attr-defined]
    as_of = float(frame["ts"].max())
    as_of_ns = int(as_of * 1e9)
    rng = np.random.default_rng(1)
    cards = frame["card_id"].unique()
    # The statement our plan sends (whether it needs each entity's older last row).
    statement = reader.statement(tuple(fs.source_columns()), older=online._plans[0].everything.older)
    engine = pool(db_url).engine

    async def ours(entities: list[dict[str, Any]], values: list[dict[str, Any]]) -> float:
        start = time.perf_counter()
        await online.resolve(entities, values, as_of_ns=as_of_ns)
        return time.perf_counter() - start

    raw = engine.raw_connection()
    cursor = raw.cursor()
    lookback = 30 * 86_400

    def bare(keys: list[int]) -> float:
        # The same statement with this request's values written in, on a raw DB-API
        # cursor: what a hand-written lookup costs with nothing of ours around it.
        bound = statement.params(keys=keys, as_of=as_of + 1, start=as_of - lookback - 1)
        text = str(bound.compile(engine, compile_kwargs={"literal_binds": True}))
        start = time.perf_counter()
        cursor.execute(text)
        cursor.fetchall()
        return time.perf_counter() - start

    ours_t: list[float] = []
    bare_t: list[float] = []
    loop = asyncio.new_event_loop()
    try:
        for i in range(repeats):
            keys = [int(k) for k in rng.choice(cards, size=batch, replace=False)]
            entities = [{"card_id": k} for k in keys]
            values = [{"amount": 25.0, "merchant_category": "groceries"} for _ in keys]
            if i % 2 == 0:
                ours_t.append(loop.run_until_complete(ours(entities, values)))
                bare_t.append(bare(keys))
            else:
                bare_t.append(bare(keys))
                ours_t.append(loop.run_until_complete(ours(entities, values)))
    finally:
        loop.close()
        cursor.close()
        raw.close()
        pool.dispose()
    ours_p50, ours_p99 = _percentiles(ours_t[5:])
    bare_p50, bare_p99 = _percentiles(bare_t[5:])
    return {"ours_p50_ms": ours_p50 * 1e3, "ours_p99_ms": ours_p99 * 1e3, "bare_p50_ms": bare_p50 * 1e3, "bare_p99_ms": bare_p99 * 1e3, "ratio_p50": ours_p50 / bare_p50}


def _postgres_database() -> tuple[str, Any]:
    import psycopg

    name = f"stalwart_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer repeats")
    args = parser.parse_args()
    generator = runpy.run_path(str(ROOT / "generate.py"))
    runs, repeats = (1, 100) if args.quick else (3, 400)
    end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    print("Feature pipeline benchmarks (wall time, this machine; medians)")
    if not args.quick:
        big = generator["generate"](n_cards=10_000, days=60, end=end)
        home = Path(tempfile.mkdtemp())
        url = f"sqlite:///{home / 'bench.db'}"
        generator["load"](big, url)
        result = bench_training_set(url, big, runs)
        print(f"\ntraining set: {int(result['events']):,} events x 10 features over {int(result['source_rows']):,} source rows (SQLite)")
        print(f"  build_training_set (read table + engine + frame): {result['build_s']:.2f} s   engine alone: {result['engine_s']:.2f} s   (target < 30 s)")

    small = generator["generate"](n_cards=2_000, days=60, end=end)
    pg_url, drop = _postgres_database()
    try:
        backends = {"SQLite": f"sqlite:///{Path(tempfile.mkdtemp()) / 'online.db'}", "PostgreSQL": pg_url}
        print(f"\nonline resolution, {len(small):,} rows, 10 features + 1 request value, {repeats} requests per point")
        print(f"{'backend':<11} {'entities':>8} {'ours p50':>10} {'ours p99':>10} {'bare SQL p50':>13} {'bare p99':>10} {'ratio p50':>10}")
        for backend, url in backends.items():
            generator["load"](small, url)
            for batch in (1, 100):
                r = bench_online(url, small, batch, repeats)
                print(f"{backend:<11} {batch:>8} {r['ours_p50_ms']:>8.3f}ms {r['ours_p99_ms']:>8.3f}ms {r['bare_p50_ms']:>11.3f}ms {r['bare_p99_ms']:>8.3f}ms {r['ratio_p50']:>9.2f}x")
    finally:
        drop()


if __name__ == "__main__":
    main()
