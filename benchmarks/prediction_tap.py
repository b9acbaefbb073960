"""Issue 12: what recording every request costs the request path.

``stalwart serve`` (batching on, the default) with the prediction log off, in ``async``
mode (the default: records spooled within 50 ms of the answer, delivered to SQLite) and in
``sync`` mode (each record fsynced to the spool before its answer, group commit), side by
side in one run, one row per request, at concurrency 1 and 64.

Target: the tap adds under 20 µs p50 per request (async against off).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.contest import Arena
from benchmarks.harness import environment_notes, fmt_ms, fmt_rps, markdown_table, run_matrix

CONCURRENCIES = (1, 64)
OFF = "log off"
ASYNC = "log async"
SYNC = "log sync"


@dataclass(frozen=True)
class Options:
    seconds: float = 3.0
    repeats: int = 3
    models: tuple[str, ...] = ("logistic",)


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    lines = ["# The prediction log's cost (issue 12)", ""]
    with Arena() as arena:
        arena.models = [m for m in arena.models if m.key in options.models]
        arena.add_stalwart(OFF, {"STALWART_PREDICTION_LOG": "off"})
        arena.add_stalwart(ASYNC, {"STALWART_PREDICTION_LOG": "sql", "STALWART_PREDICTION_LOG_MODE": "async"})
        arena.add_stalwart(SYNC, {"STALWART_PREDICTION_LOG": "sql", "STALWART_PREDICTION_LOG_MODE": "sync"})
        with arena.start():
            results = run_matrix(arena.targets(), CONCURRENCIES, seconds=options.seconds, repeats=options.repeats)
        lines += [environment_notes(options.seconds, options.repeats), ""]
        for model in arena.models:
            rows = []
            for c in CONCURRENCIES:
                off = results[(OFF, model.key, c)]
                row = [str(c)]
                for name in (OFF, ASYNC, SYNC):
                    r = results[(name, model.key, c)]
                    row.append(f"{fmt_rps(r.rps)} ({fmt_ms(r.p50)} / {fmt_ms(r.p99)}) {r.cpu:.0f} µs")
                for name in (ASYNC, SYNC):
                    r = results[(name, model.key, c)]
                    row += [f"{(r.p50 - off.p50) * 1000:+.0f} µs", f"{r.rps / off.rps:.2f}x", f"{r.cpu - off.cpu:+.0f} µs"]
                rows.append(row)
            header = [
                "c", OFF, ASYNC, SYNC,
                "async: p50 Δ", "async: req/s vs off", "async: CPU Δ/req",
                "sync: p50 Δ", "sync: req/s vs off", "sync: CPU Δ/req",
            ]
            lines += [
                f"## breast-cancer v{model.version}: {model.label}", "",
                "Each cell: requests/s, (p50 / p99 ms), server CPU per request (all threads: the "
                "writer thread's work included). Medians of the runs.", "",
                markdown_table(header, rows), "",
            ]
    return "\n".join(lines) + "\n"
