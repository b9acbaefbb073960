"""Issue 5: adaptive batching on and off, beside the minimal Starlette endpoint.

One row per request at concurrency 1, 8, 64 and 256, in one run: the minimal endpoint
(model called inline), the same endpoint without the model (what HTTP and JSON alone
allow here), and ``stalwart serve`` with batching off, adaptive (the default) and with a
fixed wait. Then a py-spy profile of the adaptive server at concurrency 64.

Targets: at concurrency 1 batching costs under 0.2 ms p50; at 64, at least 5x the
requests/s of the unbatched path with p99 under 50 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.contest import MINIMAL, Arena
from benchmarks.harness import (
    Series,
    Target,
    environment_notes,
    fmt_ms,
    fmt_rps,
    markdown_table,
    metric_sums,
    run_matrix,
)
from benchmarks.models import MODEL, infer_path
from benchmarks.profile import profile_under_load

CONCURRENCIES = (1, 8, 64, 256)
NO_MODEL = "starlette, no model"
OFF = "stalwart, batching off"
ADAPTIVE = "stalwart, adaptive"
FIXED = "stalwart, fixed wait"
STALWART = (OFF, ADAPTIVE, FIXED)


@dataclass(frozen=True)
class Options:
    seconds: float = 3.0
    repeats: int = 3
    models: tuple[str, ...] = ("logistic", "gbm")
    profile: bool = True
    outputs: tuple[str, ...] | None = None  # None: the request names none (both outputs)


def _batch_probe(target: Target) -> tuple[float, float]:
    version = target.path.split("/versions/")[1].split("/")[0]
    labels = f'model="{MODEL}",version="{version}"'
    rows, calls = metric_sums(
        target.server, ["stalwart_batch_rows_sum", "stalwart_batch_rows_count"], labels
    )
    return rows, calls


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    lines = ["# Adaptive batching (issue 5)", ""]
    with Arena(outputs=options.outputs) as arena:
        arena.models = [m for m in arena.models if m.key in options.models]
        minimal = arena.add_minimal()
        arena.add_stalwart(OFF, {"STALWART_BATCHING": "false"})
        arena.add_stalwart(ADAPTIVE, {"STALWART_BATCHING": "true"})
        arena.add_stalwart(FIXED, {"STALWART_BATCHING": "true", "STALWART_BATCH_ADAPTIVE": "false"})
        targets = arena.targets()
        first = arena.models[0]
        targets[(NO_MODEL, first.key)] = Target(minimal, "/no-model" + infer_path(first.version), arena.script)
        with arena.start():
            results = run_matrix(
                targets, CONCURRENCIES, seconds=options.seconds, repeats=options.repeats,
                probe=lambda t: _batch_probe(t) if t.server.name in (ADAPTIVE, FIXED) else (0.0, 0.0),
            )
            profiles = []
            profile_error = ""
            if options.profile:
                try:
                    for model in arena.models:
                        target = targets[(ADAPTIVE, model.key)]
                        profiles.append(
                            (model, profile_under_load(target, connections=64, seconds=5, workdir=arena.workdir))
                        )
                except (RuntimeError, OSError) as exc:
                    profile_error = f"py-spy could not profile the server: {exc}"
        lines += [
            environment_notes(options.seconds, options.repeats),
            "- stalwart defaults: STALWART_MAX_BATCH_SIZE=64, STALWART_MAX_BATCH_WAIT_MS=2; "
            "'fixed wait' is STALWART_BATCH_ADAPTIVE=false",
            f"- request body: {arena.body.decode()[:60]}… ("
            + ("outputs " + ", ".join(options.outputs) if options.outputs else
               "no output selection: predict and predict_proba, as the demo's curl example")
            + "); the minimal endpoint computes the same outputs",
            "",
        ]
        ceiling = {c: results[(NO_MODEL, first.key, c)] for c in CONCURRENCIES}
        for model in arena.models:
            lines += [f"## breast-cancer v{model.version}: {model.label}", ""]
            rows = []
            for c in CONCURRENCIES:
                base = results[(MINIMAL, model.key, c)]
                off = results[(OFF, model.key, c)]
                row = [str(c), _cell(ceiling[c]), _cell(base)]
                for name in STALWART:
                    row.append(_cell(results[(name, model.key, c)]))
                adaptive = results[(ADAPTIVE, model.key, c)]
                fixed = results[(FIXED, model.key, c)]
                row += [
                    f"{adaptive.rps / off.rps:.2f}x",
                    f"{adaptive.rps / base.rps:.2f}x",
                    _rows(adaptive), _rows(fixed),
                    str(sum(results[(n, model.key, c)].errors for n in (MINIMAL, *STALWART))),
                ]
                rows.append(row)
            header = [
                "c", f"{NO_MODEL} (ceiling)", MINIMAL, *STALWART,
                "adaptive vs off", "adaptive vs minimal", "rows/call adaptive", "rows/call fixed", "errors",
            ]
            lines += [
                "Each cell: requests/s, (p50 / p99 ms), server CPU per request in µs (all "
                "threads; steadier than requests/s on a shared machine). Medians of the runs.", "",
                markdown_table(header, rows), "",
            ]
            lines += _verdict(results, model.key)
        if profile_error:
            lines += [profile_error, ""]
        for model, profile in profiles:
            lines += [
                f"## Profile: adaptive batching, breast-cancer v{model.version}, c=64",
                "",
                f"py-spy (250 Hz, idle included) during wrk: {fmt_rps(profile.load.requests_per_s)} "
                f"req/s, p50 {profile.load.p50_ms:.2f} ms, p99 {profile.load.p99_ms:.2f} ms. "
                "A sample is 'waiting' when its innermost frame is a wait (a lock, a queue, "
                "a poll); uvloop's own C code (polling sockets, parsing HTTP, scheduling) "
                "shows as its caller `Runner.run`.",
                "",
                profile.text,
                "",
            ]
    return "\n".join(lines) + "\n"


def _cell(series: Series) -> str:
    return f"{fmt_rps(series.rps)} ({fmt_ms(series.p50)} / {fmt_ms(series.p99)}) {series.cpu:.0f} µs"


def _rows(series: Series) -> str:
    return "-" if series.probe is None else f"{series.probe:.1f}"


def _verdict(results: dict[tuple[str, str, int], Series], model: str) -> list[str]:
    cost = results[(ADAPTIVE, model, 1)].p50 - results[(OFF, model, 1)].p50
    speedup = results[(ADAPTIVE, model, 64)].rps / results[(OFF, model, 64)].rps
    p99 = results[(ADAPTIVE, model, 64)].p99
    return [
        f"- c=1: adaptive batching costs {cost:+.3f} ms p50 over batching off "
        f"(target < 0.2 ms: {'met' if cost < 0.2 else 'MISSED'})",
        f"- c=64: adaptive batching serves {speedup:.2f}x the requests/s of batching off "
        f"(target ≥ 5x: {'met' if speedup >= 5 else 'MISSED'}), p99 {p99:.1f} ms "
        f"(target < 50 ms: {'met' if p99 < 50 else 'MISSED'})",
        "",
    ]
