"""What the overview, a deployment's page and a model's page show, gathered from the running
server (routes, guards, shedders, loaded versions, the live window) and the registry's
database (rollouts, versions, schema revisions; read on worker threads)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from stalwart.errors import ModelNotFound, StalwartError
from stalwart.registry import ModelVersion
from stalwart.registry.schemas import SchemaRevision
from stalwart.rollout.rollouts import OPEN, Rollout
from stalwart.serving.console.charts import sparkline
from stalwart.serving.console.live import Key, LiveSnapshot
from stalwart.serving.console.render import markup
from stalwart.serving.console.state import Console

__all__ = ["LiveRow", "actions_for", "deployment_live_view", "deployment_view", "guard_rows", "live_row", "live_view", "model_view", "overview_view"]

LIVE_SECONDS = 60
"""The window of the live numbers: the last minute."""


@dataclass(frozen=True, slots=True)
class LiveRow:
    """One deployment's (or ``/v2`` model's) live numbers and its sparklines."""

    kind: str
    name: str
    live: LiveSnapshot
    rate_chart: Any  # markup
    p99_chart: Any  # markup


def live_row(console: Console, key: Key) -> LiveRow:
    snapshot = console.live.snapshot(key, LIVE_SECONDS)
    kind, name = key
    return LiveRow(
        kind, name, snapshot,
        markup(sparkline([float(n) for n, _ in snapshot.series], f"requests per second, last {LIVE_SECONDS} s")),
        markup(sparkline([p99 for _, p99 in snapshot.series], f"p99 latency per second, last {LIVE_SECONDS} s")),
    )


def live_view(console: Console) -> dict[str, Any]:
    """The overview's live part (refreshed every few seconds): every deployment's numbers,
    the ``/v2`` models that had requests, and every breaker."""
    plane = console.plane
    deployments = [live_row(console, ("deployment", d.name)) for d in plane.deployments.deployments()]
    models = [live_row(console, key) for key in console.live.seen() if key[0] == "model"]
    guards: list[dict[str, Any]] = []
    shedding: dict[str, dict[str, Any]] = {}
    for d in plane.deployments.deployments():
        health = plane.health(d.name)
        guards.extend(guard_rows(health["guards"]))
        shedding[d.name] = health["shedding"]
    guards.extend(guard_rows([g.snapshot().as_dict() for g in plane.chains.guards("/v2")]))
    return {"deployments": deployments, "models": models, "guards": guards, "shedding": shedding, "seconds": LIVE_SECONDS}


def deployment_live_view(console: Console, name: str) -> dict[str, Any]:
    """A deployment's live part (refreshed every few seconds): its numbers, guards, shedder."""
    health = console.plane.health(name)  # DeploymentNotFound (404)
    return {"live": live_row(console, ("deployment", name)), "guards": guard_rows(health["guards"]), "shedding": health["shedding"]}


def guard_rows(guards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Guard snapshots as table rows: the breaker's numbers (a guard without a breaker has
    state ``none``) and its bulkhead's."""
    rows = []
    for g in sorted(guards, key=lambda g: str(g["name"])):
        breaker = g.get("breaker") or {}
        rows.append({
            "name": g["name"],
            "state": breaker.get("state", "none"),
            "failure_rate": breaker.get("failure_rate"),
            "slow_call_rate": breaker.get("slow_call_rate"),
            "buffered_calls": breaker.get("buffered_calls", 0),
            "not_permitted_calls": breaker.get("not_permitted_calls", 0),
            "retry_after": breaker.get("retry_after"),
        })
    return rows


async def overview_view(console: Console) -> dict[str, Any]:
    """The overview: deployments (what serves, variants and weights, open rollouts), models
    and their versions (which are loaded, which deployments route to them), and the live part."""
    plane = console.plane
    rows = []
    latest = await asyncio.to_thread(lambda: {d.name: console.rollouts.latest(d.name) for d in plane.deployments.deployments()})
    for d in plane.deployments.deployments():
        described = await plane.deployments.describe(d.name)
        rows.append({"describe": described, "routes": plane.deployments.policy(d.name).routes, "rollout": latest[d.name]})
    summaries = await asyncio.to_thread(console.registry.models)
    loaded = {(m.version.name, m.version.version) for m in plane.repository.loaded()}
    routed = _routed(console)
    models = [
        {
            "summary": s,
            "loaded": sorted(v for (name, v) in loaded if name == s.name),
            "routed": sorted(((v, who) for (name, v), who in routed.items() if name == s.name), key=lambda item: item[0] or 0),
        }
        for s in summaries
    ]
    return {"deployments": rows, "models": models, "live": live_view(console), "now": time.time()}


