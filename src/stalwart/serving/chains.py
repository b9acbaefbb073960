"""The stage chain each entrypoint calls, built once per entrypoint and model version.

A model version's own pipeline (``LoadedModel.pipeline``) is its batcher: shared by every
entrypoint, so ``/v2`` traffic and deployment traffic for one version batch together. In
front of it each entrypoint (``/v2`` for the model, or a deployment's variant) gets

    Tracked (the version's calls in flight and last use; its max_calls), when needed
      → ValidationStage (the version's active schema, with the entrypoint's policy overrides)
        → GuardStage (the entrypoint's breaker, bulkhead and timeout)
          → the version's pipeline

Stages that are not configured are not built. Chains are cached; when someone attaches
or activates a schema, the registry poll drops the chains of that version and the next
request builds them again with the new schema. When the memory budget unloads a version
(``serving/residency.py``), its chains and isolated pipelines are dropped (:meth:`Chains.drop`);
a request that resolved the version before that reaches a ``Tracked`` whose version is
retired, which loads the version again and runs the request on the new chain: nothing of
the request has run yet, so nothing runs twice. ``Tracked`` is built only where it is
needed (a memory budget is set, or the model has a call limit): otherwise nothing is
unloaded and nothing limited, and the chain costs nothing more per request (it costs about
0.3 µs: ``benchmarks/bench_resources.py``).

An ``isolated`` entry (a deployment's shadow) ends not in the version's shared pipeline but
in a pipeline of its own, made once per entry and version by the ``isolated`` factory the
app gives (a batcher on an executor of its own): a shadow of the very version the primary
serves still never queues behind, or occupies, the primary's model threads.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from stalwart.errors import ConfigError, NotReady, Overloaded, StalwartError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import ResilienceMetrics
from stalwart.pipeline import Exchange, Stage
from stalwart.registry import Registry
from stalwart.registry.schemas import SchemaRevision
from stalwart.resilience import (
    BreakerEvent,
    BreakerState,
    Guard,
    GuardConfig,
    GuardStage,
    loop_scheduler,
)
from stalwart.serving.policies import ChainSpec
from stalwart.serving.repository import LoadedModel, Pipeline
from stalwart.serving.residency import Usage
from stalwart.validation.stage import ValidationMetrics, ValidationStage
from stalwart.validation.validator import Validator

__all__ = ["Chains", "IsolatedPipelines", "Resolve", "Tracked", "make_guard"]

IsolatedPipelines = Callable[[str, LoadedModel], Pipeline]
"""Makes the pipeline of an isolated chain entry for a loaded version (see the module docstring)."""

Resolve = Callable[[str, int, float | None], Awaitable[LoadedModel]]
"""The loaded model of ``(name, version)``, loading it within a deadline: ``ModelRepository.get``."""

# A request over a version's max_calls is told to retry after this many seconds.
_RETRY_SECONDS = 1.0

_log = get_logger("stalwart.resilience")
_STATES = tuple(state.value for state in BreakerState)


class Chains:
    """Builds, caches and refreshes entrypoint chains."""

    def __init__(
        self,
        registry: Registry,
        validation_metrics: ValidationMetrics,
        resilience_metrics: ResilienceMetrics,
        *,
        isolated: IsolatedPipelines | None = None,
        resolve: Resolve | None = None,
        track: bool = False,
    ) -> None:
        """``resolve`` loads a version again for a request whose version was unloaded
        under it (without one, that request gets :class:`NotReady`). ``track``: count
        every version's calls in flight and last use (versions may be unloaded: a memory
        budget is set); without it, only versions with a call limit are tracked."""
        self._registry = registry
        self._track = track
        self._isolated = isolated
        self._resolve = resolve
        self._pipelines: dict[tuple[str, str, int], Pipeline] = {}  # isolated entries' own, kept across rebuilds
        self._validation_metrics = validation_metrics
        self._resilience_metrics = resilience_metrics
        self._chains: dict[tuple[str, str, int], Stage] = {}
        self._guards: dict[tuple[str, str, int], Guard] = {}
        self._in_use: dict[tuple[str, int], int | None] = {}  # schema revision each version's chains use
        self._schemas: dict[tuple[str, int], SchemaRevision | None] = {}  # newer than at load

    def get(self, spec: ChainSpec, loaded: LoadedModel) -> Stage:
        """The chain for this entrypoint and loaded version (built on first use; no I/O)."""
        cached = self._chains.get((spec.entry, loaded.version.name, loaded.version.version))
        if cached is not None:
            return cached
        return self._build(spec, loaded)

    def validates(self, loaded: LoadedModel) -> bool:
        """Whether this version's chains validate its inputs (it has an input schema)."""
        mv = loaded.version
        return self._schemas.get((mv.name, mv.version), loaded.schema) is not None

    async def rerun(self, spec: ChainSpec, name: str, version: int, exchange: Exchange) -> None:
        """Run ``exchange`` through the chain of a version loaded again (its earlier load was
        unloaded after the request resolved it)."""
        if self._resolve is None:
            raise NotReady(f"model {name}:{version} was unloaded; retry the request", retry_after=_RETRY_SECONDS)
        loaded = await self._resolve(name, version, exchange.deadline)
        await self.get(spec, loaded)(exchange)

    async def drop(self, loaded: LoadedModel) -> None:
        """Forget the chains of an unloaded version and close its isolated pipelines (its
        guards stay: a breaker's state outlives a reload)."""
        mv = loaded.version
        for key in [k for k in self._chains if (k[1], k[2]) == (mv.name, mv.version)]:
            del self._chains[key]
        owned = [self._pipelines.pop(k) for k in [k for k in self._pipelines if (k[1], k[2]) == (mv.name, mv.version)]]
        await asyncio.gather(*(pipeline.close() for pipeline in owned))

    async def close(self) -> None:
        """Close every isolated pipeline (at shutdown)."""
        owned = list(self._pipelines.values())
        self._pipelines.clear()
        await asyncio.gather(*(pipeline.close() for pipeline in owned))

    def guards(self, entry_prefix: str) -> list[Guard]:
        """The guards of every chain whose entry starts with ``entry_prefix``."""
        return [g for (entry, _, _), g in self._guards.items() if entry.startswith(entry_prefix)]

    async def refresh(self) -> None:
        """Drop chains whose version's active schema changed (called by the registry poll)."""
        try:
            revisions = await asyncio.to_thread(self._registry.schemas.active_revisions)
        except StalwartError as exc:
            _log.warning("schema poll failed", error=exc.message)
            return
        # Compare with what the built chains use, not with the previous poll: a schema
        # attached between a version's load and the first poll must be noticed too.
        changed = [k for k, used in self._in_use.items() if revisions.get(k) != used]
        for model, version in changed:
            try:
                self._schemas[(model, version)] = await asyncio.to_thread(self._registry.schemas.active, model, version)
            except StalwartError as exc:
                _log.warning("schema read failed", model=model, version=version, error=exc.message)
                continue
            for key in [k for k in self._chains if (k[1], k[2]) == (model, version)]:
                del self._chains[key]
                _log.info("schema changed; rebuilding validation", model=model, version=version, entry=key[0])

    def _build(self, spec: ChainSpec, loaded: LoadedModel) -> Stage:
        mv = loaded.version
        if loaded.usage.retired:  # unloaded: nothing to build, the call runs on the version loaded again
            return Tracked(loaded.pipeline, loaded.usage, sys.maxsize, spec, mv.name, mv.version, self)
        key = (spec.entry, mv.name, mv.version)
        stage: Stage = self._pipeline(spec, loaded) if spec.isolated else loaded.pipeline
        if spec.guard is not None:
            guard = self._guards.get(key)
            if guard is None:
                guard = make_guard(f"{spec.entry}/{mv.ref}", spec.guard, self._resilience_metrics)
                self._guards[key] = guard
            stage = GuardStage(guard, stage)
        revision = self._schemas.get((mv.name, mv.version), loaded.schema)
        self._in_use[(mv.name, mv.version)] = revision.revision if revision is not None else None
        if revision is not None:
            validator = Validator(
                revision.schema,
                matrix=None if mv.signature.is_columnar else mv.signature.inputs[0].name,
                policies=spec.validation,
                subject=f"model {mv.ref}'s input schema (revision {revision.revision})",
            )
            stage = ValidationStage(validator, stage, deployment=spec.label, metrics=self._validation_metrics)
        limit = sys.maxsize if spec.isolated else loaded.usage.max_calls  # a shadow's calls are bounded by its runner
        if self._track or loaded.usage.max_calls != sys.maxsize:
            stage = Tracked(stage, loaded.usage, limit, spec, mv.name, mv.version, self)
        self._chains[key] = stage
        return stage


    def _pipeline(self, spec: ChainSpec, loaded: LoadedModel) -> Stage:
        if self._isolated is None:
            raise ConfigError(f"chain {spec.entry!r} must run on a pipeline of its own, and this server makes none")
        key = (spec.entry, loaded.version.name, loaded.version.version)
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            pipeline = self._pipelines[key] = self._isolated(spec.entry, loaded)
        return pipeline.stage


