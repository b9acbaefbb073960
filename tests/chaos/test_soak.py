"""The soak (``make soak``, 30 minutes) in a one-minute version: mixed traffic at a quarter
of the measured capacity on both entrypoints, with source writes, feedback and a rollout started
during the run; nothing leaks and nothing fails.

A minute is too short to judge slow drifts of latency on a shared machine, so this version
asserts what a minute can show (no error but load shedding's, no unanswered request, no record lost, no
descriptor growth, memory within 10 % after warm-up) and leaves the drift criteria to the
full run (docs/reliability.md)."""

from __future__ import annotations

import pytest
from benchmarks.chaos.faults import Context
from benchmarks.chaos.soak import SoakOptions, run_soak

pytestmark = pytest.mark.slow

# A quarter of the capacity measured moments before, not the full soak's half: the suite
# runs beside other jobs on two cores, where a capacity measured in five seconds overstates
# what the server keeps up for a minute (a backlog then says nothing about leaks).
SHARE = 0.25


def test_a_minute_of_mixed_traffic_leaks_nothing_and_fails_nothing(ctx: Context) -> None:
    """60 s at a quarter of capacity: /v1 and /v2, source rows, feedback, and a canary rollout
    started 10 s in (inside the warm-up: its model's memory is not a leak)."""
    options = SoakOptions(seconds=60.0, share=SHARE, sample=5.0, warmup=0.35, rollout=0.15, cards=200)
    document = run_soak(ctx.world, options)
    verdicts = {v["criterion"]: v for v in document["verdicts"]}
    windows = document["windows"]
    assert len(windows) >= 10
    assert sum(w["requests"] for w in windows) >= 0.4 * document["rate"] * options.seconds
    assert document["rollout"]["start"]["status"] == 201, document["rollout"]
    assert document["control"]["calls"] >= 50
    assert document["control"]["failed"] == {}
    for criterion in ("5xx answers other than load shedding", "requests unanswered", "prediction records lost", "open fds (not sockets) growth after warm-up"):
        assert verdicts[criterion]["passed"], verdicts[criterion]
    after = [w for w in windows if w["t"] > options.seconds * options.warmup]
    assert max(w["rss_mib"] for w in after) <= 1.10 * after[0]["rss_mib"], [w["rss_mib"] for w in windows]
    assert document["records_checked"] > 100
