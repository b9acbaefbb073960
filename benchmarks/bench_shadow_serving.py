"""Issue 14: what a shadow costs the primary's clients, through a real server.

One ``stalwart serve`` (batching on, the default) with three deployments of the demo's
``breast-cancer`` v1 (the logistic pipeline) on the same 30 request-time features:
``plain``, without shadows; ``same``, whose every request is copied to a shadow of v1
itself (on its own batcher and executor: the machinery's cost, at the same model cost); and
``shadowed``, whose every request is copied to v2 (100 gradient-boosted trees: a heavier
candidate, as a new version often is). wrk drives one deployment at a time at c=8
(``--timeout 10s``, numeric libraries pinned to one thread), the three interleaved within
each repeat; medians of the repeats. Besides the client's view (req/s, p50, p99) it
reports the server's CPU per request and how many shadow calls answered or were dropped
(by reason), from ``/metrics``.

Run from a worktree::

    PYTHONPATH=src python -m benchmarks shadow-serving --seconds 3 --repeats 5

Target: a shadowed deployment's p99 within 10 % of the plain one's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import (
    Target,
    bench_env,
    environment_notes,
    fmt_ms,
    fmt_rps,
    free_port,
    lua_script,
    markdown_table,
    run_matrix,
    running,
    stalwart_command,
    start_server,
)
from benchmarks.models import prepare_home

CONCURRENCY = 8
# (contestant, deployment, its shadow's metrics label or None)
CONTESTANTS = (
    ("no shadow", "plain", None),
    ("shadow: v1 again", "same", "same/again"),
    ("shadow: v2 (trees)", "shadowed", "shadowed/next"),
)
_PROJECT = """\
from stalwart.project import Deployment, RequestSource

row = RequestSource("row", fields={f"f{i}": "float" for i in range(30)})
FEATURES = [row.field(f"f{i}") for i in range(30)]
plain = Deployment("plain", model="breast-cancer:1", features=FEATURES)
same = Deployment("same", model="breast-cancer:1", features=FEATURES, shadows={"again": "breast-cancer:1"})
shadowed = Deployment("shadowed", model="breast-cancer:1", features=FEATURES, shadows={"next": "breast-cancer:2"})
"""
_REASONS = ("queue_full", "timeout", "error", "stuck", "closed")


@dataclass(frozen=True)
class Options:
    seconds: float = 3.0
    repeats: int = 5


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    workdir = Path(tempfile.mkdtemp(prefix="stalwart-bench-shadow-"))
    try:
        x_test = prepare_home(workdir / "home")
        (workdir / "project.py").write_text(_PROJECT)
        body = json.dumps({"entities": [{"id": 7}], "values": [{f"f{i}": float(v) for i, v in enumerate(x_test[0])}]})
        script = lua_script(workdir, body.encode())
        port = free_port()
        env = bench_env({
            "STALWART_HOME": str(workdir / "home"), "STALWART_PROJECT": str(workdir / "project.py"),
            "STALWART_LOG_FORMAT": "json", "STALWART_ACCESS_LOG": "false",
        })
        server = start_server("stalwart", stalwart_command(port), env, workdir)
        with running([server]):
            targets = {
                (name, "logistic"): Target(server, f"/v1/deployments/{deployment}/predict", script)
                for name, deployment, _ in CONTESTANTS
            }
            results = run_matrix(targets, (CONCURRENCY,), seconds=options.seconds, repeats=options.repeats)
            counts = _shadow_counts(server.url)
        plain = results[(CONTESTANTS[0][0], "logistic", CONCURRENCY)]
        rows = []
        for name, _deployment, label in CONTESTANTS:
            r = results[(name, "logistic", CONCURRENCY)]
            row = [name, fmt_rps(r.rps), fmt_ms(r.p50), fmt_ms(r.p99), f"{r.cpu:.0f}", str(r.errors)]
            if label is None:
                row += ["", "", ""]
            else:
                shadow = counts.get(label, {})
                served = sum(run.requests for run in r.runs)
                row += [
                    f"{(r.p99 / plain.p99 - 1) * 100:+.1f} %",
                    f"{shadow.get('answered', 0.0):,.0f} / {served:,}",
                    ", ".join(f"{k} {v:,.0f}" for k, v in shadow.items() if k != "answered" and v) or "none",
                ]
            rows.append(row)
        lines = [
            "# A shadow's cost to the primary's clients (issue 14)",
            "",
            environment_notes(options.seconds, options.repeats),
            "",
            f"`breast-cancer` v1 (logistic pipeline) answering at c={CONCURRENCY}, one row per request, 30 "
            "request-time features, one server; each shadowed deployment copies every request to its shadow, "
            "which runs on a batcher and executor of its own: v1 itself (the machinery's cost: same features, "
            "same model cost) or v2 (100 gradient-boosted trees: a heavier candidate). Medians of the repeats; "
            "CPU is the server's, all threads, per request; shadow calls answered are counted over every run, "
            "warm-up included, against the requests wrk measured.",
            "",
            markdown_table(
                ["deployment", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "errors", "p99 vs no shadow",
                 "shadow answered / requests", "shadow dropped"],
                rows,
            ),
            "",
        ]
        return "\n".join(lines)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _shadow_counts(url: str) -> dict[str, dict[str, float]]:
    """Per shadow label, its answered and dropped (by reason) totals from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310 - our own loopback server
        text = response.read().decode()
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("shadow")
            if label is None:
                continue
            if sample.name == "stalwart_shadow_answered_total":
                counts.setdefault(label, {})["answered"] = sample.value
            elif sample.name == "stalwart_shadow_dropped_total":
                counts.setdefault(label, {})[sample.labels["reason"]] = sample.value
    return counts
