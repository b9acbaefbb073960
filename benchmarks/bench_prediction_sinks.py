"""Prediction sink throughput (issue: a durable prediction log): records per second from one
process into the Parquet sink and into NATS JetStream.

Records are realistic: a /v1 answer with 30 features (one row), entity keys, outputs,
validation, feature-cache hits and timings, linked into a hash chain, encoded once (as the
writer does), then written in batches of 1,000 the way the prediction log's writer thread
calls a sink. Parquet: every batch into one sink, then ``flush()`` (so every record is in a
closed, fsynced file); NATS: every batch acknowledged by JetStream. Each figure is the
median of 3 runs; the Parquet run also reports records per CPU second of this process,
which a busy machine distorts less than wall time.

Run: ``python -m benchmarks.bench_prediction_sinks`` (``--records N``, ``--nats-url``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

BATCH = 1_000


def _records(n: int) -> tuple[list[object], list[bytes]]:
    from stalwart.monitoring.records import Chain, PredictionRecord, encode_record

    rng = random.Random(7)
    chain = Chain("bench")
    start = time.time_ns()
    records: list[object] = []
    encoded: list[bytes] = []
    for i in range(n):
        features = {f"f{j:02d}": [round(rng.gauss(0, 1), 6)] for j in range(30)}
        record = chain.link(
            PredictionRecord(
                request_id=uuid.UUID(int=rng.getrandbits(128)).hex, time_ns=start + i * 10_000,
                entrypoint="/v1", status=200, latency_ms=round(rng.uniform(1, 9), 3),
                trace_id=f"{rng.getrandbits(128):032x}", deployment="fraud", variant="primary",
                model="fraud-gbm", version=7, rows=1, entities=[{"user_id": rng.randrange(10**6)}],
                features=features, outputs={"probability": [round(rng.random(), 6)], "label": [rng.randrange(2)]},
                validation={"flagged": [], "clipped": 0}, cache={"user_profile": {"memory": 1}},
                timings={"features": 0.41, "validation": 0.05, "model": 1.2, "total": 1.9},
            )
        )  # fmt: skip
        records.append(record)
        encoded.append(encode_record(record))
    return records, encoded


def _median_rate(run: Callable[[], tuple[float, float]], n: int, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = run()
        walls.append(n / wall)
        cpus.append(n / cpu)
    return statistics.median(walls), statistics.median(cpus)


def bench_parquet(records: list[object], encoded: list[bytes], repeats: int) -> tuple[float, float, int]:
    from stalwart.monitoring.sinks.parquet import ParquetSink

    sizes: list[int] = []

    def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as directory:
            sink = ParquetSink(directory)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(records), BATCH):
                sink.write(records[i : i + BATCH], encoded[i : i + BATCH])  # type: ignore[arg-type]
            sink.flush()
            elapsed = time.perf_counter() - wall, time.process_time() - cpu
            sizes.append(sum(p.stat().st_size for p in Path(directory).rglob("*.parquet")))
            return elapsed

    wall, cpu = _median_rate(run, len(records), repeats)
    return wall, cpu, sizes[-1]


def bench_nats(records: list[object], encoded: list[bytes], repeats: int, url: str) -> float:
    import nats

    from stalwart.monitoring.sinks.nats import NatsSink

    stream = f"BENCH_{uuid.uuid4().hex[:8].upper()}"
    subject = f"bench.predictions.{stream.lower()}"

    async def purge() -> None:
        nc = await nats.connect(url)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):  # the first run creates it
                await nc.jetstream().purge_stream(stream)
        finally:
            await nc.close()

    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    def run() -> tuple[float, float]:
        asyncio.run(purge())  # a fresh window: repeated request ids would be dropped as duplicates
        sink = NatsSink(url, subject, stream=stream)
        sink.write(records[:1], encoded[:1])  # type: ignore[arg-type]  # connect outside the timing
        asyncio.run(purge())
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(records), BATCH):
                sink.write(records[i : i + BATCH], encoded[i : i + BATCH])  # type: ignore[arg-type]
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            sink.close()

    try:
        wall, _ = _median_rate(run, len(records), repeats)
    finally:
        asyncio.run(delete())
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records per run (default 200,000)")
    parser.add_argument("--nats-records", type=int, default=50_000, help="records per NATS run (default 50,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--skip-nats", action="store_true")
    args = parser.parse_args()

    records, encoded = _records(args.records)
    size = sum(map(len, encoded)) / len(encoded)
    print(f"{len(records):,} records, {size:,.0f} bytes of JSON each, batches of {BATCH:,}, median of {args.repeats}")
    wall, cpu, on_disk = bench_parquet(records, encoded, args.repeats)
    print(f"parquet: {wall:>10,.0f} records/s wall  {cpu:>10,.0f} records/CPU-s  ({on_disk / len(records):,.0f} bytes/record on disk, zstd)")
    if not args.skip_nats:
        n = min(args.nats_records, len(records))
        rate = bench_nats(records[:n], encoded[:n], args.repeats, args.nats_url)
        print(f"nats:    {rate:>10,.0f} records/s wall  (every record acknowledged by JetStream; {n:,} per run)")


if __name__ == "__main__":
    main()
