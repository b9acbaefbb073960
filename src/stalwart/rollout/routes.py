"""A deployment's variants as they are now, in the database, and how they change.

The project file declares each deployment's variants (``model``, ``canary`` and
``canary_weight``, ``shadows``); the CLI, the admin API and the rollout controller change
them at run time. What every replica serves is one row per deployment in
``deployment_routes``: its :class:`Routes` and a ``revision`` that every change raises. The
server polls the revisions (one small query, every ``STALWART_ROUTES_POLL_SECONDS``) and
swaps in the new routes when one moves, so all replicas route alike within a poll of a
change.

**The project file and run-time changes.** The row remembers the hash of the declaration it
last took (``declared``). At start, a server whose project declares the same variants as
that hash leaves the row alone (a promotion made at run time survives a restart); a server
whose project declares other variants (someone edited the file and redeployed) resets the
row to the declaration, in the audit log. The file is the desired state when it changes;
until it changes, the database is (like ``kubectl apply``'s last-applied configuration).

Every change is one transaction with its audit event (hash-chained, ``stalwart audit``).

>>> routes = Routes(primary="fraud:2", canary="fraud:3", canary_weight=0.05, salt="fraud:fraud:3")
>>> routes.with_weight(0.25).canary_weight
0.25
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from stalwart.errors import ConfigError, DeploymentNotFound
from stalwart.hashing import canonical_json
from stalwart.project import Deployment, parse_model_ref
from stalwart.project.deployment import DEFAULT_SHADOW_TIME_LIMIT
from stalwart.registry.audit import append_event
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["RouteStore", "Routes", "ShadowRoute", "declared_routes", "new_salt", "parse_shadow"]


class ShadowRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A shadow: a model version that sees a sampled share of the requests, never answers."""

    model: str  # "name" or "name:version"
    rate: float = 1.0
    time_limit: float = DEFAULT_SHADOW_TIME_LIMIT  # seconds: a call not answered by then is abandoned


class Routes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who answers a deployment's requests: the primary, at most one canary with its share
    of routing keys, and the shadows with their sample rates. ``salt`` seeds the sticky
    hash (``stalwart.rollout.routing``): a new canary gets a new salt."""

    primary: str
    canary: str | None = None
    canary_weight: float = 0.0
    salt: str = ""
    shadows: dict[str, ShadowRoute] = {}

    def __post_init__(self) -> None:
        parse_model_ref(self.primary, "routes.primary")
        if self.canary is not None:
            parse_model_ref(self.canary, "routes.canary")
        weight = self.canary_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or not 0 <= weight <= 1:
            raise ConfigError(f"routes.canary_weight: {weight!r} must be a number from 0 to 1")
        if weight and self.canary is None:
            raise ConfigError("routes.canary_weight: set, but no canary model is named; give canary='model:version'")
        for name, shadow in self.shadows.items():
            if not name or not name.replace("-", "_").replace("_", "a").isalnum():
                raise ConfigError(f"routes.shadows: shadow name {name!r} may hold only letters, digits, '-' and '_'")
            parse_model_ref(shadow.model, f"routes.shadows[{name!r}].model")
            rate = shadow.rate
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or not 0 <= rate <= 1:
                raise ConfigError(f"routes.shadows[{name!r}].rate: {rate!r} must be a number from 0 to 1")
            if not (math.isfinite(shadow.time_limit) and shadow.time_limit > 0):
                raise ConfigError(f"routes.shadows[{name!r}].time_limit: {shadow.time_limit!r} must be a positive number of seconds")
            if name in ("primary", "canary", "fallback"):
                raise ConfigError(f"routes.shadows: a shadow cannot be named {name!r} (a variant's role)")

    def with_weight(self, weight: float) -> Routes:
        return msgspec.structs.replace(self, canary_weight=weight)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "routes") -> Routes:
        try:
            return msgspec.convert(dict(data), cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def declared_routes(deployment: Deployment) -> Routes:
    """The routes a deployment's declaration in the project file gives."""
    return Routes(
        primary=deployment.model,
        canary=deployment.canary,
        canary_weight=float(deployment.canary_weight),
        salt=_salt(deployment.name, deployment.canary),
        shadows={s.name: ShadowRoute(model=s.model, rate=s.rate, time_limit=s.time_limit) for s in deployment.shadow_specs},
    )


