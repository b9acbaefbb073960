"""Every replica serves the routes in the database, within a poll of a change.

At start the server takes each deployment's routes from ``deployment_routes`` (writing the
project's declaration where it is new or changed: ``stalwart.rollout.routes``), then polls
the revisions every ``STALWART_ROUTES_POLL_SECONDS`` (default 0.5 s, so replicas route
alike within a second of a change). When one moves, the new routes' models are loaded
first (a canary's first requests must not pay its load, or its latency would be judged on
it), then the deployment's policy is swapped for one serving them: requests already routed
finish on the variant they were given, the next ones route anew.

A database that cannot be read is logged and the current routes kept: replicas go on
serving what they last knew rather than fall back to the project file.
"""

from __future__ import annotations

import asyncio
import contextlib

from stalwart.errors import StalwartError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import RouteMetrics
from stalwart.rollout.routes import Routes, RouteStore
from stalwart.serving.deployments import Deployments
from stalwart.serving.repository import ModelRepository

__all__ = ["RouteSync"]

_log = get_logger("stalwart.routes")

# A variant's model that does not load within this is swapped in anyway: its requests then
# fail over along the ladder (and a rollout's controller sees the errors and rolls back).
_WARM_SECONDS = 30.0


class RouteSync:
    """Keeps ``deployments``' policies serving the routes in ``store``."""

    def __init__(
        self, store: RouteStore, deployments: Deployments, repository: ModelRepository, *,
        poll_seconds: float, actor: str, metrics: RouteMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.deployments = deployments
        self.repository = repository
        self.poll_seconds = poll_seconds
        self.actor = actor
        self.revisions: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the routes from the database (writing the declaration where due), then poll."""
        declared = {d.name: d for d in self.deployments.deployments()}
        found = await asyncio.to_thread(self.store.sync_declared, declared, self.actor)
        for name, (routes, revision) in found.items():
            if routes != self.deployments.policy(name).routes:
                await self._warm(name, routes)
            self._apply(name, routes, revision)
        self._task = asyncio.create_task(self._poll(), name="stalwart-routes-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> list[str]:
        """Take every changed deployment's routes now; the names of those that changed."""
        revisions = await asyncio.to_thread(self.store.revisions)
        changed = [name for name, rev in revisions.items() if name in self.revisions and rev != self.revisions[name]]
        for name in changed:
            routes, revision = await asyncio.to_thread(self.store.get, name)
            await self._warm(name, routes)
            self._apply(name, routes, revision)
        return changed

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except StalwartError as exc:
                if not failing:  # once per outage, not every half second
                    _log.warning("cannot read the deployments' routes; serving the last known", error=exc.message)
                failing = True
            else:
                if failing:
                    _log.info("reading the deployments' routes again")
                failing = False

    async def _warm(self, name: str, routes: Routes) -> None:
        policy = self.deployments.policy(name).with_routes(routes)
        variants = [policy.primary, *([policy.canary] if policy.canary else []), *policy.shadows]
        for variant in variants:
            try:
                await asyncio.wait_for(self.repository.get(variant.model, variant.version), _WARM_SECONDS)
            except (StalwartError, TimeoutError) as exc:
                _log.warning(
                    "a variant's model did not load; routing to it anyway (its requests fail over)",
                    deployment=name, variant=variant.name, model=variant.model, version=variant.version,
                    error=getattr(exc, "message", type(exc).__name__),
                )

    def _apply(self, name: str, routes: Routes, revision: int) -> None:
        before = self.deployments.policy(name)
        if before.routes != routes:
            self.deployments.set_routes(name, routes)
            _log.info("routes changed", deployment=name, revision=revision, routes=routes.to_dict())
        self.revisions[name] = revision
        if self.metrics is not None:
            self.metrics.set_routes(name, revision, routes.primary, routes.canary, routes.canary_weight)
