"""Offline engines (issue 17): one training set of 10 features on numpy, DuckDB and Spark.

The data: ``--events`` events (default 10 million) and as many transactions, over 30
days and 200,000 cards, as Parquet (the transactions a directory of files), generated once
with a progress bar into ``benchmarks/data/engines-<events>/`` and reused. Each engine runs
in a child process of its own, so its wall time and its peak memory (the resident sets of
the child and everything it started, Spark's JVM included, sampled every 0.2 s) are its
alone. DuckDB and Spark write the rows as Parquet partitioned by date; numpy holds them in
memory. ``--big`` also runs DuckDB alone on 100 million events.

The machine is 2 cores shared with other work: the times are this run's, not a
quiet machine's; read them side by side.

Run: ``python -m benchmarks engines`` or ``python -m benchmarks.bench_engines [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
DAY_S = 86_400
CARDS = 200_000
CHUNK = 1_000_000
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Options:
    events: int = 10_000_000
    engines: tuple[str, ...] = ("duckdb", "spark", "numpy")
    big: bool = False


def generate(directory: Path, n: int) -> None:
    """Transactions (a directory of Parquet files) and events (one file), made once."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import Progress

    if (directory / "done").exists():
        return
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "transactions").mkdir(parents=True)
    rng = np.random.default_rng(17)
    start = 1_767_225_600  # 2026-01-01
    categories = np.array(["food", "fuel", "travel", "electronics", "other"])
    with Progress(transient=True) as progress:
        task = progress.add_task(f"generating {n:,} transactions and {n:,} events", total=2 * n)
        events = pq.ParquetWriter(str(directory / "events.parquet"), _schema(events=True), compression="zstd")
        try:
            for index, first in enumerate(range(0, n, CHUNK)):
                size = min(CHUNK, n - first)
                seconds = start + rng.integers(0, 30 * DAY_S * 1_000_000, size=size) / 1_000_000
                table = pa.table({
                    "card_id": rng.integers(0, CARDS, size=size),
                    "ts": pa.array((seconds * 1e6).astype("int64"), type=pa.timestamp("us", tz="UTC")),
                    "amount": np.round(rng.lognormal(3, 0.8, size=size), 2),
                    "category": categories[rng.integers(0, len(categories), size=size)],
                })
                pq.write_table(table, directory / "transactions" / f"part-{index:04d}.parquet", compression="zstd")
                progress.advance(task, size)
                seconds = start + rng.integers(0, 30 * DAY_S * 1_000_000, size=size) / 1_000_000
                events.write_table(pa.table({
                    "card_id": rng.integers(0, CARDS, size=size),
                    "ts": pa.array((seconds * 1e6).astype("int64"), type=pa.timestamp("us", tz="UTC")),
                    "amount": np.round(rng.lognormal(3, 0.8, size=size), 2),
                    "label": rng.integers(0, 2, size=size),
                }, schema=_schema(events=True)))
                progress.advance(task, size)
        finally:
            events.close()
    (directory / "done").write_text(str(n))


def _schema(*, events: bool) -> Any:
    import pyarrow as pa

    return pa.schema([("card_id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("amount", pa.float64()), ("label", pa.int64())])


def features(directory: Path) -> list[Any]:
    from stalwart.project import (
        Entity,
        FeatureSet,
        FileSource,
        Latest,
        RequestSource,
        Transform,
        Window,
    )

    card = Entity("card", keys=["card_id"])
    txn = RequestSource("txn", fields={"amount": "float"})
    source = FileSource("transactions", path=str(directory / "transactions") + "/", entity=card, timestamp="ts")
    return [FeatureSet("card_activity", entity=card, source=source, features=[
        Window("tx_count_1h", agg="count", window="1h"),
        Window("tx_count_24h", agg="count", window="24h"),
        Window("amount_sum_1h", agg="sum", column="amount", window="1h"),
        Window("amount_sum_24h", agg="sum", column="amount", window="24h"),
        Window("amount_mean_30d", agg="mean", column="amount", window="30d", default=0.0),
        Window("amount_max_7d", agg="max", column="amount", window="7d", default=0.0),
        Window("categories_24h", agg="count", column="category", window="24h"),
        Latest("last_amount", column="amount", max_age="30d", default=0.0),
        Latest("last_category", column="category", default="none"),
        Transform("amount_ratio", inputs=[txn.amount, "amount_mean_30d"], fn=lambda a, m: a / np.maximum(m, 1.0)),
    ])]


def child(engine: str, directory: Path, output: Path) -> dict[str, Any]:
    """One engine's run (in the child process): the training set, timed."""
    from stalwart.offline import build_training_set

    chosen: Any = engine
    if engine == "duckdb":
        from stalwart.offline.duckdb_engine import DuckDBEngine

        chosen = DuckDBEngine(memory_limit="2500MB", threads=2, temp_directory=str(output.parent / "duckdb-spill"))
    elif engine == "spark":
        from stalwart.offline.spark_engine import SparkEngine, spark_session

        session = spark_session("local[2]", shuffle_partitions=8, conf={"spark.driver.memory": "4g"})
        session.sparkContext.setLogLevel("ERROR")
        chosen = SparkEngine(session)
    start = time.perf_counter()
    ts = build_training_set(
        directory / "events.parquet", features(directory), label="label", engine=chosen,
        output=None if engine == "numpy" else output,
    )
    seconds = time.perf_counter() - start
    return {"engine": engine, "seconds": seconds, "rows": ts.row_count, "profiled": ts.profile.rows if ts.profile else 0}


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry)] = int(fields[1])
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(p for p, parent in parents.items() if parent == current)
    return total


def run_engine(engine: str, directory: Path) -> dict[str, Any]:
    output = directory / f"out-{engine}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.bench_engines", "--child", engine, "--data", str(directory), "--out", str(output)]
    env = {**os.environ, "PYTHONPATH": f"{_ROOT / 'src'}{os.pathsep}{_ROOT}"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=_ROOT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        return {"engine": engine, "error": f"exit {process.returncode}"}
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_gib"] = peak / 2**30
    shutil.rmtree(output, ignore_errors=True)
    return result


def run(options: Options) -> str:
    directory = DATA / f"engines-{options.events}"
    generate(directory, options.events)
    results = [run_engine(engine, directory) for engine in options.engines]
    if options.big:
        big = DATA / "engines-100000000"
        generate(big, 100_000_000)
        results.append({**run_engine("duckdb", big), "engine": "duckdb (100M)"})
    lines = [
        f"# Offline engines: {options.events:,} events x 10 features from Parquet",
        "",
        "2-core machine shared with other work; each engine in a child process; peak RSS of the",
        "child and its descendants (Spark's JVM included), sampled every 0.2 s.",
        "",
        "| engine | rows | seconds | events/s | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['engine']} | failed: {result['error']} | | | |")
            continue
        lines.append(
            f"| {result['engine']} | {result['rows']:,} | {result['seconds']:.1f} | "
            f"{result['rows'] / result['seconds']:,.0f} | {result['peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--engines", nargs="+", default=["duckdb", "spark", "numpy"], choices=["duckdb", "spark", "numpy"])
    parser.add_argument("--big", action="store_true", help="also DuckDB on 100 million events")
    parser.add_argument("--child", choices=["duckdb", "spark", "numpy"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.out)))
        return
    print(run(Options(events=args.events, engines=tuple(args.engines), big=args.big)))


if __name__ == "__main__":
    main()
