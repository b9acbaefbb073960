"""Issue 15: ``stalwart serve --workers N``, throughput and latency by number of workers.

The demo's ``breast-cancer`` v2 (100 gradient-boosted trees), one row per ``/v2`` request
asking for ``predict_proba``, served by ``stalwart serve`` on its defaults (batching on,
access log and prediction log on) with ``STALWART_WORKERS`` = 1, 2, ... side by side in one
run: wrk ``-t1 --timeout 10s`` at c=1 and c=64, numeric libraries pinned to one thread,
the contestants interleaved within each repeat; medians of the repeats. CPU per request
counts the supervisor and every worker. A worker is a whole server, so N workers also cost
N times a server's memory (RSS summed over the workers, after the runs). Errors are
responses other than 200: on a shared machine, mostly 503s from load shedding when a
stall (another job taking the cores) holds requests past the model's queueing budget.

Run from a worktree::

    python -m benchmarks workers --seconds 5 --repeats 3
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from benchmarks.contest import Arena
from benchmarks.harness import (
    Series,
    Server,
    environment_notes,
    fmt_ms,
    fmt_rps,
    markdown_table,
    run_matrix,
    tree_memory,
)
from benchmarks.models import DEMO_MODELS

CONCURRENCIES = (1, 64)


@dataclass(frozen=True)
class Options:
    seconds: float = 3.0
    repeats: int = 3
    workers: tuple[int, ...] = (1, 2, 4)


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    gbm = [m for m in DEMO_MODELS if m.key == "gbm"]
    with Arena(gbm) as arena:
        names = {n: f"{n} worker{'s' if n > 1 else ''}" for n in options.workers}
        for n, name in names.items():
            arena.add_stalwart(name, {"STALWART_WORKERS": str(n)})
        with arena.start():
            for n, name in names.items():
                if n > 1:
                    _wait_all_workers(arena.servers[name])
            results = run_matrix(arena.targets(), CONCURRENCIES, seconds=options.seconds, repeats=options.repeats)
            memory = {name: _rss_mib(arena.servers[name]) for name in names.values()}
    one = names[options.workers[0]]
    rows = []
    for n, name in names.items():
        row = [str(n)]
        for c in CONCURRENCIES:
            series = results[(name, "gbm", c)]
            base = results[(one, "gbm", c)]
            row += [_cell(series), f"{series.rps / base.rps:.2f}x"]
        row += [f"{memory[name]:,.0f}", str(sum(results[(name, "gbm", c)].errors for c in CONCURRENCIES))]
        rows.append(row)
    header = ["workers"]
    for c in CONCURRENCIES:
        header += [f"c={c}: req/s (p50 / p99 ms) CPU µs/req", f"c={c} vs {options.workers[0]}"]
    header += ["RSS MiB (all processes)", "errors"]
    return "\n".join([
        "# Worker processes (issue 15)",
        "",
        environment_notes(options.seconds, options.repeats).replace("uvicorn, one worker", "uvicorn, N worker processes"),
        "",
        "`breast-cancer` v2 (gradient boosting, 100 trees), one row per `/v2` request "
        "(`predict_proba`), `stalwart serve --workers N` on its defaults. Medians of the runs; "
        "CPU is the supervisor's and every worker's, all threads, per request.",
        "",
        markdown_table(header, rows),
        "",
    ]) + "\n"


def _wait_all_workers(server: Server, timeout: float = 120.0) -> None:
    """Until the supervisor says every worker listens (the first one ready answers alone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name}: the workers did not all start in {timeout:.0f} s")


def _rss_mib(server: Server) -> float:
    """Resident memory of a server's process and its children, MiB."""
    return tree_memory(server.process.pid).rss / 2**20


def _cell(series: Series) -> str:
    return f"{fmt_rps(series.rps)} ({fmt_ms(series.p50)} / {fmt_ms(series.p99)}) {series.cpu:.0f}"
