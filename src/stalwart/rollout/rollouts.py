"""Rollouts in the database: starting one, its state, its events, and every change to it.

A rollout takes a deployment's canary from its first step's weight to promotion (or back to
nothing) under a :class:`~stalwart.rollout.plan.RolloutPlan`. Its row in ``rollouts`` says
where it stands; ``rollout_events`` keeps every look and decision with its numbers. The
controller (``stalwart.rollout.controller``) moves running rollouts; people move them with
``stalwart rollout ...`` or the admin API, through the same methods here. Each change is one
transaction: the rollout's row, its event, the deployment's routes (which every replica
polls) and, for a decision, an audit event, together or not at all.

States and who moves them::

    running --pause--> paused --resume--> running
    running --(controller: a rule that holds failed; SRM; a step undecided too long)--> held
    held --resume--> running
    running | paused | held --promote--> promoted      (the canary becomes the primary)
    running | paused | held --rollback--> rolled_back  (the canary gets no more traffic)

``promoted`` and ``rolled_back`` are final. A deployment has at most one rollout that is not
final; starting another while one is open is a :class:`~stalwart.errors.RolloutConflict`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
from sqlalchemy import Connection, select

from stalwart.errors import ConfigError, RolloutConflict
from stalwart.hashing import normalise
from stalwart.project import parse_model_ref
from stalwart.registry.audit import append_event
from stalwart.rollout.plan import RolloutPlan
from stalwart.rollout.routes import Routes, RouteStore, new_salt
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["FINAL", "OPEN", "Rollout", "RolloutStore", "State"]

State = Literal["running", "paused", "held", "promoted", "rolled_back"]
OPEN: tuple[State, ...] = ("running", "paused", "held")
FINAL: tuple[State, ...] = ("promoted", "rolled_back")


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """One rollout as its row holds it."""

    id: int
    deployment: str
    canary: str
    primary: str
    salt: str
    plan: RolloutPlan
    state: State
    step: int
    weight: float
    started_at: float
    step_started_at: float
    updated_at: float
    ended_at: float | None = None
    reason: str | None = None
    evidence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the controller's evidence state (large, internal)."""
        data = {f: getattr(self, f) for f in self.__struct_fields__ if f not in ("plan", "evidence")}
        # The rules as judged (the defaults with the plan's overrides), for people and reports.
        data["plan"] = {**self.plan.to_dict(), "rules": [msgspec.to_builtins(r) for r in self.plan.judged_by()]}
        return data


