"""Live parity's cost: ``check_live_parity`` over a prediction log in SQLite.

A transactions table (``--rows`` rows over 2,000 cards and 30 days) and ``--logged``
prediction records of one deployment, whose features were computed point-in-time by the
training-set engine (so the check finds no skew and does all its work). Reported: wall
time of the check for each sample size, median of runs, and the share spent reading the
log (the rest is the point-in-time recomputation and the comparison).

Run: ``python -m benchmarks.bench_live_parity`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _setup(home: Path, rows: int, logged: int) -> tuple[Any, Any]:
    from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table

    from stalwart.config import Settings
    from stalwart.features import build_training_set
    from stalwart.monitoring.records import encode_record
    from stalwart.monitoring.sinks.sql import SqlSink
    from stalwart.project import Deployment, Entity, FeatureSet, Latest, Project, SqlSource, Window
    from stalwart.storage import Database

    settings = Settings(home=home)
    rng = np.random.default_rng(0)
    end = dt.datetime.now(dt.UTC)
    seconds = rng.uniform(0, 30 * 86_400, size=rows)
    frame = pd.DataFrame({
        "card_id": rng.integers(1, 2_001, size=rows),
        "ts": [end - dt.timedelta(seconds=float(s)) for s in seconds],
        "amount": np.round(rng.lognormal(3, 0.7, size=rows), 2),
        "category": rng.choice(["food", "fuel", "tech"], size=rows),
    })
    db = Database(settings.resolved_db_url())
    table = Table(
        "tx", MetaData(), Column("id", Integer, primary_key=True), Column("card_id", Integer),
        Column("ts", DateTime(timezone=True)), Column("amount", Float), Column("category", String(20)),
    )
    with db.write() as conn:
        table.create(conn)
        conn.execute(table.insert(), frame.to_dict("records"))
    db.dispose()
    card = Entity("card", keys=["card_id"])
    fs = FeatureSet("card", entity=card, source=SqlSource("tx", table="tx", entity=card, timestamp="ts"), features=[
        Window("n_1h", agg="count", window="1h"),
        Window("n_1d", agg="count", window="1d"),
        Window("sum_1d", agg="sum", column="amount", window="1d"),
        Window("mean_7d", agg="mean", column="amount", window="7d", default=0.0),
        Window("max_7d", agg="max", column="amount", window="7d", default=0.0),
        Latest("last_amount", column="amount", default=0.0),
        Latest("last_category", column="category", default="none"),
    ])
    project = Project.of(fs, Deployment("bench", model="bench", features=[fs]))
    times = end - pd.to_timedelta(rng.uniform(0, 86_400, size=logged), unit="s")
    events = pd.DataFrame({"card_id": rng.integers(1, 2_001, size=logged), "ts": times})
    # What the online path would have served: the same engine at the same instants.
    served = build_training_set(events, [fs], settings=settings).frame
    records = []
    for i in range(logged):
        as_of = int(pd.Timestamp(events["ts"].iloc[i]).value)
        records.append(_record(i, as_of, int(events["card_id"].iloc[i]), {n: served[n].iloc[i] for n in fs.feature_names}, fs.version))
    sink = SqlSink.from_settings(settings)
    for start in range(0, logged, 5_000):
        batch = records[start:start + 5_000]
        sink.write(batch, [encode_record(r) for r in batch])
    sink.close()
    return project, settings


def _record(i: int, as_of: int, card: int, features: dict[str, Any], version: str) -> Any:
    from stalwart.monitoring.records import PredictionRecord

    return PredictionRecord(
        request_id=f"r{i:08d}", time_ns=as_of - 1_000, entrypoint="/v1", status=200, latency_ms=1.0,
        deployment="bench", variant="primary", model="bench", version=1, rows=1,
        entities=[{"card_id": card}], features={k: [v.item() if hasattr(v, "item") else v] for k, v in features.items()},
        feature_sets={"card": version}, features_as_of_ns=as_of,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--logged", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows, logged, runs = (20_000, 5_000, 1) if args.quick else (args.rows, args.logged, args.runs)
    from stalwart.features.live_parity import check_live_parity

    with tempfile.TemporaryDirectory() as home:
        project, settings = _setup(Path(home), rows, logged)
        print(f"table: {rows} rows; prediction log: {logged} records")
        print("| sample | check (s) | reading the log (s) | rows compared | mismatched |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for sample in (100, 1_000, 10_000):
            totals, reads = [], []
            report = None
            for run in range(runs):
                marks: dict[str, float] = {}
                start = time.perf_counter()

                def progress(stage: str, done: int, total: int | None, marks: dict[str, float] = marks, start: float = start) -> None:
                    if stage != "reading the log" and "read" not in marks:
                        marks["read"] = time.perf_counter() - start

                report = check_live_parity(project, settings, "bench", since="2d", sample=sample, seed=run, progress=progress)
                totals.append(time.perf_counter() - start)
                reads.append(marks.get("read", 0.0))
            if report is None:
                raise SystemExit("no run")
            compared = sum(f.checked for f in report.features)
            mismatched = sum(f.mismatched for f in report.features)
            print(f"| {sample} | {statistics.median(totals):.2f} | {statistics.median(reads):.2f} | {compared} | {mismatched} |")


if __name__ == "__main__":
    main()
