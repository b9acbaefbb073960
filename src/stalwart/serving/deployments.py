"""A project's deployments as the server holds them: plans, readers, guards, health.

A plan says how one model version is fed for one deployment: which features (the model's
training features, checked against the project's FeatureSet versions), how they become
model inputs, and the online resolver with its sources' readers, guards and caches. Plans
are built once per deployment and model version (reflecting tables happens off the event
loop) and reused by every request; the data plane (``serving/dataplane.py``) asks for them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stalwart.cache import FeatureSetCache
from stalwart.errors import ConfigError, NotReady, StalwartError
from stalwart.features.online import OnlineFeatures
from stalwart.features.readers import SourceReader, make_reader
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.project import Deployment, FeatureRef, Project, RequestField, Source
from stalwart.registry import ModelVersion
from stalwart.resilience import Guard
from stalwart.rollout.routes import Routes
from stalwart.serving.chains import Chains, make_guard
from stalwart.serving.policies import DeploymentPolicy
from stalwart.serving.repository import ModelRepository
from stalwart.storage import DatabasePool

__all__ = ["Deployments", "Plan"]

_RETRY_PLAN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How one model version is fed: its features and how they become model inputs."""

    version: ModelVersion
    features: OnlineFeatures
    layout: str  # "matrix" (one 2-D input, columns in ``names`` order) or "columns"
    names: tuple[str, ...]
    # FeatureSet name -> the version computing it: each record says which definitions
    # served it, so live parity recomputes with the same ones (or says they changed).
    feature_sets: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Draft:
    """A plan's parts that need I/O (reflecting tables), made off the event loop."""

    version: ModelVersion
    refs: list[FeatureRef | RequestField]
    readers: dict[str, SourceReader]
    layout: str
    names: tuple[str, ...]


