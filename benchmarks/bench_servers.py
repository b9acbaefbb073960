"""Issue 15: the HTTP server under the app, uvicorn (httptools, uvloop) against granian.

Two ``stalwart serve`` processes on the same home, alike but for ``STALWART_SERVER``, each
on its defaults otherwise (batching on, access log on, one worker), serving the demo's
``breast-cancer`` v2 (100 gradient-boosted trees): one row per ``/v2`` infer request,
``predict_proba``. wrk ``-t1 --timeout 10s`` at c=1 and c=64, numeric libraries pinned to
one thread, the contestants interleaved within each repeat; medians of the repeats:
requests/s, p50 and p99, the server's CPU per request (every thread of the process, so
granian's Rust thread too) and its RSS after the run.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks servers --models gbm --seconds 8 --repeats 3

The faster one becomes the default only if it is as robust (tests/serving/test_connections,
test_limits, test_fuzz, test_faults and test_shutdown pass on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.contest import Arena
from benchmarks.harness import environment_notes, fmt_ms, fmt_rps, markdown_table, run_matrix

CONCURRENCIES = (1, 64)
SERVERS = ("uvicorn", "granian")


@dataclass(frozen=True)
class Options:
    seconds: float = 8.0
    repeats: int = 3
    models: tuple[str, ...] = ("gbm",)


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    lines = ["# The server under the app: uvicorn against granian (issue 15)", ""]
    with Arena() as arena:
        arena.models = [m for m in arena.models if m.key in options.models]
        for server in SERVERS:
            arena.add_stalwart(server, {"STALWART_SERVER": server})
        with arena.start():
            results = run_matrix(arena.targets(), CONCURRENCIES, seconds=options.seconds, repeats=options.repeats)
            rss = {name: _rss_mib(server.process.pid) for name, server in arena.servers.items()}
        lines += [environment_notes(options.seconds, options.repeats, servers="uvicorn and granian (STALWART_SERVER)"), ""]
        for model in arena.models:
            lines += [f"## breast-cancer v{model.version}: {model.label}", ""]
            rows = []
            for c in CONCURRENCIES:
                for server in SERVERS:
                    s = results[(server, model.key, c)]
                    rows.append([str(c), server, fmt_rps(s.rps), fmt_ms(s.p50), fmt_ms(s.p99), f"{s.cpu:.0f}", f"{s.spread:.0%}", str(s.errors)])
                ours, theirs = results[("granian", model.key, c)], results[("uvicorn", model.key, c)]
                rows.append([
                    str(c), "granian / uvicorn", f"{ours.rps / theirs.rps:.2f}x",
                    f"{ours.p50 - theirs.p50:+.2f}", f"{ours.p99 - theirs.p99:+.2f}",
                    f"{ours.cpu / theirs.cpu:.2f}x", "", "",
                ])
            header = ["c", "server", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "req/s spread", "errors"]
            lines += [markdown_table(header, rows), ""]
        lines += [
            "RSS after the runs: " + ", ".join(f"{name} {value:.0f} MiB" for name, value in rss.items()),
            "",
        ]
    return "\n".join(lines) + "\n"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

