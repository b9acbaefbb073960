"""Validation benchmarks (issue: validate every request against a learned schema).

On scikit-learn's breast-cancer data (30 numeric features), with the schema inferred
from the training rows:

- One row: validating it (one ``[1, 30]`` matrix, and 30 one-value columns), the whole
  ValidationStage with its metrics, and a row that breaks a rule and is clipped; beside
  the model call itself (GradientBoostingClassifier.predict_proba on that row).
  p50 and p99 of single calls, median over runs.
- A 10,000-row batch: validated as a matrix and as 30 columns, clean and with 1% of the
  values out of range (clipped); beside predict_proba on the same rows and beside a
  per-value Python loop over the same checks (what "not vectorised" costs).

Run: ``PYTHONPATH=src python -m benchmarks.bench_validation`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _single_call_percentiles(fn: Callable[[], object], calls: int, runs: int) -> tuple[float, float]:
    """Median over runs of the p50 and p99 of single calls, in microseconds."""
    p50s, p99s = [], []
    timer = time.perf_counter_ns
    for _ in range(runs):
        samples = np.empty(calls)
        for i in range(calls):
            start = timer()
            fn()
            samples[i] = timer() - start
        p50s.append(float(np.percentile(samples, 50)) / 1000)
        p99s.append(float(np.percentile(samples, 99)) / 1000)
    return statistics.median(p50s), statistics.median(p99s)


def _batch_median(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` over runs, in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _drive(coro: Any) -> None:
    """Run a coroutine that never suspends, without an event loop's per-call overhead."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the stage suspended; benchmark it under an event loop")  # pragma: no cover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs")
    args = parser.parse_args()
    calls, runs, batch_runs = (2_000, 3, 3) if args.quick else (20_000, 5, 7)

    from prometheus_client import CollectorRegistry
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    from stalwart.pipeline import Exchange
    from stalwart.validation.policy import PolicyOverrides
    from stalwart.validation.schema import infer_schema
    from stalwart.validation.stage import ValidationMetrics, ValidationStage
    from stalwart.validation.validator import Validator

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"])
    x_train, _x_test, y_train, _y_test = train_test_split(
        frame, data.target, test_size=0.25, random_state=7, stratify=data.target
    )
    names = list(frame.columns)
    model = GradientBoostingClassifier(random_state=7).fit(x_train.to_numpy(), y_train)
    schema = infer_schema(x_train)
    matrix_validator = Validator(schema, matrix="input-0")
    column_validator = Validator(schema)
    clipping = Validator(schema, matrix="input-0", policies=PolicyOverrides(default="clip"))

    train = x_train.to_numpy()
    row = train[:1].copy()
    one_matrix = {"input-0": row}
    one_columns = {name: row[:, j].copy() for j, name in enumerate(names)}
    bad_row = row.copy()
    bad_row[0, 3] = 1e6
    one_bad = {"input-0": bad_row}

    async def nothing(_exchange: Exchange) -> None:
        return None

    stage = ValidationStage(matrix_validator, nothing, deployment="bench", metrics=ValidationMetrics(CollectorRegistry()))

    def stage_call() -> None:
        _drive(stage(Exchange(request_id="r", inputs=one_matrix, rows=1, outputs=("predict_proba",))))

    checks = [matrix_validator.validate(one_matrix)[1].ok, column_validator.validate(one_columns)[1].ok]
    if not all(checks):
        raise SystemExit("the benchmark row does not pass its own schema")

    one = {
        "validate 1 row, [1, 30] matrix": _single_call_percentiles(lambda: matrix_validator.validate(one_matrix), calls, runs),
        "validate 1 row, 30 columns": _single_call_percentiles(lambda: column_validator.validate(one_columns), calls, runs),
        "ValidationStage (+ metrics), 1 row": _single_call_percentiles(stage_call, calls, runs),
        "validate 1 row, 1 value clipped": _single_call_percentiles(lambda: clipping.validate(one_bad), calls, runs),
        "model: predict_proba, 1 row": _single_call_percentiles(lambda: model.predict_proba(row), calls // 4, runs),
    }

    rng = np.random.default_rng(7)
    batch = train[rng.integers(0, len(train), 10_000)]
    batch_matrix = {"input-0": batch}
    batch_columns = {name: np.ascontiguousarray(batch[:, j]) for j, name in enumerate(names)}
    dirty = batch.copy()
    hit = rng.random(dirty.shape) < 0.01
    dirty[hit] = 1e6
    dirty_matrix = {"input-0": dirty}
    dirty_columns = {name: np.ascontiguousarray(dirty[:, j]) for j, name in enumerate(names)}
    clip_columns = Validator(schema, policies=PolicyOverrides(default="clip"))
    accepts = [check.accept for check in column_validator.checks]

    def python_loop() -> bool:
        ok = True
        for values in batch.tolist():
            for accept, value in zip(accepts, values, strict=True):
                ok &= accept(value)
        return ok

    many = {
        "validate 10k rows, matrix": _batch_median(lambda: matrix_validator.validate(batch_matrix), batch_runs),
        "validate 10k rows, 30 columns": _batch_median(lambda: column_validator.validate(batch_columns), batch_runs),
        "validate 10k rows, matrix, 1% clipped": _batch_median(lambda: clipping.validate(dirty_matrix), batch_runs),
        "validate 10k rows, columns, 1% clipped": _batch_median(lambda: clip_columns.validate(dirty_columns), batch_runs),
        "per-value Python loop, same checks": _batch_median(python_loop, batch_runs),
        "model: predict_proba, 10k rows": _batch_median(lambda: model.predict_proba(batch), batch_runs),
    }

    model_one = one["model: predict_proba, 1 row"][0]
    print(f"one row ({calls} calls x {runs} runs; p50/p99 in us; ratio = p50 / model p50)")
    for label, (p50, p99) in one.items():
        print(f"  {label:<38} p50 {p50:8.1f}  p99 {p99:8.1f}  ratio {p50 / model_one:6.3f}")
    model_many = many["model: predict_proba, 10k rows"]
    print(f"10,000 rows (median of {batch_runs} runs; ms; ratio = time / model time)")
    for label, ms in many.items():
        print(f"  {label:<38} {ms:9.2f} ms  ratio {ms / model_many:6.3f}")


if __name__ == "__main__":
    main()