class Deployments:
    """The project's deployments: their policies, plans, source readers and guards."""

    def __init__(
        self,
        project: Project,
        policies: dict[str, DeploymentPolicy],
        repository: ModelRepository,
        pool: DatabasePool,
        chains: Chains,
        metrics: ResilienceMetrics,
        caches: Mapping[str, FeatureSetCache] | None = None,
    ) -> None:
        self.project = project
        self.policies = policies
        self.caches = dict(caches or {})
        self.repository = repository
        self.pool = pool
        self.chains = chains
        self.metrics = metrics
        self._readers: dict[str, SourceReader] = {}
        self._readers_lock = threading.Lock()
        self._plans: dict[tuple[str, str, int], Plan] = {}
        self._failures: dict[tuple[str, str, int], tuple[float, str]] = {}
        # One guard per deployment and source, shared by every model version it serves.
        self._source_guards: dict[tuple[str, str], Guard] = {}

    def set_routes(self, name: str, routes: Routes) -> None:
        """Serve ``routes`` for the deployment from the next request on (a run-time change:
        ``serving/route_sync.py``); requests already routed finish where they were sent."""
        self.policies[name] = self.policy(name).with_routes(routes)

    def deployments(self) -> list[Deployment]:
        return list(self.project.deployments.values())

    def policy(self, name: str) -> DeploymentPolicy:
        """The deployment's policies (:class:`DeploymentNotFound` for a name the project lacks)."""
        policy = self.policies.get(name)
        if policy is None:
            self.project.deployment(name)  # raises DeploymentNotFound, listing the names
            raise ConfigError(f"deployment '{name}' has no policy")  # pragma: no cover - built together
        return policy

    async def describe(self, name: str) -> dict[str, Any]:
        deployment = self.project.deployment(name)
        policy = self.policy(name)
        primary = policy.primary
        info: dict[str, Any] = {
            "name": name, "model": deployment.model, "description": deployment.description,
            "routes": policy.routes.to_dict(),
        }
        try:
            mv = await self.repository.describe(primary.model, primary.version)
            plan = await self.plan(deployment, mv)
        except StalwartError as exc:
            info.update(ready=False, error=exc.message)
            return info
        info.update(
            ready=True,
            serving={"name": mv.name, "version": mv.version},
            features=[_feature_info(ref) for ref in plan.features.refs],
            entity_keys=plan.features.entity_keys,
            request_values={f.name: f.type for f in plan.features.request_fields},
            ladder={
                "fallback": deployment.fallback,
                "last_good": deployment.last_good,
                "default_prediction": deployment.default_prediction is not None,
            },
        )
        return info

    def health(self, name: str, shedding: Mapping[str, Any]) -> dict[str, Any]:
        """Every guard of the deployment (model chains and sources) and its shedder."""
        self.policy(name)
        guards = [g.snapshot().as_dict() for g in self.chains.guards(f"deployment/{name}/")]
        guards += [g.snapshot().as_dict() for (d, _), g in sorted(self._source_guards.items()) if d == name]
        return {
            "name": name,
            "guards": guards,
            "shedding": dict(shedding),
            # A shadow's breaker is listed, but a failing shadow never degrades the deployment.
            "status": "degraded" if any(_breaker_open(g) for g in guards if "/shadow:" not in str(g.get("name"))) else "ok",
        }

    async def plan(self, deployment: Deployment, mv: ModelVersion) -> Plan:
        """The plan for serving ``mv`` under ``deployment`` (built on first use)."""
        key = (deployment.name, mv.name, mv.version)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < _RETRY_PLAN_SECONDS:
            raise NotReady(failed[1])
        try:
            draft = await asyncio.to_thread(self._draft_plan, deployment, mv)
            plan = self._finish_plan(deployment, draft)
        except ConfigError as exc:
            # The deployment cannot serve this version as configured: that is the server's
            # state, not the client's mistake, so it is a 503 with the reason.
            message = f"deployment '{deployment.name}' cannot serve {mv.ref}: {exc.message}"
            self._failures[key] = (time.monotonic(), message)
            raise NotReady(message) from exc
        self._plans[key] = plan
        self._failures.pop(key, None)
        return plan

    def reader(self, source: Source) -> SourceReader:
        """The one reader of a source, shared by plans and writes (reflects the table on
        first use: call it off the event loop)."""
        with self._readers_lock:
            reader = self._readers.get(source.name)
            if reader is None:
                reader = self._readers[source.name] = make_reader(source, self.pool, self.project.root)
            return reader

    def _finish_plan(self, deployment: Deployment, draft: _Draft) -> Plan:
        """The plan's live parts, on the event loop: source guards and caches."""
        config = self.policy(deployment.name).source_guard
        guards: dict[str, Guard] = {}
        if config is not None:
            for source in draft.readers:
                key = (deployment.name, source)
                guard = self._source_guards.get(key)
                if guard is None:
                    guard = make_guard(f"deployment/{deployment.name}/source/{source}", config, self.metrics)
                    self._source_guards[key] = guard
                guards[source] = guard
        features = OnlineFeatures(draft.refs, draft.readers, guards=guards, caches=self.caches)
        versions = {ref.feature_set.name: ref.feature_set.version for ref in draft.refs if isinstance(ref, FeatureRef)}
        return Plan(draft.version, features, draft.layout, draft.names, versions)

    def _draft_plan(self, deployment: Deployment, mv: ModelVersion) -> _Draft:
        if mv.name != deployment.model_name and (mv.training or {}).get("features"):
            # A fallback trained on a training set gets its own features; one without
            # training metadata shares the deployment's declared list.
            deployment = Deployment(deployment.name, deployment.fallback or deployment.model)
        refs = self.project.features_for(deployment, mv.ref, mv.training)
        readers = {}
        for ref in refs:
            if isinstance(ref, FeatureRef):
                source = ref.feature_set.source
                readers[source.name] = self.reader(source)
        names = tuple(ref.name for ref in refs)
        signature = mv.signature
        if signature.is_columnar:
            if sorted(signature.input_names) != sorted(names):
                raise ConfigError(
                    f"model {mv.ref} takes inputs {signature.input_names} but its features are {list(names)}"
                )
            layout = "columns"
        else:
            width = signature.inputs[0].shape[1]
            if width not in (-1, len(names)):
                raise ConfigError(f"model {mv.ref} takes {width} columns but has {len(names)} features")
            layout = "matrix"
        return _Draft(mv, refs, readers, layout, names)


def _feature_info(ref: FeatureRef | RequestField) -> dict[str, Any]:
    if isinstance(ref, RequestField):
        return {"name": ref.name, "request": ref.source, "type": ref.type}
    return {"name": ref.name, "set": ref.feature_set.name, "version": ref.feature_set.version}


def _breaker_open(guard: Mapping[str, Any]) -> bool:
    breaker = guard.get("breaker") or {}
    return breaker.get("state") in ("open", "forced_open", "half_open")
