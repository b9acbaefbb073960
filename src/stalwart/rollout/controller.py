"""The rollout controller: looks at every running rollout, judges its canary, moves it.

One process at a time controls rollouts, whichever replica holds the database lock
(:class:`~stalwart.storage.leadership.Leadership`); the others stand by. Everything a
controller knows is in the database (the rollout's row, its evidence so far, its events),
so a controller that dies mid-rollout is replaced by another, which resumes from the last
look that was written.

**A look** (every ``plan.look_seconds``), for one rollout at step *k* with weight *w*:

1. Read the prediction log's new records of the deployment, from the step's start (plus
   :data:`SETTLE_SECONDS`, so that requests routed at the old weight before every replica
   saw the new one are not judged) up to ``now - lag`` (``stalwart.rollout.evidence``
   explains the lag), into the step's running tallies.
2. Judge the canary against the primary on every rule (``stalwart.rollout.judge``:
   anytime-valid intervals, so looking every few seconds does not inflate false rollbacks
   or promotions), with accuracy where labels have arrived; test the sample ratio.
3. Decide, the first that applies:

   - **rollback**: a rule that rolls back failed;
   - **hold** (for a person): a rule that holds failed, the sample ratio is off (the
     comparison cannot be trusted), or the step is still undecided after
     ``plan.max_step_seconds``;
   - **step** (the next weight) or **promote** (after the last step): every required
     rule passed, the step lasted ``min_seconds`` and the canary answered ``min_requests``
     in it;
   - **continue** otherwise.

4. Write the look (its judgement, each arm's summary, the SRM test) and the decision to
   the rollout's events, the new evidence to its row, the routes' change (every replica
   serves it within a poll) and the decision to the audit log, in one transaction.

Each step is judged on its own window: a canary may be fine at 5 % and not at 50 % (load,
cache), and the rules' error rates hold per step (so over a rollout of *k* steps, at most
*k* times the per-step rate: ``docs/rollouts.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from stalwart.errors import StalwartError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.quality import OutputReading
from stalwart.project import Project
from stalwart.rollout.evidence import Evidence, accuracy, latency_threshold
from stalwart.rollout.judge import Judge, Judgement
from stalwart.rollout.plan import RolloutPlan
from stalwart.rollout.rollouts import Rollout, RolloutStore
from stalwart.rollout.routing import sample_ratio_mismatch
from stalwart.rollout.sequential import Proportion
from stalwart.storage.leadership import Leadership

__all__ = ["SETTLE_SECONDS", "Controller", "ControllerLoop", "Look", "plan_of"]

_log = get_logger("stalwart.rollout")

# Spells "stalroll": the controller's advisory lock on PostgreSQL (the alerts have another).
_LOCK_ID = 0x7374616C726F6C6C - (1 << 63)
_LEASE = "rollouts"
# Routes reach every replica within a poll (0.5 s by default): records from the first
# seconds of a step may still come from the old weight, and would skew the sample ratio.
SETTLE_SECONDS = 2.0


class Look(msgspec.Struct, frozen=True):
    """One look's outcome: what was decided, why, and the numbers (the event's detail)."""

    decision: str  # continue | step | promote | hold | rollback
    reason: str
    detail: dict[str, Any]


class Controller:
    """Judges and moves every running rollout, when this process leads."""

    def __init__(
        self,
        store: RolloutStore,
        project: Project,
        *,
        lag_seconds: float,
        leadership: Leadership | None = None,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.store = store
        self.project = project
        self.lag_seconds = lag_seconds
        self.settle_seconds = settle_seconds
        self.leadership = leadership or Leadership(store.db, _LEASE, lock_id=_LOCK_ID, lease_seconds=30.0)
        self._looked: dict[int, float] = {}  # rollout id -> when this process last looked
        # Reading labels costs ~30 µs per labelled row (evidence.accuracy): once a minute per
        # rollout and step, not at every look; labels arrive slowly anyway.
        self._accuracy: dict[tuple[int, int], tuple[float, dict[str, Proportion]]] = {}

    def tick(self, now: float | None = None) -> list[Rollout]:
        """Look at each running rollout that is due, if this process leads; the rollouts
        it changed (a step, a decision, or only new evidence)."""
        now = time.time() if now is None else now
        if not self.leadership.lead(now):
            self._looked.clear()  # a new leader looks at once; so will this one if it leads again
            return []
        moved = []
        for rollout in self.store.running():
            if now - self._looked.get(rollout.id, 0.0) < rollout.plan.look_seconds:
                continue
            self._looked[rollout.id] = now
            try:
                updated = self.look(rollout, now)
            except StalwartError as exc:
                _log.warning("a rollout look failed; trying again at the next", rollout=rollout.id, error=exc.message)
                continue
            if updated is not None:
                moved.append(updated)
        return moved

    def look(self, rollout: Rollout, now: float) -> Rollout | None:
        """Judge ``rollout`` now and write the look and its decision (None when the rollout
        changed meanwhile: a person paused it)."""
        look, evidence = self.judge(rollout, now)
        updated = self.store.record_look(
            rollout, decision=look.decision, detail=look.detail, evidence=evidence.to_dict(), now=now, reason=look.reason
        )
        if updated is not None and look.decision != "continue":
            _log.info(
                "rollout decision", deployment=rollout.deployment, rollout=rollout.id, decision=look.decision,
                reason=look.reason, step=updated.step, weight=updated.weight,
            )
        return updated

    def judge(self, rollout: Rollout, now: float) -> tuple[Look, Evidence]:
        """The look at ``rollout`` now and the evidence it rests on (nothing written)."""
        db = self.store.db
        name = rollout.deployment
        deployment = self.project.deployments.get(name)
        reading = OutputReading.from_mapping(deployment.quality if deployment is not None else None, f"deployment '{name}'")
        step_start_ns = int((rollout.step_started_at + self.settle_seconds) * 1e9)
        if rollout.evidence:
            evidence = Evidence.from_dict(rollout.evidence)
        else:
            evidence = Evidence(step_start_ns, slow_ms=latency_threshold(db, name, int(rollout.step_started_at * 1e9)))
        until_ns = int((now - self.lag_seconds) * 1e9)
        if until_ns >= evidence.start_ns:
            evidence.advance(db, name, until_ns, reading=reading)
        rules = rollout.plan.judged_by()
        if evidence.slow_ms is None:
            rules = tuple(r for r in rules if r.name != "tail_latency")
        labelled = self._labelled(rollout, evidence, reading, now)
        judgement = Judge(rules).judge(evidence.observations(labelled, rules=rules), window=evidence.window())
        counts = {arm: tally.requests for arm, tally in evidence.tallies.items()}
        weight = rollout.weight
        srm = sample_ratio_mismatch(counts, {"primary": 1.0 - weight, "canary": weight})
        decision, reason = _decide(rollout, judgement, srm.mismatch, counts["canary"], now)
        detail = {
            "judgement": judgement.to_dict(),
            "summary": evidence.summary(),
            "srm": {"chi2": srm.chi2, "p_value": srm.p_value, "mismatch": srm.mismatch, "total": srm.total},
            "elapsed_seconds": round(now - rollout.step_started_at, 3),
        }
        return Look(decision, reason, detail), evidence


    def _labelled(self, rollout: Rollout, evidence: Evidence, reading: OutputReading, now: float) -> dict[str, Proportion]:
        key = (rollout.id, rollout.step)
        cached = self._accuracy.get(key)
        if cached is not None and now - cached[0] < _ACCURACY_EVERY_SECONDS:
            return cached[1]
        found = accuracy(self.store.db, rollout.deployment, evidence.start_ns, max(evidence.watermark_ns, evidence.start_ns), reading)
        self._accuracy = {k: v for k, v in self._accuracy.items() if k[0] != rollout.id}  # older steps' go
        self._accuracy[key] = (now, found)
        return found


_ACCURACY_EVERY_SECONDS = 60.0


def _decide(rollout: Rollout, judgement: Judgement, srm: bool, canary_requests: int, now: float) -> tuple[str, str]:
    plan = rollout.plan
    step = plan.steps[rollout.step]
    elapsed = now - rollout.step_started_at
    failed = [v for v in judgement.verdicts if v.decision == "fail"]
    why = "; ".join(f"{v.metric}: {v.reason}" for v in failed)
    if judgement.recommendation == "rollback":
        return "rollback", f"the canary failed {why}"
    if judgement.recommendation == "hold":
        return "hold", f"the canary failed a rule that holds for a person: {why}"
    if srm:
        return "hold", (
            f"sample ratio mismatch: {canary_requests} canary requests is not the {step.weight:.0%} the weight gives; "
            "the comparison cannot be trusted until the cause is found (a variant dropping or duplicating requests, "
            "replicas routing differently)"
        )
    if judgement.recommendation == "promote":
        waiting = []
        if elapsed < step.min_seconds:
            waiting.append(f"{step.min_seconds - elapsed:.0f} s more of the step's minimum {step.min_seconds:g} s")
        if canary_requests < step.min_requests:
            waiting.append(f"{step.min_requests - canary_requests} more canary requests of the step's {step.min_requests}")
        if not waiting:
            last = rollout.step + 1 >= len(plan.steps)
            return ("promote" if last else "step"), (
                f"every required rule passed at {step.weight:.0%} over {elapsed:.0f} s and {canary_requests} canary requests"
            )
        reason = "every required rule passed; waiting for " + " and ".join(waiting)
    else:
        reason = judgement.reason
    if elapsed > plan.max_step_seconds:
        return "hold", f"step {rollout.step + 1} is still undecided after {elapsed:.0f} s (max_step_seconds {plan.max_step_seconds:g}): {reason}"
    return "continue", reason


class ControllerLoop:
    """Runs a :class:`Controller` on a worker thread every ``tick_seconds`` while the server runs."""

    def __init__(self, controller: Controller, *, tick_seconds: float = 1.0) -> None:
        self.controller = controller
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stalwart-rollout-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.controller.leadership.release)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.controller.tick)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad look; logged with its traceback
                _log.exception("the rollout controller's tick failed")
            await asyncio.sleep(self.tick_seconds)


def plan_of(declared: Mapping[str, Any] | None, where: str) -> RolloutPlan:
    """A deployment's declared plan (``Deployment(rollout=...)``), checked with its rules."""
    plan = RolloutPlan.parse(declared, where)
    plan.judged_by()
    return plan