class RouteStore:
    """The ``deployment_routes`` rows: read, polled, changed with an audit event."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def sync_declared(
        self, deployments: Mapping[str, Deployment], actor: str, *, reset: bool = True
    ) -> dict[str, tuple[Routes, int]]:
        """Each deployment's routes and revision, after taking the project's declaration
        where the row is new or was made from another declaration (the module docstring).
        ``reset=False`` only adds the rows that are missing (the CLI: a command run with
        another copy of the project file must not undo what the servers serve)."""
        found: dict[str, tuple[Routes, int]] = {}
        for name, deployment in deployments.items():
            declared = declared_routes(deployment)
            digest = hashlib.sha256(canonical_json(declared.to_dict())).hexdigest()

            def take(conn: Connection, name: str = name, declared: Routes = declared, digest: str = digest) -> tuple[Routes, int]:
                row = _row(conn, name, lock=True)
                if row is not None and (row.declared == digest or not reset):
                    return _routes(row), int(row.revision)
                revision = 1 if row is None else int(row.revision) + 1
                _write(conn, name, declared, digest, revision, actor, insert=row is None)
                if row is not None:  # a first declaration is the project file's, already on record
                    append_event(conn, actor, "routes.reset", f"deployment/{name}", {
                        "before": _routes(row).to_dict(), "after": declared.to_dict(), "revision": revision,
                        "reason": "the project file declares other variants than the ones these routes were made from",
                    })
                return declared, revision

            try:
                found[name] = self.db.transact(take)
            except IntegrityError:
                # Another replica inserted the row first, at the same moment: take it now.
                found[name] = self.db.transact(take)
        return found

    def revisions(self) -> dict[str, int]:
        """Every deployment's revision: the cheap query replicas poll."""
        table = t.deployment_routes
        with self.db.read() as conn:
            return {row.deployment: int(row.revision) for row in conn.execute(select(table.c.deployment, table.c.revision))}

    def get(self, deployment: str) -> tuple[Routes, int]:
        """A deployment's routes and revision (DeploymentNotFound when it has no row: no
        server of this project has started on this database yet)."""
        with self.db.read() as conn:
            row = _row(conn, deployment)
        if row is None:
            raise DeploymentNotFound(deployment)
        return _routes(row), int(row.revision)

    def get_in(self, conn: Connection, deployment: str) -> tuple[Routes, int]:
        """:meth:`get` inside the caller's write transaction, locking the row (PostgreSQL)
        so that changes to one deployment's routes and rollouts happen one at a time."""
        row = _row(conn, deployment, lock=True)
        if row is None:
            raise DeploymentNotFound(deployment)
        return _routes(row), int(row.revision)

    def change(
        self,
        deployment: str,
        change: Callable[[Routes], Routes],
        *,
        actor: str,
        action: str,
        detail: Mapping[str, Any] | None = None,
        conn: Connection | None = None,
    ) -> tuple[Routes, int]:
        """Apply ``change`` to the deployment's routes in one transaction (or inside the
        caller's ``conn``), with the audit event ``action``; the new routes and revision."""

        def work(conn: Connection) -> tuple[Routes, int]:
            row = _row(conn, deployment, lock=True)
            if row is None:
                raise DeploymentNotFound(deployment)
            before = _routes(row)
            after = change(before)
            if after == before:
                return before, int(row.revision)
            revision = int(row.revision) + 1
            _write(conn, deployment, after, row.declared, revision, actor, insert=False)
            append_event(conn, actor, action, f"deployment/{deployment}", {
                **(detail or {}), "before": before.to_dict(), "after": after.to_dict(), "revision": revision,
            })
            return after, revision

        return work(conn) if conn is not None else self.db.transact(work)


def new_salt(deployment: str, canary: str) -> str:
    """A salt for a new canary: its name and the time, so each rollout shuffles anew."""
    return f"{deployment}:{canary}:{time.time_ns()}"


def _salt(deployment: str, canary: str | None) -> str:
    # Declared canaries keep the salt they always had: the deployment and the canary's name.
    return f"{deployment}:{canary}" if canary else deployment


def parse_shadow(spec: Any, where: str) -> ShadowRoute:
    """A shadow's declaration, ``"model:version"`` or ``{"model": ..., "rate": 0.25}``."""
    if isinstance(spec, ShadowRoute):
        return spec
    if isinstance(spec, str):
        return ShadowRoute(model=spec)
    if isinstance(spec, Mapping):
        try:
            return msgspec.convert(dict(spec), ShadowRoute)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: give 'model:version' or {{'model': 'model:version', 'rate': 0.25}}")


def _row(conn: Connection, deployment: str, *, lock: bool = False) -> Any:
    table = t.deployment_routes
    query = select(table).where(table.c.deployment == deployment)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def _routes(row: Any) -> Routes:
    return Routes.from_dict(row.routes, f"deployment_routes[{row.deployment!r}]")


def _write(conn: Connection, deployment: str, routes: Routes, declared: str, revision: int, actor: str, *, insert: bool) -> None:
    table = t.deployment_routes
    values = {"routes": routes.to_dict(), "declared": declared, "revision": revision, "updated_at": time.time(), "actor": actor[:200]}
    if insert:
        conn.execute(table.insert().values(deployment=deployment, **values))
    else:
        conn.execute(table.update().where(table.c.deployment == deployment).values(**values))
