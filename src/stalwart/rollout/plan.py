"""A rollout's plan: the canary's steps and what each must show before the next.

Declared on the deployment (``Deployment(rollout={...})``), given to ``stalwart rollout
start`` (``--steps 5,25,50 --min-seconds 5m --min-requests 1000``) or to the admin API; the
same fields everywhere:

- ``steps``: the canary's weights in order, each a share in (0, 1), rising. A step is a
  weight (``0.05``) or ``{"weight": 0.05, "min_seconds": "5m", "min_requests": 1000}``.
  After the last step passes, the canary is promoted (it becomes the primary); a final
  weight of 1 is read as that promotion, since at 100 % there is no primary left to compare.
- ``min_seconds`` and ``min_requests``: each step's defaults; a step moves on only once
  every required metric passed *and* it lasted that long *and* the canary answered that
  many requests in it (diurnal effects and cold caches show within minutes, not seconds).
- ``max_step_seconds``: a step still undecided after this long is held for a person
  (a canary that never gets enough traffic should not sit at 5 % forever, nor pass).
- ``look_seconds``: how often the controller looks.
- ``rules``: overrides of the default metric rules, by name
  (``{"error_rate": {"tolerance": 0.01}, "accuracy": {"required": True}}``), or ``None`` to
  drop one; see ``docs/rollouts.md`` for the rules and their defaults.

>>> plan = RolloutPlan.parse({"steps": [0.05, 0.25, 0.5], "min_seconds": "2m"})
>>> [s.weight for s in plan.steps], plan.steps[0].min_seconds
([0.05, 0.25, 0.5], 120.0)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stalwart.durations import parse_seconds
from stalwart.errors import ConfigError
from stalwart.rollout.judge import MetricRule

__all__ = ["DEFAULT_STEPS", "RolloutPlan", "Step"]

DEFAULT_STEPS = (0.05, 0.25, 0.5)


class Step(BaseModel):
    """One step: the canary's weight and what it must show before the next."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(gt=0, le=1)
    min_seconds: float = Field(ge=0)
    min_requests: int = Field(ge=0)


class RolloutPlan(BaseModel):
    """A validated plan (see the module docstring for its fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[Step, ...]
    look_seconds: float = Field(default=10.0, gt=0, le=3600)
    max_step_seconds: float = Field(default=6 * 3600.0, gt=0)
    rules: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if steps and steps[-1].weight == 1.0:
            steps = steps[:-1]  # 100 % is the promotion itself
        if not steps:
            raise ValueError("give at least one step with a weight below 1 (e.g. [0.05, 0.25, 0.5])")
        weights = [s.weight for s in steps]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"the weights must rise from step to step, got {weights}")
        return steps

    @model_validator(mode="after")
    def _bounded(self) -> RolloutPlan:
        if len(self.steps) > 20:
            raise ValueError("at most 20 steps")
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, where: str = "rollout") -> RolloutPlan:
        """A plan from its declaration; a mistake is a ConfigError naming ``where`` and the field."""
        raw = dict(data or {})
        defaults = {
            "min_seconds": _seconds(raw.pop("min_seconds", 300.0), f"{where}.min_seconds"),
            "min_requests": raw.pop("min_requests", 1000),
        }
        steps = raw.get("steps", DEFAULT_STEPS)
        if not isinstance(steps, list | tuple):
            raise ConfigError(f"{where}.steps: give a list of weights, e.g. [0.05, 0.25, 0.5]")
        raw["steps"] = [_step(step, defaults, f"{where}.steps[{i}]") for i, step in enumerate(steps)]
        for field in ("look_seconds", "max_step_seconds"):
            if field in raw:
                raw[field] = _seconds(raw[field], f"{where}.{field}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(problems) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def judged_by(self) -> tuple[MetricRule, ...]:
        """The rules this plan judges by: the defaults (``stalwart.rollout.evidence``) with
        the plan's overrides (``{"error_rate": {"tolerance": 0.01}}`` changes fields of a
        rule, ``None`` drops it); a mistake is a ConfigError naming the rule."""
        from stalwart.rollout.evidence import (
            default_rules,  # evidence reads the log: only when judged
        )

        base: dict[str, MetricRule] = {rule.name: rule for rule in default_rules()}
        overrides: dict[str, MetricRule | None] = {}
        for name, fields in self.rules.items():
            if name not in base:
                raise ConfigError(f"rollout.rules: no rule named {name!r}; the rules are {', '.join(base)}")
            if fields is None:
                overrides[name] = None
                continue
            try:
                overrides[name] = msgspec.convert({**msgspec.to_builtins(base[name]), **fields, "name": name}, MetricRule)
            except (msgspec.ValidationError, ConfigError) as exc:
                raise ConfigError(f"rollout.rules[{name!r}]: {getattr(exc, 'message', exc)}") from None
        rules: tuple[MetricRule, ...] = default_rules(**overrides)
        return rules


def _step(step: Any, defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
    if isinstance(step, int | float) and not isinstance(step, bool):
        return {"weight": step, **defaults}
    if isinstance(step, Mapping):
        merged = {**defaults, **step}
        merged["min_seconds"] = _seconds(merged["min_seconds"], f"{where}.min_seconds")
        return merged
    raise ConfigError(f"{where}: a step is a weight (0.05) or {{'weight': 0.05, 'min_seconds': '5m', 'min_requests': 1000}}")


def _seconds(value: Any, where: str) -> float:
    return parse_seconds(value, where)