class Tracked:
    """The top of every chain: counts the version's calls in flight (an unloaded version
    must be idle), stamps its last use (the least recently used goes first), and turns away
    calls past the version's ``max_calls`` with :class:`Overloaded` (503, Retry-After). The
    call of a version unloaded since it was resolved runs on the version loaded again."""

    __slots__ = ("_chains", "_limit", "_name", "_next", "_spec", "_usage", "_version")

    def __init__(self, next_stage: Stage, usage: Usage, limit: int, spec: ChainSpec, name: str, version: int, chains: Chains) -> None:
        self._next = next_stage
        self._usage = usage
        self._limit = limit
        self._spec = spec
        self._name = name
        self._version = version
        self._chains = chains

    async def __call__(self, exchange: Exchange) -> None:
        usage = self._usage
        if usage.retired:
            await self._chains.rerun(self._spec, self._name, self._version, exchange)
            return
        if usage.in_flight >= self._limit:
            raise Overloaded(
                f"model {self._name}:{self._version} has {usage.in_flight} calls in flight, its limit "
                f"(STALWART_MODEL_MAX_CALLS, or its STALWART_MODEL_LIMITS entry); retry shortly",
                retry_after=_RETRY_SECONDS,
            )
        usage.in_flight += 1
        usage.last_used = time.monotonic()
        try:
            await self._next(exchange)
        finally:
            usage.in_flight -= 1


def make_guard(name: str, config: GuardConfig, metrics: ResilienceMetrics) -> Guard:
    """A guard whose breaker logs its state changes and exports them as metrics."""
    guard = Guard(name, config, scheduler=loop_scheduler(asyncio.get_running_loop()))
    if guard.breaker is not None:
        metrics.set_breaker_state(name, guard.breaker.state.value, _STATES)

        def on_event(event: BreakerEvent) -> None:
            if event.kind == "thresholds_exceeded":
                _log.warning("breaker thresholds exceeded", guard=name, failure_rate=event.failure_rate, slow_call_rate=event.slow_call_rate)
                return
            metrics.breaker_transitions.labels(name, event.from_state.value, event.to_state.value).inc()
            metrics.set_breaker_state(name, event.to_state.value, _STATES)
            log = _log.warning if event.to_state in (BreakerState.OPEN, BreakerState.FORCED_OPEN) else _log.info
            log(
                "breaker state changed",
                guard=name,
                from_state=event.from_state.value,
                to_state=event.to_state.value,
                reason=event.reason,
                failure_rate=event.failure_rate,
                slow_call_rate=event.slow_call_rate,
            )

        guard.breaker.add_listener(on_event)
    return guard
