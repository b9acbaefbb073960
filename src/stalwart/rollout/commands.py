"""What people do to a deployment's variants, for the CLI and the admin API alike.

Each command checks what only the project and the registry know (the deployment exists, the
canary's version is registered, the plan and its rules are valid) and then changes the
database through :class:`~stalwart.rollout.rollouts.RolloutStore`, which every replica and
the controller read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from stalwart.errors import ConfigError, RolloutConflict
from stalwart.project import Project, parse_model_ref
from stalwart.registry import Registry
from stalwart.rollout.controller import plan_of
from stalwart.rollout.rollouts import OPEN, Rollout, RolloutStore
from stalwart.rollout.routes import Routes, ShadowRoute, new_salt, parse_shadow

__all__ = ["ACTIONS", "set_routes", "start_rollout"]

ACTIONS = ("pause", "resume", "promote", "rollback")


def start_rollout(
    store: RolloutStore,
    registry: Registry,
    project: Project,
    deployment: str,
    canary: str,
    *,
    plan: Mapping[str, Any] | None = None,
    actor: str,
    reason: str = "",
    prediction_log: str = "auto",
) -> Rollout:
    """Start rolling ``canary`` out on ``deployment``: the deployment's declared plan
    (``Deployment(rollout=...)``), with the fields of ``plan`` over it. ``prediction_log``
    is the server's ``STALWART_PREDICTION_LOG``: the controller judges from its SQL records."""
    declared = project.deployment(deployment)  # DeploymentNotFound
    if prediction_log not in ("auto", "sql"):
        raise ConfigError(
            f"rollouts are judged from the prediction log in the database, and this one goes to "
            f"{prediction_log!r}; set STALWART_PREDICTION_LOG=sql (or auto) to roll out with a controller"
        )
    name, version = parse_model_ref(canary, "canary")
    registry.get(name, version)  # ModelNotFound, VersionNotFound
    merged = {**(declared.rollout or {}), **(plan or {})}
    routes, _ = store.routes.get(deployment)
    primary = _pinned(registry, routes.primary, canary, deployment)
    return store.start(deployment, canary, plan_of(merged, "rollout"), actor=actor, reason=reason, primary=primary)


def _pinned(registry: Registry, primary: str, canary: str, deployment: str) -> str:
    """The primary as a pinned version: a rollout compares two fixed versions, so a primary
    that follows the latest version (``model="fraud"``) is pinned to the one it serves now.
    When the latest already is the canary, the deployment has been serving it all along."""
    name, version = parse_model_ref(primary, "primary")
    if version is not None:
        return primary
    latest = registry.get(name).version
    ref = f"{name}:{latest}"
    if ref == canary:
        raise RolloutConflict(
            f"deployment '{deployment}' follows the latest version of '{name}', which is {canary} already: every request "
            f"has gone to it since it was registered. Pin the deployment's model to the version to compare with "
            f"(Deployment(model='{name}:<version>')), then roll {canary} out"
        )
    return ref


def set_routes(
    store: RolloutStore,
    registry: Registry,
    project: Project,
    deployment: str,
    *,
    canary: str | None = None,
    canary_weight: float | None = None,
    shadows: Mapping[str, Any] | None = None,
    remove_canary: bool = False,
    actor: str,
) -> tuple[Routes, int]:
    """Change a deployment's canary, its weight or its shadows by hand (what is not given
    stays as it is). Refused while a rollout is open: its controller owns the canary then
    (promote or roll it back first)."""
    project.deployment(deployment)
    if remove_canary and canary is not None:
        raise ConfigError("canary: give a canary or remove it, not both")
    touches_canary = canary is not None or canary_weight is not None or remove_canary
    open_rollout = store.latest(deployment)
    if open_rollout is not None and open_rollout.state in OPEN and touches_canary:
        raise RolloutConflict(
            f"deployment '{deployment}' has rollout {open_rollout.id} open ({open_rollout.state}); "
            f"its controller moves the canary: promote or roll it back first"
        )
    if isinstance(canary, str):
        name, version = parse_model_ref(canary, "canary")
        registry.get(name, version)
    checked_shadows: dict[str, ShadowRoute] | None = None
    if shadows is not None:
        checked_shadows = {}
        for shadow, spec in shadows.items():
            route = parse_shadow(spec, f"shadows[{shadow!r}]")
            model, version = parse_model_ref(route.model, f"shadows[{shadow!r}].model")
            registry.get(model, version)
            checked_shadows[shadow] = route

    def change(routes: Routes) -> Routes:
        fields: dict[str, Any] = {}
        if canary is not None and canary != routes.canary:
            fields.update(canary=canary, salt=new_salt(deployment, canary))  # a new canary: keys shuffle anew
        if remove_canary:
            fields.update(canary=None, canary_weight=0.0)
        if canary_weight is not None:
            fields["canary_weight"] = canary_weight
        if checked_shadows is not None:
            fields["shadows"] = checked_shadows
        return Routes.from_dict({**routes.to_dict(), **msgspec.to_builtins(fields)})

    return store.routes.change(deployment, change, actor=actor, action="routes.set")
