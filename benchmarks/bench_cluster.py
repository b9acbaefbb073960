"""Issue 16: the local cluster, measured. Three ``stalwart serve`` replicas of the fraud
example (the demo's data and model: 1,500 cards, 45 days, 300 trees) behind nginx, sharing
PostgreSQL and Redis (tests/local_cluster.py, what ``make cluster`` runs):

- **throughput** of 1, 2 and 3 replicas in nginx's rotation (the others idle), and of one
  replica asked directly: ``POST /v1/deployments/fraud/predict``, one card per request
  cycling over 200 recently active cards (features from the cache, after warm-up), wrk
  ``-t1 --timeout 10s``, configurations interleaved within each repeat, medians; with the CPU
  every replica and nginx spent per answered request;
- **failover**: under wrk at c=16, replica 0 SIGKILLed 2 s in, and (another run) replica 2
  sent SIGTERM: the failed requests, from wrk and from nginx's log;
- **a new version served everywhere**: from ``register()`` returning (a training script, on
  the shared registry) to every replica answering ``/v2/models/fraud/infer`` with it, at
  the default ``STALWART_REGISTRY_POLL_SECONDS`` (2);
- **invalidation across replicas**: a transaction written through one replica
  (``POST /v1/sources/transactions/rows``), then the two others asked for the card's
  features until they change; and each replica's own publication-to-application delay
  (``stalwart_cache_invalidation_delay_seconds``).

Run from a worktree (PostgreSQL and Redis up, nginx and wrk installed: ``make bench``
installs wrk, scripts/ensure-nginx nginx)::

    PYTHONPATH=src python -m benchmarks cluster --seconds 5 --repeats 3
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tests.local_cluster import LocalCluster, fraud_project, load_fraud, train_fraud, v2_body
from tests.processes import ServeProcess

from benchmarks.harness import (
    Series,
    WrkResult,
    descendants,
    environment_notes,
    fmt_ms,
    fmt_rps,
    markdown_table,
    tree_cpu,
    wrk,
)

PREDICT = "/v1/deployments/fraud/predict"
CONCURRENCIES = (8, 32)
FAILOVER_CONNECTIONS = 16
CARDS = 200
VERSION_RUNS = 5
WRITES = 40


@dataclass(frozen=True)
class Options:
    seconds: float = 5.0
    repeats: int = 3


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-cluster-") as tmp:
        directory = Path(tmp)
        # Clients keep their connections to nginx, as they would in production: a reload
        # (the rotation changing, in the failover runs) may close one as wrk sends on it.
        with LocalCluster(directory, project=fraud_project(directory), client_keepalive=True) as cluster:
            _progress("generating the fraud example and training its model (the demo's sizes)…")
            fraud = load_fraud(cluster.settings())
            cluster.start()
            frame = fraud["frame"]
            recent = frame[frame["ts"] > frame["ts"].max() - 86_400]
            cards = [int(c) for c in recent["card_id"].value_counts().index[:CARDS]]
            script = _script(directory, cards)
            lines = ["# The local cluster: replicas behind nginx on shared PostgreSQL and Redis (issue 16)", ""]
            lines += [environment_notes(options.seconds, options.repeats, servers="3 stalwart serve replicas (uvicorn) behind nginx"), ""]
            lines += _throughput(cluster, script, options)
            lines += _failover(cluster, script, options)
            lines += _versions(cluster, frame)
            lines += _invalidation(cluster, cards)
    return "\n".join(lines) + "\n"


# --- throughput ---------------------------------------------------------------------------


def _throughput(cluster: LocalCluster, script: Path, options: Options) -> list[str]:
    configurations: list[tuple[str, Callable[[], str], Sequence[int]]] = [
        ("1 replica, direct", lambda: cluster.replicas[0].url, (0,)),
        ("1 replica, nginx", lambda: _scaled(cluster, 1), (0,)),
        ("2 replicas, nginx", lambda: _scaled(cluster, 2), (0, 1)),
        ("3 replicas, nginx", lambda: _scaled(cluster, 3), (0, 1, 2)),
    ]
    points: dict[tuple[str, int], Series] = {}
    for _name, target, _ in configurations:  # warm every replica's caches and connections
        wrk(target() + PREDICT, script, connections=8, seconds=2)
    total = options.repeats * len(CONCURRENCIES) * len(configurations)
    done = 0
    for _ in range(options.repeats):
        for connections in CONCURRENCIES:
            for name, target, used in configurations:
                url = target()
                pids = [cluster.pid(i) for i in used] + ([] if "direct" in name else _nginx_pids(cluster))
                before = sum(tree_cpu(pid) for pid in pids)
                result = wrk(url + PREDICT, script, connections=connections, seconds=options.seconds)
                cpu = sum(tree_cpu(pid) for pid in pids) - before
                series = points.setdefault((name, connections), Series())
                series.add(result)
                answered = result.requests - result.errors
                if answered:
                    series.cpu_us.append(cpu / answered * 1e6)
                done += 1
                _progress(
                    f"  [{done}/{total}] {name:<18} c={connections:<3} {_answered_rps(result):>8,.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                )
    cluster.serve_with(len(cluster.replicas))
    rows = []
    for connections in CONCURRENCIES:
        base = _median_answered(points[("1 replica, nginx", connections)])
        for name, _, _ in configurations:
            s = points[(name, connections)]
            rps = _median_answered(s)
            rows.append([
                str(connections), name, fmt_rps(rps), f"{rps / base:.2f}x",
                fmt_ms(s.p50), fmt_ms(s.p99), f"{s.cpu:.0f}", f"{s.spread:.0%}", str(s.errors),
            ])
    header = ["c", "configuration", "answered req/s", "vs 1 replica behind nginx", "p50 ms", "p99 ms",
              "CPU µs per answer (replicas + nginx)", "req/s spread", "errors"]
    return [
        "## Throughput: 1, 2 and 3 replicas behind nginx", "",
        f"`POST {PREDICT}`, one card per request over {CARDS} recently active cards; replicas not in the "
        "rotation run on, idle (nginx reloaded with them `down`). CPU per answer sums every replica in the "
        "rotation and nginx's master and worker (wrk's own is not counted).", "",
        markdown_table(header, rows), "",
    ]


def _scaled(cluster: LocalCluster, count: int) -> str:
    if cluster.held_out != frozenset(range(count, len(cluster.replicas))):
        cluster.serve_with(count)
        time.sleep(1.0)  # the reload: old workers finish and close their connections
    return cluster.url


def _nginx_pids(cluster: LocalCluster) -> list[int]:
    pid = cluster.nginx.pid
    return [] if pid is None else [pid, *descendants(pid)]


def _median_answered(series: Series) -> float:
    return statistics.median(_answered_rps(r) for r in series.runs)


def _answered_rps(result: WrkResult) -> float:
    return result.requests_per_s * (result.requests - result.errors) / result.requests if result.requests else 0.0


def _script(directory: Path, cards: Sequence[int]) -> Path:
    """A wrk script cycling through one prediction request per card."""
    bodies = [
        json.dumps({"entities": [{"card_id": card}], "values": [{"amount": 42.5, "merchant_category": "groceries"}]})
        for card in cards
    ]
    path = directory / "predict.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local bodies = {\n" + ",\n".join(f"  [[{body}]]" for body in bodies) + "\n}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        f'  return wrk.format(nil, "{PREDICT}", nil, bodies[(i % #bodies) + 1])\n'
        "end\n"
    )
    return path


# --- failover -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failover:
    fault: str
    result: WrkResult
    failed_in_log: int  # 5xx answers nginx logged during the run
    on_faulty: int  # of which the faulty replica was the one tried last


def _failover(cluster: LocalCluster, script: Path, options: Options) -> list[str]:
    seconds = max(options.seconds, 6.0)
    runs: list[Failover] = []
    for _ in range(options.repeats):
        for fault, index in (("SIGKILL", 0), ("SIGTERM (drain 1 s)", 2)):
            runs.append(_one_failover(cluster, script, seconds, fault, index))
            _progress(f"  {fault}: wrk errors {runs[-1].result.errors}, 5xx in nginx's log {runs[-1].failed_in_log}")
    rows = []
    for fault in ("SIGKILL", "SIGTERM (drain 1 s)"):
        mine = [r for r in runs if r.fault == fault]
        rows.append([
            fault, str(len(mine)), ", ".join(str(r.result.errors) for r in mine),
            ", ".join(f"{r.result.non2xx} / {r.result.errors - r.result.non2xx}" for r in mine),
            ", ".join(f"{r.on_faulty} / {r.failed_in_log}" for r in mine),
            fmt_rps(statistics.median(r.result.requests for r in mine)),
        ])
    header = ["fault", "runs", "failed requests per run", "of which non-2xx / socket errors",
              "5xx nginx logged: sent last to the faulty replica / all", "requests per run"]
    return [
        "## Failover", "",
        f"wrk at c={FAILOVER_CONNECTIONS} for {seconds:g} s through nginx to 3 replicas; 2 s in, one replica gets the "
        "fault; it is started again after the run. A failed request is one wrk counts as an error (non-2xx "
        "or socket error); nginx's log says which replica each went to last.", "",
        markdown_table(header, rows), "",
    ]


def _one_failover(cluster: LocalCluster, script: Path, seconds: float, fault: str, index: int) -> Failover:
    faulty = cluster.address(index)
    start = time.time()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(wrk, cluster.url + PREDICT, script, connections=FAILOVER_CONNECTIONS, seconds=seconds)
        time.sleep(2.0)
        if fault == "SIGKILL":
            cluster.kill(index)
        else:
            cluster.terminate(index)
            cluster.wait(index, timeout=60)
        result = running.result()
    end = time.time()
    lines = [line for line in cluster.nginx.access() if start <= line.time <= end + 1 and line.status >= 500]
    cluster.restart(index)
    time.sleep(1.0)  # back in the rotation (the readiness watch), before the next run
    return Failover(fault, result, len(lines), sum(1 for line in lines if line.upstreams and line.upstreams[-1] == faulty))


# --- a new version ------------------------------------------------------------------------


def _versions(cluster: LocalCluster, frame: Any) -> list[str]:
    settings = cluster.settings()
    replicas = cluster.replicas
    body = v2_body(replicas[0].get("/v2/models/fraud").json())
    everywhere: list[float] = []
    each: list[float] = []
    for _ in range(VERSION_RUNS):
        version, _ = train_fraud(frame, settings, max_iter=20)
        registered = time.monotonic()
        with ThreadPoolExecutor(len(replicas)) as pool:
            delays = list(pool.map(partial(_until_serving, body=body, version=str(version.version), since=registered), replicas))
        each += delays
        everywhere.append(max(delays))
        _progress(f"  {version.ref}: served everywhere after {max(delays):.2f} s")
    return [
        "## A new version, served everywhere", "",
        f"{VERSION_RUNS} versions registered one after another (a training script on the shared registry); time "
        "from `register()` returning until a replica answers `/v2/models/fraud/infer` with the version, each "
        "replica asked every 20 ms. Replicas poll the registry every 2 s (the default), then load the version.", "",
        markdown_table(
            ["", "p50 s", "max s"],
            [
                ["one replica", f"{statistics.median(each):.2f}", f"{max(each):.2f}"],
                ["every replica", f"{statistics.median(everywhere):.2f}", f"{max(everywhere):.2f}"],
            ],
        ), "",
    ]


def _until_serving(replica: ServeProcess, *, body: dict[str, Any], version: str, since: float, timeout: float = 60.0) -> float:
    with httpx.Client(base_url=replica.url, timeout=10) as client:
        while time.monotonic() - since < timeout:
            response = client.post("/v2/models/fraud/infer", json=body)
            if response.status_code == 200 and response.json()["model_version"] == version:
                return time.monotonic() - since
            time.sleep(0.02)
    return float("inf")


# --- invalidation -------------------------------------------------------------------------


def _invalidation(cluster: LocalCluster, cards: Sequence[int]) -> list[str]:
    replicas = cluster.replicas
    token = {"Authorization": f"Bearer {cluster.token}"}
    clients = [httpx.Client(base_url=r.url, timeout=10) for r in replicas]
    before_metrics = [_delay_buckets(c) for c in clients]
    visible: list[float] = []  # write sent -> a fresh read answered, per other replica
    acks: list[float] = []  # write sent -> acknowledged
    fresh_at_ack = 0
    reads = 0
    try:
        for n in range(WRITES):
            card = cards[n % len(cards)]
            writer = n % len(replicas)
            counts = [_count(c, card) for c in clients]  # each replica computes (and caches) the card
            counts = [_count(c, card) for c in clients]  # ... and now serves it from memory
            row = {"card_id": card, "ts": time.time() - 1, "amount": 10.0, "merchant_category": "fuel", "is_fraud": 0}
            sent = time.monotonic()
            written = clients[writer].post("/v1/sources/transactions/rows", json={"rows": [row]}, headers=token)
            acked = time.monotonic()
            if written.status_code != 200:
                raise RuntimeError(f"the write failed: {written.status_code} {written.text}")
            acks.append(acked - sent)
            others = [i for i in range(len(replicas)) if i != writer]
            with ThreadPoolExecutor(len(others)) as pool:
                found = list(pool.map(partial(_until_fresh, card=card, since=sent), [clients[i] for i in others], [counts[i] + 1 for i in others]))
            for delay, first_read_fresh in found:
                visible.append(delay)
                reads += 1
                fresh_at_ack += first_read_fresh
    finally:
        after_metrics = [_delay_buckets(c) for c in clients]
        for client in clients:
            client.close()
    buckets = _sum_buckets([_minus(a, b) for a, b in zip(after_metrics, before_metrics, strict=True)])
    return [
        "## Invalidation across replicas", "",
        f"{WRITES} transactions written, each through one replica in turn, for a card every replica had just "
        "served from its in-process cache; then each of the two others asked for the card's features back to "
        "back until they counted the new transaction.", "",
        markdown_table(
            ["", "p50 ms", "p99 ms"],
            [
                ["write acknowledged (insert, then invalidation published)", fmt_ms(_q(acks, 50) * 1000), fmt_ms(_q(acks, 99) * 1000)],
                ["write sent -> another replica answers with the new value", fmt_ms(_q(visible, 50) * 1000), fmt_ms(_q(visible, 99) * 1000)],
                ["publication -> applied on a replica (its histogram, interpolated)", fmt_ms(_bucket_q(buckets, 0.5) * 1000),
                 fmt_ms(_bucket_q(buckets, 0.99) * 1000)],
            ],
        ), "",
        f"The first read of another replica after the write's acknowledgement already had the new value in "
        f"{fresh_at_ack} of {reads} cases: once a write through one replica is acknowledged, every replica serves it.", "",
    ]


def _count(client: httpx.Client, card: int) -> float:
    body = {"entities": [{"card_id": card}], "values": [{"amount": 42.5, "merchant_category": "groceries"}], "return_features": True}
    response = client.post(PREDICT, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"predict failed: {response.status_code} {response.text}")
    count: float = response.json()["features"][0]["tx_count_1h"]
    return count


def _until_fresh(client: httpx.Client, wanted: float, *, card: int, since: float, timeout: float = 10.0) -> tuple[float, bool]:
    """Seconds from ``since`` until ``client`` serves the card with ``wanted`` transactions
    in the hour, and whether its first answer already did."""
    first = True
    while time.monotonic() - since < timeout:
        if _count(client, card) >= wanted:
            return time.monotonic() - since, first
        first = False
    return float("inf"), False


def _delay_buckets(client: httpx.Client) -> dict[float, float]:
    """``stalwart_cache_invalidation_delay_seconds``' cumulative buckets on one replica."""
    text = client.get("/metrics").text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "stalwart_cache_invalidation_delay_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = float(sample.value)
    return out


def _minus(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: value - before.get(le, 0.0) for le, value in after.items()}


def _sum_buckets(each: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for buckets in each:
        for le, value in buckets.items():
            out[le] = out.get(le, 0.0) + value
    return out


def _bucket_q(buckets: dict[float, float], q: float) -> float:
    """The ``q`` quantile of a cumulative histogram, linear within its bucket (as
    Prometheus's ``histogram_quantile``)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lower
            share = (rank - below) / (buckets[le] - below) if buckets[le] > below else 0.0
            return lower + (le - lower) * share
        lower, below = le, buckets[le]
    return lower


def _q(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


_print_lock = threading.Lock()


def _progress(text: str) -> None:
    with _print_lock:
        print(text, file=sys.stderr, flush=True)
