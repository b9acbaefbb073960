"""Issue 2: the cost of Stalwart's ``/v2`` endpoint over the model call and over the
smallest Starlette endpoint that serves the same model.

One row per request, at concurrency 1, 8 and 64, side by side in one run: the model's own
``predict_proba`` in process (the floor), a minimal Starlette endpoint, and ``stalwart
serve`` with batching off (the endpoint's own overhead) and as shipped (batching on).

Targets: at concurrency 1 our p50 within 0.5 ms of the minimal endpoint; at 64, our
throughput at least 90% of it.

``--baseline REF`` adds ``stalwart serve`` as of a git commit (checked out into a temporary
worktree) as two more contestants, so a change is measured against its parent side by side
in the same run.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.contest import MINIMAL, Arena, in_process
from benchmarks.harness import (
    Series,
    environment_notes,
    fmt_ms,
    fmt_rps,
    markdown_table,
    run_matrix,
)

CONCURRENCIES = (1, 8, 64)
STALWART = "stalwart"  # batching off: the endpoint's own cost
STALWART_BATCHED = "stalwart (batching)"


@dataclass(frozen=True)
class Options:
    seconds: float = 4.0
    repeats: int = 3
    models: tuple[str, ...] = ("logistic", "gbm")
    baseline: str | None = None  # a git commit to measure beside this tree


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(_checkout(options.baseline)) if options.baseline else None
        return _run(options, baseline)


def _run(options: Options, baseline: Path | None) -> str:
    lines = ["# Serving overhead (issue 2)", ""]
    with Arena() as arena:
        arena.models = [m for m in arena.models if m.key in options.models]
        floor = {
            m.key: in_process(arena.estimator(m), arena.x_test[:1], min(options.seconds, 3.0))
            for m in arena.models
        }
        arena.add_minimal()
        arena.add_stalwart(STALWART, {"STALWART_BATCHING": "false"})
        arena.add_stalwart(STALWART_BATCHED, {"STALWART_BATCHING": "true"})
        before = (f"{STALWART}@{options.baseline}", f"{STALWART_BATCHED}@{options.baseline}")
        if baseline is not None:
            arena.add_stalwart(before[0], {"STALWART_BATCHING": "false"}, src=baseline / "src")
            arena.add_stalwart(before[1], {"STALWART_BATCHING": "true"}, src=baseline / "src")
        with arena.start():
            results = run_matrix(
                arena.targets(), CONCURRENCIES, seconds=options.seconds, repeats=options.repeats
            )
        lines += [environment_notes(options.seconds, options.repeats), ""]
        for model in arena.models:
            f = floor[model.key]
            lines += [
                f"## breast-cancer v{model.version}: {model.label}",
                "",
                f"in-process `predict_proba` on one row: {fmt_rps(f.calls_per_s)} calls/s, "
                f"p50 {f.p50_ms:.3f} ms, p99 {f.p99_ms:.3f} ms",
                "",
            ]
            rows = []
            for c in CONCURRENCIES:
                minimal = results[(MINIMAL, model.key, c)]
                row = [str(c), _cell(minimal)]
                for name in (STALWART, STALWART_BATCHED):
                    row.append(_cell(results[(name, model.key, c)]))
                for name in (STALWART, STALWART_BATCHED):
                    ours = results[(name, model.key, c)]
                    row += [f"{ours.rps / minimal.rps:.2f}x", f"{ours.p50 - minimal.p50:+.2f}"]
                errors = sum(results[(n, model.key, c)].errors for n in (MINIMAL, STALWART, STALWART_BATCHED))
                row.append(str(errors))
                rows.append(row)
            header = [
                "c", MINIMAL, f"{STALWART} (batching off)", STALWART_BATCHED,
                "off: req/s vs minimal", "off: p50 Δ ms", "batching: req/s vs minimal",
                "batching: p50 Δ ms", "errors",
            ]
            lines += [
                "Each cell: requests/s, (p50 / p99 ms), server CPU per request in µs (all "
                "threads). Medians of the runs.", "",
                markdown_table(header, rows), "",
            ]
            lines += _verdict(results, model.key)
            if baseline is not None:
                lines += _against_baseline(results, model.key, before)
    return "\n".join(lines) + "\n"


def _against_baseline(results: dict[tuple[str, str, int], Series], model: str, before: tuple[str, str]) -> list[str]:
    rows = []
    for c in CONCURRENCIES:
        row = [str(c)]
        for then, now in zip(before, (STALWART, STALWART_BATCHED), strict=True):
            old, new = results[(then, model, c)], results[(now, model, c)]
            row += [_cell(old), _cell(new), f"{new.rps / old.rps:.2f}x", f"{new.p50 - old.p50:+.2f}"]
        rows.append(row)
    header = [
        "c", f"{before[0]} (off)", "this tree (off)", "req/s ratio", "p50 Δ ms",
        before[1], "this tree (batching)", "req/s ratio", "p50 Δ ms",
    ]
    return ["Against the baseline, same run:", "", markdown_table(header, rows), ""]


@contextlib.contextmanager
def _checkout(ref: str) -> Iterator[Path]:
    """A temporary git worktree of ``ref``, removed afterwards."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="stalwart-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(path), ref], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], check=False, capture_output=True)


def _verdict(results: dict[tuple[str, str, int], Series], model: str) -> list[str]:
    out = []
    for name in (STALWART, STALWART_BATCHED):
        one = results[(name, model, 1)]
        base1 = results[(MINIMAL, model, 1)]
        many = results[(name, model, 64)]
        base64 = results[(MINIMAL, model, 64)]
        delta = one.p50 - base1.p50
        ratio = many.rps / base64.rps
        out.append(
            f"- {name}: c=1 p50 {delta:+.2f} ms vs minimal (target ≤ +0.5: "
            f"{'met' if delta <= 0.5 else 'MISSED'}); c=64 throughput {ratio:.0%} of minimal "
            f"(target ≥ 90%: {'met' if ratio >= 0.9 else 'MISSED'})"
        )
    return [*out, ""]


def _cell(series: Series) -> str:
    return f"{fmt_rps(series.rps)} ({fmt_ms(series.p50)} / {fmt_ms(series.p99)}) {series.cpu:.0f} µs"
