"""Every entrypoint policy, built once from configuration.

The data plane never reads a setting or a declaration per request: it is handed a
:class:`ServingPolicy` made here when the app starts, which holds

- for ``/v2``: the guard (breaker, time limit) and the load-shedding config each model gets;
- the batching policy each model version's batcher gets;
- for each deployment a :class:`DeploymentPolicy`: its variants (each a model reference and
  the :class:`ChainSpec` put in front of it), its ladder (fallback variant, last good,
  default prediction), its shedding and its feature sources' guard, and its shadows (each a
  variant whose chain runs the model on a batcher and executor of its own: ``isolated``).

Mistakes in a deployment's policies are :class:`~stalwart.errors.ConfigError` naming the
deployment and the field, raised at start, never in a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stalwart.config import Settings
from stalwart.durations import parse_seconds
from stalwart.errors import ConfigError
from stalwart.monitoring.quality import OutputReading
from stalwart.project import Deployment, parse_model_ref
from stalwart.resilience import GuardConfig, ShedderConfig
from stalwart.rollout.routes import Routes, declared_routes
from stalwart.rollout.routing import Router
from stalwart.serving.batching import BatchingPolicy
from stalwart.validation.policy import PolicyOverrides

__all__ = [
    "DEFAULT_MODEL_GUARD",
    "DEFAULT_SOURCE_GUARD",
    "PRIMARY_SHARE_OF_DEADLINE",
    "ChainSpec",
    "DeploymentPolicy",
    "LogPolicy",
    "ServingPolicy",
    "Variant",
]

# A deployment's model guard unless it declares one: resilience4j's breaker with the ML
# defaults of stalwart.resilience, a one-second time limit, and a bulkhead sized for
# batching (requests waiting for batch mates count as calls in flight).
DEFAULT_MODEL_GUARD = GuardConfig.model_validate({"bulkhead": {"max_concurrent_calls": 256}})

# Each online feature source's guard unless the deployment declares one: a source that
# does not answer in 500 ms is treated as failing (cached values or defaults serve).
DEFAULT_SOURCE_GUARD = GuardConfig.model_validate({"timeout": {"timeout_duration": 0.5}, "bulkhead": {"max_concurrent_calls": 64}})


class LogPolicy(BaseModel):
    """What the prediction log keeps of a deployment's requests (``Deployment(log=...)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample: float = Field(default=1.0, ge=0, le=1, description="share of answered requests recorded")
    inputs: Literal["all", "hash", "none"] | None = Field(default=None, description="None: the server's setting")
    redact: dict[str, Literal["drop", "hash"]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """What an entrypoint puts in front of a model version."""

    entry: str  # "/v2" or "deployment/<name>/<variant>": the cache key and guard name prefix
    label: str  # the metrics' deployment label: a deployment name, or "model:<name>"
    guard: GuardConfig | None = None
    validation: PolicyOverrides | None = None
    # True for a shadow: the model runs on a batcher and executor of this entry's own, never
    # on the version's shared ones, so a shadow that hangs cannot hold the primary's threads.
    isolated: bool = False


@dataclass(frozen=True, slots=True)
class Variant:
    """One model a deployment can answer with, and the chain in front of it."""

    name: str  # "primary", "canary", "fallback", or a shadow's name
    model: str
    version: int | None  # None: the latest registered version
    chain: ChainSpec


# The share of a request's remaining deadline the primary may spend when a fallback model
# could answer instead: the rest is kept for the fallback, so a hanging primary makes a
# degraded answer, not a 504. (Last good and default answers need no time.)
PRIMARY_SHARE_OF_DEADLINE = 0.6


@dataclass(frozen=True, slots=True)
class DeploymentPolicy:
    """A deployment's validated policies: variants, ladder, shedding, source guard."""

    deployment: Deployment
    primary: Variant
    fallback: Variant | None
    shedding: ShedderConfig
    last_good_seconds: float | None
    default_prediction: Mapping[str, Any] | None
    source_guard: GuardConfig | None
    log: LogPolicy
    guard: GuardConfig  # each model variant's chain: breaker, bulkhead, time limit
    validation: PolicyOverrides | None
    routes: Routes  # who answers now (the project's declaration, or as changed at run time)
    canary: Variant | None = None
    router: Router | None = None  # set with a canary or shadows: who answers and who shadows, by a sticky hash
    shadows: tuple[Variant, ...] = ()  # see a copy of the requests; never answer one
    shadow_time_limits: Mapping[str, float] = field(default_factory=dict)  # seconds, by shadow name
    reading: OutputReading = field(default_factory=OutputReading)  # a prediction's class and score (pairing)

    @classmethod
    def build(cls, deployment: Deployment) -> DeploymentPolicy:
        """Validate a deployment's policies once, naming the deployment and field of a mistake."""
        where = f"deployment '{deployment.name}'"
        guard = _validated(GuardConfig, deployment.guard, f"{where} guard") if deployment.guard is not None else DEFAULT_MODEL_GUARD
        shedding = _validated(ShedderConfig, deployment.shedding, f"{where} shedding") if deployment.shedding is not None else ShedderConfig()
        validation = PolicyOverrides.parse(deployment.validation, source=f"{where} validation") if deployment.validation else None
        last_good = parse_seconds(deployment.last_good, f"{where} last_good", positive=True) if deployment.last_good is not None else None
        name = deployment.name
        fallback = None
        if deployment.fallback:
            model, version = parse_model_ref(deployment.fallback, f"{where} fallback")
            fallback = Variant("fallback", model, version, ChainSpec(f"deployment/{name}/fallback", name, guard, validation))
        source_guard = (
            _validated(GuardConfig, deployment.source_guard, f"{where} source_guard")
            if deployment.source_guard is not None
            else DEFAULT_SOURCE_GUARD
        )
        log = _validated(LogPolicy, deployment.log, f"{where} log") if deployment.log is not None else LogPolicy()
        reading = OutputReading.from_mapping(deployment.quality, where)  # also read by the quality reports
        routes = declared_routes(deployment)
        return cls(
            deployment=deployment,
            log=log,
            fallback=fallback,
            shedding=shedding,
            last_good_seconds=last_good,
            default_prediction=dict(deployment.default_prediction) if deployment.default_prediction is not None else None,
            source_guard=source_guard,
            guard=guard,
            validation=validation,
            reading=reading,
            **_variants(name, routes, guard, validation),
        )

    def with_routes(self, routes: Routes) -> DeploymentPolicy:
        """These policies serving ``routes`` (a change made at run time): the same ladder,
        shedding and guards' configuration, other variants."""
        return replace(self, **_variants(self.deployment.name, routes, self.guard, self.validation))


def _variants(name: str, routes: Routes, guard: GuardConfig, validation: PolicyOverrides | None) -> dict[str, Any]:
    """A deployment's primary, canary, shadows and router, from its routes. Each variant
    has a chain (and so a guard, breaker and batcher) of its own, named by its role: a canary
    that fails opens the canary's breaker, never the primary's."""

    def variant(role: str, ref: str, where: str) -> Variant:
        model, version = parse_model_ref(ref, f"deployment '{name}' {where}")
        return Variant(role, model, version, ChainSpec(f"deployment/{name}/{role}", name, guard, validation))

    primary = variant("primary", routes.primary, "model")
    canary = variant("canary", routes.canary, "canary") if routes.canary is not None else None
    # Each shadow has a chain entry of its own: its own breaker and bulkhead, its own
    # validation metrics label, and (isolated) its own batcher and model threads.
    shadows = []
    for shadow, spec in routes.shadows.items():
        model, version = parse_model_ref(spec.model, f"deployment '{name}' shadows[{shadow!r}]")
        chain = ChainSpec(f"deployment/{name}/shadow:{shadow}", f"{name}/shadow:{shadow}", guard, validation, isolated=True)
        shadows.append(Variant(shadow, model, version, chain))
    router = None
    if canary is not None or shadows:
        try:
            router = Router(
                routes.salt or name, routes.canary_weight if canary is not None else 0.0,
                shadows={s: spec.rate for s, spec in routes.shadows.items()},
            )
        except ConfigError as exc:
            raise ConfigError(f"deployment '{name}' {exc.message}") from None
    return {
        "routes": routes, "primary": primary, "canary": canary, "shadows": tuple(shadows), "router": router,
        "shadow_time_limits": {s: spec.time_limit for s, spec in routes.shadows.items()},
    }


@dataclass(frozen=True, slots=True)
class ServingPolicy:
    """Every entrypoint's policies, from the settings and the project's deployments."""

    batching: BatchingPolicy
    model_guard: GuardConfig  # /v2: each model's chain, unless it has a limit of its own
    model_guards: Mapping[str, GuardConfig]  # /v2: models with a time limit of their own
    model_shedding: ShedderConfig  # /v2: each model's shedder
    deployments: dict[str, DeploymentPolicy]  # swapped per deployment when its routes change
    max_entities: int  # /v1: entities one request may name

    @classmethod
    def build(cls, settings: Settings, deployments: Mapping[str, Deployment]) -> ServingPolicy:
        batching = BatchingPolicy(
            enabled=settings.batching,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_batch_wait_ms,
            adaptive=settings.batch_adaptive,
        )
        # /v2 calls get a breaker and a time limit (a hung model answers 504, the request's
        # own deadline can only shorten it); no bulkhead: load shedding bounds the backlog.
        def guard(seconds: float, where: str) -> GuardConfig:
            config: GuardConfig = _validated(GuardConfig, {"bulkhead": None, "timeout": {"timeout_duration": seconds}}, where)
            return config

        return cls(
            batching=batching,
            model_guard=guard(settings.model_timeout_seconds, "STALWART_MODEL_TIMEOUT_SECONDS"),
            model_guards={m: guard(t, f"STALWART_MODEL_TIMEOUTS[{m!r}]") for m, t in settings.model_timeouts.items()},
            model_shedding=ShedderConfig(),
            deployments={name: DeploymentPolicy.build(d) for name, d in deployments.items()},
            max_entities=settings.max_entities,
        )

    def model_chain(self, model: str) -> ChainSpec:
        """The chain ``/v2`` puts in front of a model's versions."""
        return ChainSpec("/v2", f"model:{model}", self.model_guards.get(model, self.model_guard))


def _validated(model: type[BaseModel], data: Mapping[str, Any], where: str) -> Any:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None