async def deployment_view(console: Console, name: str) -> dict[str, Any]:
    """A deployment's page: what it serves (features, ladder), its variants and weights,
    health (breakers, shedding), live numbers, its rollouts with the actions they allow,
    its feature sets and the schema revisions of the versions it routes to."""
    plane = console.plane
    policy = plane.deployments.policy(name)  # DeploymentNotFound (404)
    described = await plane.deployments.describe(name)
    rollouts = await asyncio.to_thread(console.rollouts.of, name, limit=20)
    refs = {
        v.name: (v.model, v.version) for v in (policy.primary, policy.canary, policy.fallback, *policy.shadows) if v is not None
    }
    schemas = await asyncio.to_thread(_schemas_of, console, refs)
    sets = sorted({f["set"] for f in described.get("features", []) if "set" in f})
    cached = {name for name in sets if name in plane.deployments.caches}
    return {
        "name": name,
        "describe": described,
        "routes": policy.routes,
        **deployment_live_view(console, name),
        "rollouts": rollouts,
        "rollout": rollouts[0] if rollouts else None,
        "actions": actions_for(rollouts[0]) if rollouts else (),
        "feature_sets": [{"name": s, "cached": s in cached} for s in sets],
        "schemas": schemas,
        "now": time.time(),
    }


async def model_view(console: Console, name: str) -> dict[str, Any]:
    """A model's page: every version (newest first) with its metrics and tags, whether it
    is loaded, who routes to it, and its schema revisions."""
    versions: list[ModelVersion] = await asyncio.to_thread(console.registry.versions, name)
    if not versions:
        raise ModelNotFound(f"no model '{name}' in the registry")
    versions = sorted(versions, key=lambda v: -v.version)
    loaded = {m.version.version for m in console.plane.repository.loaded() if m.version.name == name}
    routed = {v: who for (model, v), who in _routed(console).items() if model == name}
    schemas = await asyncio.to_thread(_schemas_of, console, {str(v.version): (name, v.version) for v in versions[:20]})
    return {"name": name, "versions": versions, "loaded": loaded, "routed": routed, "schemas": schemas, "now": time.time()}


def actions_for(rollout: Rollout) -> tuple[str, ...]:
    """What a person may do to ``rollout`` in its state (the store's table of moves)."""
    if rollout.state not in OPEN:
        return ()
    resume_or_pause = ("pause",) if rollout.state == "running" else ("resume",)
    return (*resume_or_pause, "promote", "rollback")


def _routed(console: Console) -> dict[tuple[str, int | None], list[str]]:
    """Which deployment variants route to each model version now (``fraud/primary``); the
    version is None for a variant that follows the latest one."""
    out: dict[tuple[str, int | None], list[str]] = {}
    for name, policy in console.plane.deployments.policies.items():
        for variant in (policy.primary, policy.canary, policy.fallback, *policy.shadows):
            if variant is not None:
                out.setdefault((variant.model, variant.version), []).append(f"{name}/{variant.name}")
    return out


def _schemas_of(console: Console, refs: dict[str, tuple[str, int | None]]) -> list[dict[str, Any]]:
    """The schema revisions of each ``label -> (model, version)`` (None: the latest)."""
    out: list[dict[str, Any]] = []
    for label, (model, version) in refs.items():
        try:
            mv = console.registry.get(model, version)
            revisions: list[SchemaRevision] = console.registry.schemas.revisions(mv.name, mv.version)
        except StalwartError as exc:
            out.append({"label": label, "ref": f"{model}:{version or 'latest'}", "error": exc.message, "revisions": []})
            continue
        out.append({"label": label, "ref": mv.ref, "model": mv.name, "version": mv.version, "error": None, "revisions": revisions})
    return out
