"""Rules, policies and what each policy does to each broken rule.

Rules, checked in this order (a value breaks at most one, the first):

==============  ==================================================================
``missing``     the feature is not in the request at all
``type``        wrong type (a string for a number, 2.5 for an integer, 7 for a bool)
``null``        None (or NaN in a string feature) where training saw no nulls
``not_finite``  NaN or ±infinity in a number feature (NaN passes when nullable)
``range``       a number outside ``[min, max]`` widened by the margin
``category``    a category not seen in training
``length``      a string shorter or longer than the training bounds (with margin)
==============  ==================================================================

What a policy does with a broken value (``reject`` fails the request, listing every
violation; the other actions are reported back with the response):

==============  ========  ========  ================================  =========
rule            reject    impute    clip                              flag
==============  ========  ========  ================================  =========
missing         rejected  imputed   imputed                           rejected
type            rejected  imputed   imputed                           rejected
null            rejected  imputed   imputed                           flagged
not_finite      rejected  imputed   clipped (±inf), imputed (NaN)     flagged
range           rejected  imputed   clipped to the bound              flagged
category        rejected  imputed   imputed                           flagged
length          rejected  imputed   clipped (truncated), imputed      flagged
==============  ========  ========  ================================  =========

``flag`` never changes a value, so it cannot serve one that is absent or of the wrong
type: those are rejected. ``clip`` bounds what has a bound and imputes the rest.

Which policy a feature gets, most specific first (:func:`resolve_policies`):

1. the deployment's per-feature override (``PolicyOverrides.features``),
2. the feature's own ``policy`` in the schema,
3. the deployment's default (``PolicyOverrides.default``),
4. the schema's ``default_policy`` (``reject`` unless edited).

A per-feature choice beats a default wherever it is made; at the same level the
deployment (the operator, who knows the traffic) beats the schema (learned from data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stalwart.errors import ConfigError
from stalwart.validation.schema import POLICIES, Policy, Schema

__all__ = [
    "ACTIONS",
    "RULES",
    "Action",
    "PolicyOverrides",
    "Rule",
    "action_for",
    "resolve_policies",
]

Rule = Literal["missing", "type", "null", "not_finite", "range", "category", "length"]
Action = Literal["rejected", "imputed", "clipped", "flagged"]
RULES: tuple[Rule, ...] = ("missing", "type", "null", "not_finite", "range", "category", "length")

# Internal codes: one per rule, with two rules split where ``clip`` treats the halves
# differently (NaN vs ±inf, too short vs too long). Code 0 is "no violation".
OK, MISSING, TYPE, NULL, NAN, INF, RANGE, CATEGORY, SHORT, LONG = range(10)
RULE_OF_CODE: tuple[Rule, ...] = (
    "missing", "missing", "type", "null", "not_finite", "not_finite", "range", "category", "length", "length",
)

_CLIP: dict[int, Action] = {
    MISSING: "imputed", TYPE: "imputed", NULL: "imputed", NAN: "imputed", INF: "clipped",
    RANGE: "clipped", CATEGORY: "imputed", SHORT: "imputed", LONG: "clipped",
}
_FLAG: dict[int, Action] = {
    MISSING: "rejected", TYPE: "rejected", NULL: "flagged", NAN: "flagged", INF: "flagged",
    RANGE: "flagged", CATEGORY: "flagged", SHORT: "flagged", LONG: "flagged",
}
ACTIONS: dict[Policy, dict[int, Action]] = {
    "reject": dict.fromkeys(_CLIP, "rejected"),
    "impute": dict.fromkeys(_CLIP, "imputed"),
    "clip": _CLIP,
    "flag": _FLAG,
}

POLICY_OF_ACTION: dict[Action, Policy] = {
    "rejected": "reject", "imputed": "impute", "clipped": "clip", "flagged": "flag",
}


def action_for(policy: Policy, code: int) -> Action:
    """What ``policy`` does with a value that broke the rule with internal ``code``."""
    return ACTIONS[policy][code]


class PolicyOverrides(BaseModel):
    """A deployment's say over the schema's policies.

    >>> PolicyOverrides(default="flag", features={"income": "clip"}).features["income"]
    'clip'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Policy | None = None
    features: dict[str, Policy] = Field(default_factory=dict)

    @classmethod
    def parse(cls, data: Mapping[str, object], *, source: str = "policy overrides") -> PolicyOverrides:
        """Validate user input, raising :class:`ConfigError` that names the bad entry."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise ConfigError(
                f"{source}: {problems}; a policy is one of {', '.join(POLICIES)}"
            ) from None


def resolve_policies(schema: Schema, overrides: PolicyOverrides | Mapping[str, Policy] | None = None) -> dict[str, Policy]:
    """The policy each feature of ``schema`` gets (see the module docstring for the order).

    A plain mapping is taken as per-feature overrides. Overrides naming a feature the
    schema does not have raise :class:`ConfigError`.
    """
    if overrides is None:
        overrides = PolicyOverrides()
    elif not isinstance(overrides, PolicyOverrides):
        overrides = PolicyOverrides(features=dict(overrides))
    unknown = sorted(set(overrides.features) - set(schema.features))
    if unknown:
        raise ConfigError(
            f"policy overrides name {', '.join(repr(u) for u in unknown)}, which the schema does "
            f"not have; its features are {_listing(list(schema.features))}"
        )
    resolved: dict[str, Policy] = {}
    for name, feature in schema.features.items():
        resolved[name] = (
            overrides.features.get(name)
            or feature.policy
            or overrides.default
            or schema.default_policy
        )
    return resolved


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
