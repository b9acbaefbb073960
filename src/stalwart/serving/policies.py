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
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stalwart.config import Settings
from stalwart.durations import parse_seconds
from stalwart.errors import ConfigError
from stalwart.monitoring.quality import OutputReading
from stalwart.project import Deployment, parse_model_ref
from stalwart.resilience import GuardConfig, ShedderConfig
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
        primary = Variant(
            "primary", deployment.model_name, deployment.model_version,
            ChainSpec(f"deployment/{name}/primary", name, guard, validation),
        )
        fallback = None
        if deployment.fallback:
            model, version = parse_model_ref(deployment.fallback, f"{where} fallback")
            fallback = Variant("fallback", model, version, ChainSpec(f"deployment/{name}/fallback", name, guard, validation))
        canary, router = None, None
        if deployment.canary:
            model, version = parse_model_ref(deployment.canary, f"{where} canary")
            canary = Variant("canary", model, version, ChainSpec(f"deployment/{name}/canary", name, guard, validation))
        # Each shadow has a chain entry of its own: its own breaker and bulkhead, its own
        # validation metrics label, and (isolated) its own batcher and model threads.
        shadows = tuple(
            Variant(
                spec.name, spec.model_name, spec.model_version,
                ChainSpec(f"deployment/{name}/shadow:{spec.name}", f"{name}/shadow:{spec.name}", guard, validation, isolated=True),
            )
            for spec in deployment.shadow_specs
        )
        if canary is not None or shadows:
            # The salt names the canary: a new canary version reshuffles who gets it (and
            # which keys each shadow samples); without one, the deployment's name.
            salt = f"{name}:{deployment.canary}" if deployment.canary else name
            rates = {spec.name: spec.rate for spec in deployment.shadow_specs}
            try:
                router = Router(salt, deployment.canary_weight, rates)
            except ConfigError as exc:
                raise ConfigError(f"{where} {exc.message}") from None
        source_guard = (
            _validated(GuardConfig, deployment.source_guard, f"{where} source_guard")
            if deployment.source_guard is not None
            else DEFAULT_SOURCE_GUARD
        )
        log = _validated(LogPolicy, deployment.log, f"{where} log") if deployment.log is not None else LogPolicy()
        reading = OutputReading.from_mapping(deployment.quality, where)  # also read by the quality reports
        return cls(
            deployment=deployment,
            log=log,
            primary=primary,
            fallback=fallback,
            shedding=shedding,
            last_good_seconds=last_good,
            default_prediction=dict(deployment.default_prediction) if deployment.default_prediction is not None else None,
            source_guard=source_guard,
            canary=canary,
            router=router,
            shadows=shadows,
            shadow_time_limits={spec.name: spec.time_limit for spec in deployment.shadow_specs},
            reading=reading,
        )


@dataclass(frozen=True, slots=True)
class ServingPolicy:
    """Every entrypoint's policies, from the settings and the project's deployments."""

    batching: BatchingPolicy
    model_guard: GuardConfig  # /v2: each model's chain, unless it has a limit of its own
    model_guards: Mapping[str, GuardConfig]  # /v2: models with a time limit of their own
    model_shedding: ShedderConfig  # /v2: each model's shedder
    deployments: Mapping[str, DeploymentPolicy]
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