class RolloutStore:
    """Rollouts and their events; every change goes through here."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.routes = RouteStore(db)

    # -- reading -----------------------------------------------------------------------

    def get(self, rollout_id: int) -> Rollout:
        with self.db.read() as conn:
            row = conn.execute(select(t.rollouts).where(t.rollouts.c.id == rollout_id)).one_or_none()
        if row is None:
            raise RolloutConflict(f"no rollout {rollout_id}")
        return _rollout(row)

    def latest(self, deployment: str) -> Rollout | None:
        """The deployment's open rollout, else its last one, else None."""
        table = t.rollouts
        with self.db.read() as conn:
            row = conn.execute(
                select(table).where(table.c.deployment == deployment).order_by(table.c.id.desc()).limit(1)
            ).one_or_none()
        return _rollout(row) if row is not None else None

    def of(self, deployment: str, *, limit: int = 50) -> list[Rollout]:
        """The deployment's rollouts, newest first: at most ``limit`` of them."""
        table = t.rollouts
        query = select(table).where(table.c.deployment == deployment).order_by(table.c.id.desc()).limit(max(1, min(limit, 1000)))
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [_rollout(row) for row in rows]

    def running(self) -> list[Rollout]:
        """Every rollout the controller should look at."""
        table = t.rollouts
        with self.db.read() as conn:
            rows = conn.execute(select(table).where(table.c.state == "running").order_by(table.c.id)).all()
        return [_rollout(row) for row in rows]

    def events(self, rollout_id: int, *, limit: int = 10_000) -> list[dict[str, Any]]:
        """The rollout's events, oldest first: the newest ``limit`` of them."""
        table = t.rollout_events
        query = (
            select(table).where(table.c.rollout_id == rollout_id).order_by(table.c.id.desc()).limit(max(1, min(limit, 100_000)))
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "id": int(r.id), "rollout_id": int(r.rollout_id), "at": float(r.at), "kind": r.kind, "actor": r.actor,
                "step": int(r.step), "weight": float(r.weight), "detail": r.detail,
            }
            for r in reversed(rows)
        ]

    # -- people ------------------------------------------------------------------------

    def start(
        self,
        deployment: str,
        canary: str,
        plan: RolloutPlan,
        *,
        actor: str,
        reason: str = "",
        primary: str | None = None,
        now: float | None = None,
    ) -> Rollout:
        """Start a rollout of ``canary`` ("model:version") on ``deployment`` at the plan's
        first step; ``primary`` pins the primary's version for it (when the routes name
        the model only). The caller checks that the versions exist (the registry)."""
        _, version = parse_model_ref(canary, "canary")
        if version is None:
            raise ConfigError(f"canary: {canary!r} names no version; give 'model:version' (a rollout pins what it rolls out)")
        stamp = time.time() if now is None else now
        weight = plan.steps[0].weight

        def work(conn: Connection) -> Rollout:
            routes, _ = self.routes.get_in(conn, deployment)  # locks the routes row: one start at a time
            found = _open(conn, deployment)
            if found is not None:
                raise RolloutConflict(
                    f"deployment '{deployment}' already has rollout {found.id} of {found.canary} ({found.state}); "
                    f"promote or roll it back first (stalwart rollout promote|rollback {deployment})"
                )
            pinned = primary or routes.primary
            if canary == pinned:
                raise RolloutConflict(f"deployment '{deployment}' already serves {canary} as its primary")
            salt = new_salt(deployment, canary)
            values = {
                "deployment": deployment, "canary": canary, "primary": pinned, "salt": salt,
                "plan": plan.to_dict(), "state": "running", "step": 0, "weight": weight, "started_at": stamp,
                "step_started_at": stamp, "updated_at": stamp, "reason": reason or None, "evidence": None,
            }
            rollout_id = int(conn.execute(t.rollouts.insert().values(**values).returning(t.rollouts.c.id)).scalar_one())
            rollout = _rollout_from(rollout_id, values)
            self.routes.change(
                deployment, lambda r: msgspec.structs.replace(r, primary=pinned, canary=canary, canary_weight=weight, salt=salt),
                actor=actor, action="rollout.start", detail={"rollout": rollout_id}, conn=conn,
            )
            _event(conn, rollout, "start", actor, {"reason": reason, "plan": plan.to_dict()}, stamp)
            return rollout

        return self.db.transact(work)

    def pause(self, deployment: str, *, actor: str, reason: str = "") -> Rollout:
        """Stop the controller moving the rollout; the canary keeps its weight."""
        return self._move(deployment, ("running",), "paused", "pause", actor, reason)

    def resume(self, deployment: str, *, actor: str, reason: str = "") -> Rollout:
        """Hand a paused or held rollout back to the controller; its current step starts a
        new window (what it saw before the pause is not mixed with what comes after)."""
        return self._move(deployment, ("paused", "held"), "running", "resume", actor, reason)

    def promote(self, deployment: str, *, actor: str, reason: str = "", detail: Mapping[str, Any] | None = None) -> Rollout:
        """Make the canary the primary now."""
        return self._move(deployment, OPEN, "promoted", "promote", actor, reason, detail)

    def rollback(self, deployment: str, *, actor: str, reason: str = "", detail: Mapping[str, Any] | None = None) -> Rollout:
        """Take every request off the canary now."""
        return self._move(deployment, OPEN, "rolled_back", "rollback", actor, reason, detail)

    # -- the controller ----------------------------------------------------------------

    def record_look(
        self,
        rollout: Rollout,
        *,
        decision: str,
        detail: Mapping[str, Any],
        evidence: Mapping[str, Any] | None,
        now: float,
        reason: str = "",
    ) -> Rollout | None:
        """The controller's look at ``rollout`` (as it read it) and what it decided:
        ``continue`` (keep the evidence), ``step`` (the next weight, a new window), ``hold``,
        ``promote`` or ``rollback``. None when the rollout changed since it was read (a
        person paused it, another controller looked): nothing is written, the next look
        starts from the row as it is."""
        actor = "controller"

        def work(conn: Connection) -> Rollout | None:
            table = t.rollouts
            current = conn.execute(select(table).where(table.c.id == rollout.id)).one_or_none()
            if current is None or current.state != "running" or float(current.updated_at) != rollout.updated_at:
                return None
            values: dict[str, Any] = {"updated_at": now, "evidence": normalise(dict(evidence)) if evidence is not None else None}
            step, weight = rollout.step, rollout.weight
            if decision == "step":
                step += 1
                weight = rollout.plan.steps[step].weight
                values.update(step=step, weight=weight, step_started_at=now, evidence=None)
                self.routes.change(
                    rollout.deployment, lambda r: r.with_weight(weight), actor=actor, action="rollout.step",
                    detail={"rollout": rollout.id, "step": step, "weight": weight, "reason": reason}, conn=conn,
                )
            elif decision == "hold":
                values.update(state="held", reason=reason)
                append_event(conn, actor, "rollout.hold", f"deployment/{rollout.deployment}", {"rollout": rollout.id, "reason": reason, **detail})
            elif decision in ("promote", "rollback"):
                state: State = "promoted" if decision == "promote" else "rolled_back"
                values.update(state=state, reason=reason, ended_at=now)
                if decision == "promote":
                    weight = 1.0
                else:
                    weight = 0.0
                self.routes.change(
                    rollout.deployment, _final(rollout, state), actor=actor, action=f"rollout.{decision}",
                    detail={"rollout": rollout.id, "reason": reason, **detail}, conn=conn,
                )
            elif decision != "continue":
                raise ValueError(f"unknown decision {decision!r}")
            conn.execute(table.update().where(table.c.id == rollout.id).values(**values))
            updated = msgspec.structs.replace(
                rollout, step=step, weight=weight, updated_at=now, evidence=values.get("evidence"),
                state=values.get("state", rollout.state), reason=values.get("reason", rollout.reason),
                ended_at=values.get("ended_at", rollout.ended_at),
                step_started_at=values.get("step_started_at", rollout.step_started_at),
            )
            _event(conn, rollout, "look", actor, detail, now)
            if decision != "continue":
                _event(conn, updated, decision, actor, {"reason": reason}, now)
            return updated

        return self.db.transact(work)

    # -- private -----------------------------------------------------------------------

    def _move(
        self,
        deployment: str,
        allowed: Sequence[State],
        to: State,
        kind: str,
        actor: str,
        reason: str,
        detail: Mapping[str, Any] | None = None,
    ) -> Rollout:
        stamp = time.time()

        def work(conn: Connection) -> Rollout:
            self.routes.get_in(conn, deployment)  # locks the routes row
            rollout = _open(conn, deployment)
            if rollout is None or rollout.state not in allowed:
                now_state = f"its rollout {rollout.id} is {rollout.state}" if rollout is not None else "it has no open rollout"
                raise RolloutConflict(
                    f"cannot {kind} deployment '{deployment}': {now_state}; {kind} takes a rollout that is {' or '.join(allowed)}"
                )
            values: dict[str, Any] = {"state": to, "updated_at": stamp, "reason": reason or None}
            if to == "running":
                values.update(step_started_at=stamp, evidence=None)
            if to in FINAL:
                values["ended_at"] = stamp
                self.routes.change(
                    deployment, _final(rollout, to), actor=actor, action=f"rollout.{kind}",
                    detail={"rollout": rollout.id, "reason": reason, **(detail or {})}, conn=conn,
                )
            else:
                append_event(conn, actor, f"rollout.{kind}", f"deployment/{deployment}", {"rollout": rollout.id, "reason": reason})
            conn.execute(t.rollouts.update().where(t.rollouts.c.id == rollout.id).values(**values))
            weight = 1.0 if to == "promoted" else 0.0 if to == "rolled_back" else rollout.weight
            updated = msgspec.structs.replace(
                rollout, state=to, updated_at=stamp, reason=reason or None, weight=weight,
                ended_at=values.get("ended_at"), step_started_at=values.get("step_started_at", rollout.step_started_at),
                evidence=values.get("evidence", rollout.evidence),
            )
            _event(conn, updated, kind, actor, {"reason": reason, **(detail or {})}, stamp)
            return updated

        return self.db.transact(work)


