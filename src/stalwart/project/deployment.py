"""Declaring a deployment: a named endpoint that binds a model to the features it needs,
with its policies and its degradation ladder.

>>> fraud = Deployment("fraud", model="fraud")          # the latest registered version
>>> pinned = Deployment("fraud-v3", model="fraud:3")    # one version, whatever comes later
>>> careful = Deployment(
...     "fraud-careful", model="fraud",
...     guard={"timeout": {"timeout_duration": "150ms"}},
...     fallback="fraud-lite", last_good="10m",
...     default_prediction={"predict": 0, "predict_proba": [1.0, 0.0]},
... )

Without ``features=``, a deployment serves the features the model was trained with (its
training set's feature list), and refuses to serve when the project's definition of one of
them is not the version the model saw in training.

Policies are plain mappings here, so a project file imports nothing heavy; the server
validates them once, when it loads the project, and names the deployment and field of any
mistake:

- ``guard``: the model's circuit breaker, bulkhead and timeout
  (:class:`stalwart.resilience.GuardConfig`).
- ``source_guard``: the same, around each online feature source.
- ``shedding``: load shedding (:class:`stalwart.resilience.ShedderConfig`).
- ``validation``: policy overrides, ``{"default": "flag", "features": {"amount": "clip"}}``.
- ``log``: what the prediction log keeps of this deployment's requests:
  ``{"sample": 0.1, "inputs": "hash", "redact": {"card_id": "hash", "email": "drop"}}``
  (``sample``: the share of answered requests recorded, every other outcome always is;
  ``redact``: fields dropped or replaced by a keyed hash before anything is stored).
- ``quality``: how labels are compared with the model's outputs
  (:class:`stalwart.monitoring.quality.OutputReading`): ``{"score": "probability",
  "positive": "fraud"}``; by default ``predict`` is the class and ``predict_proba`` the scores.

- ``canary`` and ``canary_weight``: another model version (``"fraud:3"``) answering a share of
  the requests, chosen by a sticky hash of the first entity's key (or the
  ``X-Stalwart-Routing-Key`` header, else the request id): the same entity gets the same
  variant, and raising the weight only moves entities to the canary. The answer says which
  variant answered (``variant`` in the body, ``X-Stalwart-Variant``).
- ``shadows``: model versions that see a sampled copy of the requests and never answer
  (``{"next": "fraud:4"}``, or ``{"next": {"model": "fraud:4", "rate": 0.25, "time_limit":
  "2s"}}``: a sticky share of routing keys; a shadow call not answered within
  ``time_limit``, 2 s by default, is abandoned and counted).
- ``rollout``: the plan of this deployment's canary rollouts (:mod:`stalwart.rollout.plan`:
  ``{"steps": [0.05, 0.25, 0.5], "min_seconds": "5m", "min_requests": 1000}``); ``stalwart
  rollout start`` moves the canary's weight step by step, judging it against the primary,
  and promotes it or rolls it back by itself. All of these are the declaration; the CLI and
  the admin API change them at run time (``docs/rollouts.md``).

The degradation ladder, tried in order when the model call fails (an open breaker, a
timeout, a model error): ``fallback`` (another model, usually simpler), the entity's
``last_good`` prediction if no older than that (a duration, :mod:`stalwart.durations`),
``default_prediction``, then the error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart.durations import Duration, parse_seconds
from stalwart.errors import ConfigError

__all__ = ["DEFAULT_SHADOW_TIME_LIMIT", "Deployment", "ShadowSpec", "parse_model_ref"]

DEFAULT_SHADOW_TIME_LIMIT = 2.0
"""Seconds a shadow call may take before it is abandoned (the model's own guard, 1 s by
default, and the feature sources' come first)."""
_SHADOW_KEYS = frozenset({"model", "rate", "time_limit"})
_RESERVED_VARIANTS = frozenset({"primary", "canary", "fallback"})
_MAX_SHADOWS = 16  # each has its own worker tasks, executor and breaker


def parse_model_ref(ref: str, where: str) -> tuple[str, int | None]:
    """``"name"`` or ``"name:version"`` as ``(name, version or None)``."""
    name, sep, version = ref.partition(":")
    if not name or (sep and not version.isdigit()):
        raise ConfigError(f"{where}: model {ref!r} must be 'name' or 'name:version'")
    return name, int(version) if sep else None


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """One declared shadow, checked: its name, model reference, sample rate and time limit."""

    name: str
    model: str  # "name" or "name:version", as declared
    model_name: str
    model_version: int | None  # None: the latest registered version
    rate: float  # share of routing keys shadowed, in [0, 1]
    time_limit: float  # seconds


@dataclass(frozen=True, eq=False)
class Deployment:
    """A named endpoint, ``POST /v1/deployments/{name}/predict``."""

    name: str
    model: str
    features: Sequence[Any] | None = None
    description: str = ""
    guard: Mapping[str, Any] | None = None
    source_guard: Mapping[str, Any] | None = None
    shedding: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None
    fallback: str | None = None
    last_good: Duration | None = None
    default_prediction: Mapping[str, Any] | None = None
    log: Mapping[str, Any] | None = None
    quality: Mapping[str, Any] | None = None
    canary: str | None = None  # another model version answering a sticky share of entities
    canary_weight: float = 0.0  # that share, in [0, 1]
    shadows: Mapping[str, str | Mapping[str, Any]] | None = None  # name -> "model:version" or {model, rate, time_limit}
    rollout: Mapping[str, Any] | None = None  # the plan `stalwart rollout start` uses (stalwart.rollout.plan)
    model_name: str = field(init=False)
    model_version: int | None = field(init=False)
    shadow_specs: tuple[ShadowSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "_").replace("_", "a").isalnum():
            raise ConfigError(f"deployment name {self.name!r} may hold only letters, digits, '-' and '_'")
        name, version = parse_model_ref(self.model, f"deployment '{self.name}'")
        object.__setattr__(self, "model_name", name)
        object.__setattr__(self, "model_version", version)
        if self.fallback is not None:
            parse_model_ref(self.fallback, f"deployment '{self.name}' fallback")
        if self.canary is not None:
            parse_model_ref(self.canary, f"deployment '{self.name}' canary")
        weight = self.canary_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
            raise ConfigError(f"deployment '{self.name}' canary_weight: {weight!r} must be a number from 0 to 1")
        if weight and self.canary is None:
            raise ConfigError(f"deployment '{self.name}' canary_weight: {weight} is set but no canary model is named; add canary='model:version'")
        if self.last_good is not None:
            # Checked here so a typo fails where the project declares it, not at serve time.
            parse_seconds(self.last_good, f"deployment '{self.name}' last_good", positive=True)
        object.__setattr__(self, "shadow_specs", _shadow_specs(self.name, self.shadows))


def _shadow_specs(deployment: str, shadows: Mapping[str, Any] | None) -> tuple[ShadowSpec, ...]:
    """The ``shadows`` declaration checked, in declaration order; ConfigError naming the
    deployment and the field (``shadows['next'].rate``) on a mistake."""
    where = f"deployment '{deployment}' shadows"
    if shadows is None:
        return ()
    if not isinstance(shadows, Mapping):
        raise ConfigError(f"{where}: {shadows!r} must map each shadow's name to 'model:version' or {{'model': ..., 'rate': ...}}")
    if len(shadows) > _MAX_SHADOWS:
        raise ConfigError(f"{where}: {len(shadows)} shadows declared, at most {_MAX_SHADOWS}")
    specs = []
    for name, value in shadows.items():
        if not isinstance(name, str) or not name or not name.replace("-", "_").replace("_", "a").isalnum():
            raise ConfigError(f"{where}: shadow name {name!r} may hold only letters, digits, '-' and '_'")
        if name in _RESERVED_VARIANTS:
            raise ConfigError(f"{where}[{name!r}]: {name!r} names a variant already; call the shadow something else")
        field_ = f"{where}[{name!r}]"
        if isinstance(value, str):
            declared: Mapping[str, Any] = {"model": value}
        elif isinstance(value, Mapping):
            declared = value
            unknown = sorted(str(k) for k in set(value) - _SHADOW_KEYS)
            if unknown:
                raise ConfigError(f"{field_}.{unknown[0]}: unknown field; a shadow takes {', '.join(sorted(_SHADOW_KEYS))}")
        else:
            raise ConfigError(f"{field_}: {value!r} must be 'model:version' or {{'model': ..., 'rate': ...}}")
        model = declared.get("model")
        if not isinstance(model, str):
            raise ConfigError(f"{field_}.model: name the shadow's model as 'name' or 'name:version', got {model!r}")
        model_name, model_version = parse_model_ref(model, f"{field_}.model")
        rate = declared.get("rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{field_}.rate: {rate!r} must be a number from 0 to 1 (the share of requests shadowed)")
        limit = declared.get("time_limit")
        time_limit = (
            DEFAULT_SHADOW_TIME_LIMIT if limit is None else parse_seconds(limit, f"{field_}.time_limit", positive=True)
        )
        specs.append(ShadowSpec(name, model, model_name, model_version, float(rate), time_limit))
    return tuple(specs)
