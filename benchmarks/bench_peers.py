"""Issue 15: Stalwart beside its peers in one run, every figure also as ours / peer.

The workload of issue 15's table: a scikit-learn ``HistGradientBoostingClassifier`` trained
on breast-cancer, one row per request, ``predict_proba`` asked for by name, ``POST
/v2/models/breast-cancer/infer`` in OIP JSON; wrk ``-t1 --timeout 10s`` at c=1 and c=64,
10 s per point and 2 repetitions unless told otherwise, the three contestants interleaved
within each repetition, medians reported. Every server runs on its defaults with the
numeric libraries pinned to one thread (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS`` = 1):

- the minimal Starlette endpoint (``benchmarks/minimal_app.py``): stdlib JSON, the model
  called inline on the event loop, under uvicorn as ``stalwart serve`` runs it, loaded from
  a joblib file of the registered estimator;
- MLServer 1.7.1 with mlserver-sklearn 1.7.1, in its own virtual environment
  (``benchmarks/mlserver_peer.py``), serving the same joblib file;
- ``stalwart serve`` (batching on, the default).

Each is checked to give the same probabilities for the request before the load starts.
Besides the client's view it reports each server's CPU per request and resident memory
(its process and every process it started), at the end of the run and at peak.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks peers --seconds 10 --repeats 2

Targets (issue 15): at c=64 at least 10,000 req/s with p99 under 20 ms, and at least 12x
MLServer's req/s; at c=1 a p50 within 0.15 ms of the minimal endpoint's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx
import joblib  # type: ignore[import-untyped]
import numpy as np

from benchmarks import mlserver_peer
from benchmarks.contest import MINIMAL, Arena, in_process
from benchmarks.harness import (
    Memory,
    Series,
    Server,
    Target,
    bench_env,
    descendants,
    environment_notes,
    fmt_ms,
    fmt_rps,
    markdown_table,
    run_matrix,
    tree_memory,
)
from benchmarks.models import MODEL, PEER_MODEL, infer_path, prepare_peer_home

CONCURRENCIES = (1, 64)
STALWART = "Stalwart (batching on)"
MLSERVER = mlserver_peer.NAME
PEERS = (MINIMAL, MLSERVER)
PATH = infer_path(None)
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    seconds: float = 10.0
    repeats: int = 2


@dataclass(frozen=True)
class _Footprint:
    memory: Memory
    processes: int


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    mlserver_peer.ensure_environment()  # before anything starts: it may take a minute, or fail
    with Arena(models=(PEER_MODEL,), prepare=prepare_peer_home) as arena:
        estimator = arena.estimator(PEER_MODEL)
        floor = in_process(estimator, arena.x_test[:1], min(options.seconds, 3.0))
        notes = environment_notes(options.seconds, options.repeats)
        # One joblib file of the registered estimator for the two contestants that are not
        # Stalwart: the same model everywhere, and nothing of Stalwart in their processes.
        model_file = arena.workdir / "model.joblib"
        joblib.dump(estimator, model_file)
        arena.add_minimal(model_file)
        arena.servers[MLSERVER] = mlserver_peer.start(arena.workdir, MODEL, model_file, bench_env())
        arena.add_stalwart(STALWART)
        targets = {
            (name, PEER_MODEL.key): Target(server, PATH, arena.script)
            for name, server in arena.servers.items()
        }
        with arena.start():
            _check_answers(arena.servers, arena.body)
            results = run_matrix(
                targets, CONCURRENCIES, seconds=options.seconds, repeats=options.repeats, warmup=2.0
            )
            footprints = {
                name: _Footprint(tree_memory(server.process.pid), 1 + len(descendants(server.process.pid)))
                for name, server in arena.servers.items()
            }
        series = {name: {c: results[(name, PEER_MODEL.key, c)] for c in CONCURRENCIES} for name in arena.servers}
    load = os.getloadavg()
    return "\n".join([
        "# Stalwart beside its peers (issue 15)",
        "",
        notes,
        f"- load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- {mlserver_peer.describe()}",
        "",
        f"Workload: `{PEER_MODEL.label}` on breast-cancer, one row per request, `predict_proba`, "
        f"`POST {PATH}` (OIP JSON). In process, one call takes p50 {floor.p50_ms:.3f} ms "
        f"(p99 {floor.p99_ms:.3f} ms, {fmt_rps(floor.calls_per_s)} calls/s).",
        "",
        "Medians of the repetitions; RSS is the server's resident memory (its process and every "
        "process it started) at the end of the run. The last rows give Stalwart's figure over "
        "each peer's.",
        "",
        _table(series, footprints),
        "",
        "Details: req/s as median (lowest to highest run), p50 / p99 ms, server CPU per request "
        "(every thread and child process), peak RSS (each process's own peak, summed), "
        "processes, failed requests (of which answered with a non-2xx status; Stalwart's, where we looked, were "
        "503s from its load shedding, which refuses a request that would queue longer than "
        "allowed).",
        "",
        _details(series, footprints),
        "",
        *_verdict(series),
    ]) + "\n"


def _table(series: dict[str, dict[int, Series]], footprints: dict[str, _Footprint]) -> str:
    header = ["server", "c=1 req/s", "c=1 p50 ms", "c=64 req/s", "c=64 p99 ms", "RSS MiB", "CPU/request c=1 / c=64 µs"]
    rows = []
    for name in (*PEERS, STALWART):
        one, many = series[name][1], series[name][64]
        rows.append([
            name, fmt_rps(one.rps), fmt_ms(one.p50), fmt_rps(many.rps), fmt_ms(many.p99),
            f"{footprints[name].memory.rss / _MIB:.0f}", f"{one.cpu:.0f} / {many.cpu:.0f}",
        ])
    ours = series[STALWART]
    for peer in PEERS:
        theirs = series[peer]
        rows.append([
            f"Stalwart / {peer}",
            _ratio(ours[1].rps, theirs[1].rps), _ratio(ours[1].p50, theirs[1].p50),
            _ratio(ours[64].rps, theirs[64].rps), _ratio(ours[64].p99, theirs[64].p99),
            _ratio(footprints[STALWART].memory.rss, footprints[peer].memory.rss),
            f"{_ratio(ours[1].cpu, theirs[1].cpu)} / {_ratio(ours[64].cpu, theirs[64].cpu)}",
        ])
    return markdown_table(header, rows)


def _details(series: dict[str, dict[int, Series]], footprints: dict[str, _Footprint]) -> str:
    header = ["server", "c", "req/s", "p50 / p99 ms", "CPU/request µs", "peak RSS MiB", "processes", "failed (non-2xx)"]
    rows = []
    for name in (*PEERS, STALWART):
        for c in CONCURRENCIES:
            s = series[name][c]
            values = [r.requests_per_s for r in s.runs]
            rows.append([
                name, str(c), f"{fmt_rps(s.rps)} ({fmt_rps(min(values))} to {fmt_rps(max(values))})",
                f"{fmt_ms(s.p50)} / {fmt_ms(s.p99)}", f"{s.cpu:.0f}",
                f"{footprints[name].memory.peak / _MIB:.0f}", str(footprints[name].processes), f"{s.errors} ({s.non2xx})",
            ])
    return markdown_table(header, rows)


def _verdict(series: dict[str, dict[int, Series]]) -> list[str]:
    ours, minimal, mlserver = series[STALWART], series[MINIMAL], series[MLSERVER]
    delta = ours[1].p50 - minimal[1].p50
    ratio = ours[64].rps / mlserver[64].rps
    return [
        "Targets (issue 15):",
        "",
        f"- c=64: {fmt_rps(ours[64].rps)} req/s with p99 {fmt_ms(ours[64].p99)} ms "
        f"(target ≥ 10,000 and < 20 ms: {_met(ours[64].rps >= 10_000 and ours[64].p99 < 20)})",
        f"- c=64: {ratio:.1f}x MLServer's req/s (target ≥ 12x: {_met(ratio >= 12)})",
        f"- c=1: p50 {delta:+.3f} ms against the minimal endpoint (target ≤ +0.15: {_met(delta <= 0.15)})",
    ]


def _check_answers(servers: dict[str, Server], body: bytes) -> None:
    """Every contestant answers the benchmark's request with 200 and the same
    probabilities, so they are measured doing the same work."""
    answers = {}
    for name, server in servers.items():
        response = httpx.post(server.url + PATH, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:500]}")
        outputs = response.json()["outputs"]
        found = [o for o in outputs if o["name"] == "predict_proba"]
        if len(found) != 1:
            raise RuntimeError(f"{name} answered no predict_proba output: {outputs}")
        answers[name] = np.asarray(found[0]["data"], dtype=np.float64)
    first, *others = answers.items()
    for name, values in others:
        if values.shape != first[1].shape or not np.allclose(values, first[1]):
            raise RuntimeError(f"{name} answered {values.tolist()}, {first[0]} {first[1].tolist()}")


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"