def _final(rollout: Rollout, state: State) -> Any:
    """The routes change that ends ``rollout``: the canary becomes the primary, or goes."""

    def change(routes: Routes) -> Routes:
        if routes.canary != rollout.canary:
            return routes  # changed by hand since: leave the routes as they are
        if state == "promoted":
            return msgspec.structs.replace(routes, primary=rollout.canary, canary=None, canary_weight=0.0)
        return msgspec.structs.replace(routes, canary=None, canary_weight=0.0)

    return change


def _open(conn: Connection, deployment: str) -> Rollout | None:
    table = t.rollouts
    row = conn.execute(
        select(table).where(table.c.deployment == deployment, table.c.state.in_(OPEN)).order_by(table.c.id.desc()).limit(1)
    ).one_or_none()
    return _rollout(row) if row is not None else None


def _event(conn: Connection, rollout: Rollout, kind: str, actor: str, detail: Mapping[str, Any], at: float) -> None:
    conn.execute(t.rollout_events.insert().values(
        rollout_id=rollout.id, at=at, kind=kind, actor=actor[:200], step=rollout.step, weight=rollout.weight,
        detail=normalise(dict(detail)),
    ))


def _rollout(row: Any) -> Rollout:
    return _rollout_from(int(row.id), row._mapping)


def _rollout_from(rollout_id: int, values: Mapping[str, Any]) -> Rollout:
    return Rollout(
        id=rollout_id, deployment=values["deployment"], canary=values["canary"], primary=values["primary"],
        salt=values["salt"], plan=RolloutPlan.model_validate(values["plan"]), state=values["state"], step=int(values["step"]),
        weight=float(values["weight"]), started_at=float(values["started_at"]),
        step_started_at=float(values["step_started_at"]), updated_at=float(values["updated_at"]),
        ended_at=None if values.get("ended_at") is None else float(values["ended_at"]), reason=values.get("reason"),
        evidence=values.get("evidence"),
    )
