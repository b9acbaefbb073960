"""Running faults: one at a time (before, during, after, each bounded in time), and
cumulatively (the degradation curve), with the probe's requests scored against the healthy
answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.chaos.faults import (
    Context,
    Fault,
    ModelFault,
    PostgresKilled,
    RedisKilled,
    TableVanishes,
)
from benchmarks.chaos.scoring import Score, recovery_seconds, score
from benchmarks.chaos.traffic import PATH, Answer, Probe, Sample, baseline
from benchmarks.chaos.world import World
from benchmarks.harness import WRK, parse_wrk

__all__ = ["Timing", "measure_capacity", "run_curve", "run_fault"]


@dataclass(frozen=True)
class Timing:
    """Seconds of each phase and the probe's rate (requests/s)."""

    rate: float = 40.0
    before: float = 3.0
    during: float = 10.0
    after: float = 20.0  # at most: a fault's run ends once 2 s of healthy answers follow its clearing
    step: float = 10.0  # each step of the curve
    timeout: float = 10.0  # a probe request unanswered this long counts as no answer


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure_capacity(url: str, pool: Sequence[bytes], workdir: Path, *, seconds: float = 5.0, connections: int = 32) -> float:
    """Answers per second the server gives at ``connections`` concurrent clients (wrk,
    closed loop, the pool's bodies in turn): the capacity the overload faults multiply."""
    bodies = ",\n".join(f"[[{b.decode()}]]" for b in pool[:200])
    script = workdir / "capacity.lua"
    script.write_text(
        f"local bodies = {{\n{bodies}\n}}\nlocal i = 0\n"
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'request = function()\n  i = i + 1\n  return wrk.format(nil, "{PATH}", nil, bodies[(i % #bodies) + 1])\nend\n'
    )
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", "-s", str(script), url + PATH]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    result = parse_wrk(done.stdout)
    return (result.requests - result.non2xx) / seconds


def _wait_recovered(probe: Probe, cleared: float, limit: float) -> None:
    """Until 2 s of healthy answers follow ``cleared``, or ``limit`` seconds pass."""
    deadline = cleared + limit
    while time.monotonic() < deadline:
        time.sleep(0.5)
        samples = list(probe.samples)
        at = recovery_seconds(samples, cleared)
        if at is not None and samples and max(s.due for s in samples) >= cleared + at + 2.0:
            return


def run_fault(ctx: Context, fault: Fault, healthy: Sequence[Answer] | None, timing: Timing, offset: int = 0) -> tuple[Score, int]:
    """One fault through the probe: ``timing.before`` healthy, ``timing.during`` faulty,
    then until recovered (at most ``timing.after``). Returns its score and where the next
    probe should start in the pool."""
    probe = Probe(ctx.url, ctx.pool, timing.rate, timing.timeout, offset=offset).start()
    try:
        time.sleep(timing.before)
        injected = time.monotonic()
        fault.inject(ctx)
        try:
            time.sleep(max(0.0, injected + timing.during - time.monotonic()))
        finally:
            cleared = time.monotonic()
            fault.clear(ctx)
        _wait_recovered(probe, cleared, timing.after)
    finally:
        samples = probe.stop()
    during = [s for s in samples if injected <= s.due < cleared]
    result = score(fault.name, during, healthy)
    result.recovery_s = recovery_seconds(samples, cleared)
    result.records_late, result.records_lost = _lost(ctx.world, samples, ctx.records_db)
    result.note = fault.note()
    return result, probe.next_index


def _lost(world: World, samples: Sequence[Sample], db_url: str | None = None) -> tuple[int, int]:
    """Answered requests whose record is not in the log 30 s after the fault (late), and of
    those, the ones still missing after 90 s more (lost)."""
    answered = [s.request_id for s in samples if s.status == 200 and s.request_id]
    missing = sorted(set(answered) - world.stored(answered, db_url=db_url))
    if not missing:
        return 0, 0
    arrived = world.stored(missing, timeout=90.0, db_url=db_url)
    return len(missing), len(missing) - len(arrived)


@dataclass
class _Step:
    name: str
    inject: Callable[[], None]
    clear: Callable[[], None]


def run_curve(ctx: Context, healthy: Sequence[Answer] | None, timing: Timing, offset: int = 0) -> dict[str, Any]:
    """Faults added one after another (source down → Redis down → primary model down →
    PostgreSQL down), ``timing.step`` seconds each, the probe scored per step; then all
    cleared (newest first) and the prediction log checked for every answered request."""
    faults: list[Fault] = [
        TableVanishes(), RedisKilled(), ModelFault("model-down", "raise", "the primary model raises"), PostgresKilled(),
    ]
    names = ["healthy", "source down", "+ Redis down", "+ primary model down", "+ PostgreSQL down"]
    steps = [_Step(names[0], lambda: None, lambda: None)] + [
        _Step(name, (lambda f=f: f.inject(ctx)), (lambda f=f: f.clear(ctx))) for name, f in zip(names[1:], faults, strict=True)
    ]
    probe = Probe(ctx.url, ctx.pool, timing.rate, offset=offset).start()
    windows: list[tuple[str, float, float]] = []
    injected: list[_Step] = []
    try:
        for step in steps:
            say(f"  curve: {step.name}")
            start = time.monotonic()
            step.inject()
            injected.append(step)
            time.sleep(max(0.0, start + timing.step - time.monotonic()))
            windows.append((step.name, start, time.monotonic()))
    finally:
        for step in reversed(injected):
            step.clear()
        cleared = time.monotonic()
        _wait_recovered(probe, cleared, max(timing.after, 30.0))
        samples = probe.stop()
    scored = [score(name, [s for s in samples if a <= s.due < b], healthy) for name, a, b in windows]
    late, lost = _lost(ctx.world, samples)
    return {
        "steps": [s.as_dict() for s in scored],
        "records_late": late,
        "records_lost": lost,
        "recovery_s": recovery_seconds(samples, cleared),
        "next": probe.next_index,
    }


def healthy_answers(world: World, pool: Sequence[bytes]) -> list[Answer]:
    """The reference server's answers to the whole pool."""
    with world.reference() as reference:
        return baseline(reference.url, pool)
