"""Prediction log sink throughput: records per second through ``SqlSink.write``.

Run from a worktree with PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres)::

    PYTHONPATH=src python -m benchmarks.bench_prediction_log [--pg-url URL] [--records 100000] [--runs 3]

Records are realistic: a /v1 request with 30 features, its entities, outputs, validation,
cache hits and timings, linked into a hash chain (about 2 KB of JSON each). They are
encoded before the clock starts (the log's writer encodes once, for its spool); the clock
times ``write`` in batches of 1,000, as the writer calls it, into a fresh database. The
figure is the median of ``--runs`` runs. PostgreSQL gets a private database, dropped
afterwards; SQLite a temporary file (WAL, synchronous=NORMAL, as the registry runs it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stalwart.monitoring.logs import configure_logging
from stalwart.monitoring.records import Chain, PredictionRecord, encode_record
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.storage import Database

BATCH = 1_000


def make_records(n: int, seed: int = 7) -> list[PredictionRecord]:
    """``n`` linked records shaped like the fraud deployment's /v1 requests."""
    rng = random.Random(seed)
    chain = Chain(f"bench-{uuid.uuid4().hex[:8]}")
    now = time.time_ns()
    out = []
    for i in range(n):
        features: dict[str, Any] = {f"f{j:02d}_amount_{w}": [round(rng.random() * 1_000, 4)] for j, w in zip(range(26), ["1h", "24h", "7d"] * 9, strict=False)}
        features |= {"merchant": [rng.choice(["acme", "globex", "initech"])], "country": ["FR"], "is_new": [rng.random() < 0.1], "count_24h": [rng.randint(0, 50)]}
        record = PredictionRecord(
            request_id=uuid.uuid4().hex,
            time_ns=now + i * 50_000,
            entrypoint="/v1",
            status=200,
            latency_ms=rng.random() * 5,
            trace_id=uuid.uuid4().hex,
            deployment="fraud",
            variant="primary",
            model="fraud-gbm",
            version=3,
            rows=1,
            entities=[{"card_id": rng.randint(1, 10_000_000)}],
            features=features,
            outputs={"probability": [rng.random()], "label": [int(rng.random() < 0.02)]},
            validation={"imputed": {}, "clipped": {}, "flagged": {}},
            cache={"card_stats": {"memory": 1, "redis": 0, "source": 0}},
            timings={"features": rng.random(), "validation": 0.05, "model": rng.random(), "total": rng.random() * 3},
        )
        out.append(chain.link(record))
    return out


def run_once(db_url: str, records: list[PredictionRecord], encoded: list[bytes]) -> float:
    """Seconds to write every record, in batches, into a freshly migrated database."""
    sink = SqlSink(Database(db_url))
    try:
        start = time.perf_counter()
        for i in range(0, len(records), BATCH):
            sink.write(records[i : i + BATCH], encoded[i : i + BATCH])
        return time.perf_counter() - start
    finally:
        sink.close()


def pg_database(admin_url: str) -> tuple[str, Any]:
    """A private database on the server at ``admin_url``, and its dropper."""
    import psycopg

    name = f"stalwart_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a server where databases can be created")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("json", "warning", stream=sys.stderr)

    records = make_records(args.records)
    encoded = [encode_record(r) for r in records]
    size = statistics.mean(len(e) for e in encoded)
    results: dict[str, Any] = {"records": args.records, "batch": BATCH, "bytes_per_record": round(size)}

    pg_rates = []
    for _ in range(args.runs):
        url, drop = pg_database(args.pg_url)
        try:
            pg_rates.append(args.records / run_once(url, records, encoded))
        finally:
            drop()
    results["postgresql_records_per_s"] = round(statistics.median(pg_rates))
    results["postgresql_runs"] = [round(r) for r in pg_rates]

    if not args.skip_sqlite:
        sqlite_rates = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                sqlite_rates.append(args.records / run_once(url, records, encoded))
        results["sqlite_records_per_s"] = round(statistics.median(sqlite_rates))
        results["sqlite_runs"] = [round(r) for r in sqlite_rates]

    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
