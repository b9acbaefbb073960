"""``python -m benchmarks [suite ...]``: run the benchmark suites and write their reports.

Suites: ``serving`` (issue 2: the endpoint's overhead), ``batching`` (issue 5: adaptive
batching on and off), ``predictions`` (issue 12: the prediction log's cost), ``drift``
(issue 13: drift scores from sketches and raw values), ``alerts`` (issue 13: false alarms
per day and detection delay), ``profiles`` (issue 13: live profiles' cost per request),
``routing`` (issue 14: canary and shadow routing's cost per request), ``shadow`` (issue 14:
shadow submits and paired comparison) and ``evidence`` (issue 14: a rollout controller's look
at the prediction log), which start no server; ``shadow-serving`` (issue 14: the
primary's latency with every request shadowed, against no shadow, through a real server);
``servers`` (issue 15: uvicorn against granian under the same app); ``workers`` (issue 15:
``stalwart serve --workers N``, N = 1, 2, 4); ``oip`` (issue 20: JSON, binary tensor data
and gRPC side by side, and the decode cost per MB); ``engines`` (issue 17: a training set of
10 features over 10 million events on numpy, DuckDB and Spark, with ``--events N`` and
``--big`` for 100 million on DuckDB); ``peers`` (issue 15: Stalwart beside the minimal
endpoint and MLServer 1.7.1, in MLServer's own virtual environment, made on first use; 10 s
per point and 2 runs unless told); and ``cluster`` (issue 16: 1, 2 and 3 replicas of the
fraud example behind nginx on shared PostgreSQL and Redis: throughput, failover, a new
version's propagation, invalidation across replicas).
With no suite named, all run. Each report is printed and written to
``benchmarks/results/<suite>-<time>.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from benchmarks import (
    batching,
    bench_alerts,
    bench_cluster,
    bench_drift,
    bench_engines,
    bench_evidence,
    bench_live_profiles,
    bench_oip,
    bench_peers,
    bench_routing,
    bench_servers,
    bench_shadow,
    bench_shadow_serving,
    bench_workers,
    prediction_tap,
    serving,
)
from benchmarks.harness import WRK, write_results, wrk_available

SUITES: dict[str, Callable[[argparse.Namespace], str]] = {
    "serving": lambda a: serving.run(
        serving.Options(seconds=a.seconds, repeats=a.repeats, models=tuple(a.models), baseline=a.baseline)
    ),
    "predictions": lambda a: prediction_tap.run(
        prediction_tap.Options(seconds=a.seconds, repeats=a.repeats, models=tuple(a.models))
    ),
    "profiles": lambda a: bench_live_profiles.run(bench_live_profiles.Options(runs=a.repeats)),
    "batching": lambda a: batching.run(
        batching.Options(
            seconds=a.seconds, repeats=a.repeats, models=tuple(a.models), profile=a.profile,
            outputs=tuple(a.outputs) if a.outputs else None,
        )
    ),
    "drift": lambda a: bench_drift.run(bench_drift.Options(repeats=a.repeats)),
    "alerts": lambda a: bench_alerts.run(bench_alerts.Options()),
    "routing": lambda a: bench_routing.run(bench_routing.Options(repeats=a.repeats)),
    "shadow": lambda a: bench_shadow.run(bench_shadow.Options(runs=a.repeats)),
    "evidence": lambda a: bench_evidence.run(bench_evidence.Options(runs=a.repeats)),
    "shadow-serving": lambda a: bench_shadow_serving.run(bench_shadow_serving.Options(seconds=a.seconds, repeats=a.repeats)),
    "peers": lambda a: bench_peers.run(bench_peers.Options(seconds=a.seconds, repeats=a.repeats)),
    "cluster": lambda a: bench_cluster.run(bench_cluster.Options(seconds=a.seconds, repeats=a.repeats)),
    "oip": lambda a: bench_oip.run(bench_oip.Options(seconds=a.seconds, repeats=a.repeats)),
    "engines": lambda a: bench_engines.run(bench_engines.Options(events=a.events, big=a.big)),
    "servers": lambda a: bench_servers.run(
        bench_servers.Options(seconds=a.seconds, repeats=a.repeats, models=tuple(a.models))
    ),
    "workers": lambda a: bench_workers.run(bench_workers.Options(seconds=a.seconds, repeats=a.repeats, workers=tuple(a.workers))),
}
# Suites that drive a server with wrk; the others run in-process.
NEEDS_WRK = frozenset({"serving", "predictions", "batching", "shadow-serving", "peers", "servers", "workers", "cluster", "oip"})
# --seconds and --repeats when not given: these, or a suite's own.
DEFAULTS = {"seconds": 3.0, "repeats": 3}
SUITE_DEFAULTS = {"peers": {"seconds": 10.0, "repeats": 2}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", metavar="suite", help=f"one of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--seconds", type=float, default=None, help="wrk duration per point (default 3; peers 10)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per point; medians are reported (default 3; peers 2)"
    )
    parser.add_argument(
        "--models", nargs="+", default=["logistic", "gbm"], choices=["logistic", "gbm"],
        help="demo models to serve (default: both)",
    )
    parser.add_argument(
        "--baseline", default=None, metavar="REF",
        help="serving suite: also run stalwart as of this git commit, side by side",
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false",
        help="skip the py-spy profile of the batching server under load",
    )
    parser.add_argument(
        "--outputs", nargs="*", default=None, choices=["predict", "predict_proba"],
        help="outputs the batching suite's requests name (default: none, so both)",
    )
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[1, 2, 4], metavar="N",
        help="workers suite: the worker counts compared (default: 1 2 4)",
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="engines suite: events in the training set")
    parser.add_argument("--big", action="store_true", help="engines suite: also DuckDB on 100 million events")
    args = parser.parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    chosen = args.suites or list(SUITES)
    if NEEDS_WRK.intersection(chosen) and not wrk_available():
        print(f"wrk is not installed at {WRK}; run 'make bench' (it installs wrk)", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"running the {name} suite…", file=sys.stderr, flush=True)
        report = SUITES[name](_with_defaults(args, name))
        path = write_results(name, report)
        print(report)
        print(f"(written to {path})", file=sys.stderr)
    return 0


def _with_defaults(args: argparse.Namespace, suite: str) -> argparse.Namespace:
    """``args`` with what was not given filled in by the suite's defaults."""
    filled = argparse.Namespace(**vars(args))
    for key, value in {**DEFAULTS, **SUITE_DEFAULTS.get(suite, {})}.items():
        if getattr(filled, key) is None:
            setattr(filled, key, value)
    return filled


if __name__ == "__main__":
    sys.exit(main())
