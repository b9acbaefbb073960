"""Rollout histories for the report's tests, as the rollout store hands them over (a row and
its events), with every look judged by the real :class:`~stalwart.rollout.judge.Judge` on
traffic generated with numpy.

Traffic: ``RATE`` requests a minute, split by the canary's weight; errors and log-latency
drawn per arm; a look a minute, judged over the data since the rollout started (one window
per rollout, as docs/rollouts.md advises); the sample-ratio test over the current step's
counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from stalwart.rollout.judge import Arms, Judge, MetricRule, Window
from stalwart.rollout.routing import sample_ratio_mismatch
from stalwart.rollout.sequential import Moments, Proportion

START = 1_714_564_800.0  # 2024-05-01 12:00:00 UTC
RATE = 2_000  # requests a minute
NASTY = "<script>alert('x')</script>"
RULES = (
    MetricRule.rate("error_rate", max_rise=0.005),
    MetricRule.latency("latency", max_ratio_rise=0.10),
)


@dataclasses.dataclass
class _Arm:
    errors: Proportion = dataclasses.field(default_factory=Proportion)
    latency: Moments = dataclasses.field(default_factory=Moments)
    step_requests: int = 0


class _Recorder:
    """Builds one rollout's row and events, look by look."""

    def __init__(self, *, deployment: str, steps: Sequence[float], seed: int, canary_error: float, canary_slowdown: float = 1.0,
                 canary_share: float = 1.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.judge = Judge(RULES)
        self.canary_error, self.canary_slowdown, self.canary_share = canary_error, canary_slowdown, canary_share
        self.now = START
        self.step, self.weight = 0, steps[0]
        self.arms = {"primary": _Arm(), "canary": _Arm()}
        self.events: list[dict[str, Any]] = []
        self.row: dict[str, Any] = {
            "id": 7, "deployment": deployment, "canary": "fraud:4", "primary": "fraud:3", "salt": "s4lt",
            "plan": {
                "steps": [{"weight": w, "min_seconds": 600.0, "min_requests": 2_000} for w in steps],
                "look_seconds": 60.0,
                "rules": [msgspec.to_builtins(r) for r in RULES],
            },
            "state": "running", "step": 0, "weight": steps[0], "started_at": START, "step_started_at": START,
            "ended_at": None, "reason": None,
        }
        self.record("start", "cli:alice", reason="stalwart rollout start")

    def record(self, kind: str, actor: str = "controller", *, reason: str = "", weight: float | None = None,
               detail: dict[str, Any] | None = None) -> None:
        if weight is not None:
            self.weight = weight
        body = detail if detail is not None else {"reason": reason, "requests": sum(a.errors.n for a in self.arms.values())}
        self.events.append({"id": len(self.events) + 1, "rollout_id": 7, "at": self.now, "kind": kind, "actor": actor,
                            "step": self.step, "weight": self.weight, "detail": body})

    def minute(self) -> dict[str, Any]:
        """A minute of traffic, then a look at everything since the start."""
        self.now += 60.0
        canary_n = int(self.rng.binomial(RATE, self.weight * self.canary_share))
        for arm, n in (("primary", RATE - canary_n), ("canary", canary_n)):
            bad = self.canary_error if arm == "canary" else 0.01
            slow = self.canary_slowdown if arm == "canary" else 1.0
            state = self.arms[arm]
            state.errors = state.errors.add(int(self.rng.binomial(n, bad)), n)
            state.latency = state.latency.merge(Moments.of(self.rng.normal(math.log(0.020 * slow), 0.5, n)))
            state.step_requests += n
        judgement = self.judge.judge(
            {
                "error_rate": Arms(self.arms["canary"].errors, self.arms["primary"].errors),
                "latency": Arms(self.arms["canary"].latency, self.arms["primary"].latency),
            },
            window=Window(start=dt.datetime.fromtimestamp(START, dt.UTC), end=dt.datetime.fromtimestamp(self.now, dt.UTC)),
        )
        srm = sample_ratio_mismatch(
            {arm: a.step_requests for arm, a in self.arms.items()}, {"primary": 1.0 - self.weight, "canary": self.weight}
        )
        summary = {arm: _summary(a) for arm, a in self.arms.items()}
        self.record("look", detail={"judgement": judgement.to_dict(), "summary": summary, "srm": _srm(srm)})
        return judgement.to_dict()

    def next_step(self, weight: float) -> None:
        self.step += 1
        for arm in self.arms.values():
            arm.step_requests = 0
        self.record("step", reason=f"step {self.step - 1} held its minimum time and requests; every required rule passed", weight=weight)
        self.row |= {"step": self.step, "step_started_at": self.now}

    def finish(self, state: str, kind: str, reason: str, weight: float, actor: str = "controller") -> dict[str, Any]:
        self.now += 5.0
        self.record(kind, actor, reason=reason, weight=weight)
        self.row |= {"state": state, "weight": weight, "ended_at": self.now, "reason": reason}
        return {"rollout": self.row, "events": self.events}


def promoted(looks_per_step: int = 10) -> dict[str, Any]:
    """A good canary through 4 steps (5 %, 25 %, 50 %, 75 %), paused and resumed by a person
    on the way, then promoted to 100 %."""
    steps = (0.05, 0.25, 0.5, 0.75)
    rec = _Recorder(deployment="fraud", steps=steps, seed=1, canary_error=0.01)
    for i, weight in enumerate(steps):
        if i:
            rec.next_step(weight)
        for look in range(looks_per_step):
            rec.minute()
            if i == 1 and look == 2:
                rec.now += 1.0
                rec.record("pause", "cli:alice", reason="checking a dashboard")
                rec.now += 120.0
                rec.record("resume", "cli:alice", reason="dashboard fine")
    return rec.finish("promoted", "promote", "every required rule passed at the last step", 1.0)


def rolled_back() -> dict[str, Any]:
    """A canary with four times the primary's errors, whose router also lost a share of its
    requests (a sample-ratio mismatch): rolled back to 0 % once error_rate failed."""
    rec = _Recorder(deployment="fraud", steps=(0.10, 0.5), seed=2, canary_error=0.03, canary_share=0.9)
    for _ in range(60):
        judgement = rec.minute()
        if judgement["recommendation"] == "rollback":
            break
    else:  # pragma: no cover - the data make sure it fails
        raise AssertionError("the bad canary never failed")
    return rec.finish("rolled_back", "rollback", judgement["reason"], 0.0)


def just_started(deployment: str = "fraud") -> dict[str, Any]:
    """A rollout whose only event is its start: no look yet."""
    rec = _Recorder(deployment=deployment, steps=(0.05, 0.5), seed=3, canary_error=0.01)
    return {"rollout": rec.row, "events": rec.events}


def many_looks(count: int) -> dict[str, Any]:
    """``count`` looks at one step: the first look's judgement repeated with its effect
    drifting, a cheap way to a very long rollout."""
    rec = _Recorder(deployment="fraud", steps=(0.05, 0.5), seed=4, canary_error=0.01)
    template = [rec.minute() for _ in range(3)][-1]
    look = rec.events[-1]["detail"]
    for i in range(count - 3):
        rec.now += 60.0
        judgement = {**template, "verdicts": [
            {**v, "effect": (v["effect"] or 0.0) + 1e-4 * math.sin(i / 50), "n_canary": v["n_canary"] + i, "n_primary": v["n_primary"] + 19 * i}
            for v in template["verdicts"]
        ]}
        rec.record("look", detail={**look, "judgement": judgement})
    return {"rollout": rec.row, "events": rec.events}


def _summary(arm: _Arm) -> dict[str, Any]:
    n = arm.errors.n
    mean = arm.latency.mean
    sd = math.sqrt(arm.latency.variance or 0.0)
    return {
        "requests": n,
        "errors": arm.errors.events,
        "error_rate": arm.errors.rate,
        "p50_ms": None if mean is None else round(1000 * math.exp(mean), 3),
        "p99_ms": None if mean is None else round(1000 * math.exp(mean + 2.326 * sd), 3),
    }


def _srm(srm: Any) -> dict[str, Any]:
    out = dataclasses.asdict(srm)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
