"""Verdicts on a canary, metric by metric, and what the rollout should do next.

A :class:`MetricRule` declares one comparison: what kind of statistic (a rate or a mean),
which direction is worse, how much worse the canary may be (the tolerance), the level
``alpha`` and the minimum count per arm. :class:`Judge` takes each metric's running sums
for canary and primary over the same window (:class:`Arms`) and returns a
:class:`Judgement`: one :class:`Verdict` per rule and a recommendation.

**A metric's decision**, from the anytime-valid interval ``[lo, hi]`` on canary minus
primary (``stalwart.rollout.sequential``), ``tol`` the tolerance:

=====================  =============================  ==============================
direction              fail                           pass
=====================  =============================  ==============================
``lower_is_better``    ``lo > tol`` (rose too much)   ``hi <= tol``
``higher_is_better``   ``hi < -tol`` (fell too much)  ``lo >= -tol``
``two_sided``          ``lo > tol`` or ``hi < -tol``  ``-tol <= lo`` and ``hi <= tol``
=====================  =============================  ==============================

Anything else is "inconclusive", and so is every look where an arm has fewer than the
rule's ``min_n`` observations, however the numbers look: too little data is never a pass.
A fail needs the interval wholly beyond the tolerance, so a canary as good as its primary
is failed by chance with probability at most ``alpha`` over *all* looks; a pass needs it
wholly within, so a canary worse than the tolerance passes by chance with probability at
most ``alpha``. Across rules the chances add up (union bound): five rules at 0.01 roll a
good canary back by chance at most 5 % of the time, however long the rollout looks.

**The recommendation**, the first row that applies (:data:`RECOMMENDATIONS`):

1. ``rollback``: a rule whose ``on_fail`` is ``"rollback"`` failed;
2. ``hold``: a rule whose ``on_fail`` is ``"hold"`` failed (stop and ask a person);
3. ``promote``: every ``required`` rule passed (the controller still enforces its step's
   minimum duration and requests before it moves on);
4. ``continue``: otherwise; keep collecting.

Rules that are not required (accuracy, while labels may not arrive within a step) can
roll back or hold a canary but do not keep it from promotion while inconclusive.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, cast

import msgspec

from stalwart.errors import ConfigError
from stalwart.rollout.sequential import Comparison, Moments, Proportion, compare

__all__ = [
    "RECOMMENDATIONS",
    "Arms",
    "Decision",
    "Direction",
    "Judge",
    "Judgement",
    "MetricRule",
    "Recommendation",
    "Verdict",
    "Window",
    "decide",
]

Direction = Literal["lower_is_better", "higher_is_better", "two_sided"]
Decision = Literal["pass", "fail", "inconclusive"]
Recommendation = Literal["continue", "promote", "hold", "rollback"]
Kind = Literal["proportion", "mean"]
OnFail = Literal["rollback", "hold"]

_DIRECTIONS: Final = ("lower_is_better", "higher_is_better", "two_sided")


class Window(msgspec.Struct, frozen=True):
    """The span of time both arms' data come from (the same for canary and primary)."""

    start: dt.datetime
    end: dt.datetime


class Arms(msgspec.Struct, frozen=True):
    """One metric's running sums for each arm over the window."""

    canary: Proportion | Moments
    primary: Proportion | Moments


class MetricRule(msgspec.Struct, frozen=True, kw_only=True):
    """How one metric is judged. Build one with a named constructor
    (:meth:`rate`, :meth:`latency`, :meth:`tail_latency`, :meth:`score_shift`,
    :meth:`accuracy`) or directly.

    ``tolerance`` is in the metric's units (a rate's 0.005 is half a percentage point);
    for ``log_scale`` means (log-latency) it is a log ratio, ``log(1.10)`` for "10 %
    slower". ``scale`` is the mixture's τ (defaults to the tolerance; required when the
    tolerance is 0).
    """

    name: str
    kind: Kind
    tolerance: float
    direction: Direction
    alpha: float = 0.05
    min_n: int = 200
    scale: float | None = None
    log_scale: bool = False
    on_fail: OnFail = "rollback"
    required: bool = True

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"metric rule '{self.name}': {field} {why}")

        if self.kind not in ("proportion", "mean"):
            raise bad("kind", f"must be 'proportion' or 'mean', not {self.kind!r}")
        if self.direction not in _DIRECTIONS:
            raise bad("direction", f"must be one of {', '.join(_DIRECTIONS)}, not {self.direction!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise bad("tolerance", f"must be a finite number >= 0, not {self.tolerance!r}")
        if not 0.0 < self.alpha < 0.5:
            raise bad("alpha", f"must be in (0, 0.5), not {self.alpha!r}; 0.05 is usual")
        if self.min_n < 2:
            raise bad("min_n", f"must be at least 2 per arm, not {self.min_n!r}")
        if self.on_fail not in ("rollback", "hold"):
            raise bad("on_fail", f"must be 'rollback' or 'hold', not {self.on_fail!r}")
        if self.scale is None and self.tolerance == 0:
            raise bad("scale", "is needed when the tolerance is 0: set it to the smallest effect worth detecting")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise bad("scale", f"must be a positive number, not {self.scale!r}")

    @property
    def mixture_scale(self) -> float:
        """The τ the comparison uses: ``scale``, else the tolerance."""
        return self.scale if self.scale is not None else self.tolerance

    @classmethod
    def rate(cls, name: str, *, max_rise: float, **options: object) -> MetricRule:
        """A rate that must not rise by more than ``max_rise`` (error, degradation, validation
        violation rates): ``MetricRule.rate("error_rate", max_rise=0.005)``."""
        return cls._make(name, "proportion", max_rise, "lower_is_better", options)

    @classmethod
    def latency(cls, name: str, *, max_ratio_rise: float, **options: object) -> MetricRule:
        """Mean log-latency (feed :class:`Moments` of ``log(seconds)``): the canary's geometric
        mean latency may be at most ``max_ratio_rise`` (0.10: 10 %) above the primary's."""
        if not max_ratio_rise > -1.0:
            raise ConfigError(f"metric rule '{name}': max_ratio_rise must be > -1, not {max_ratio_rise!r}")
        return cls._make(name, "mean", math.log1p(max_ratio_rise), "lower_is_better", {"log_scale": True, **options})

    @classmethod
    def tail_latency(cls, name: str, *, max_rise: float, **options: object) -> MetricRule:
        """The share of requests slower than a fixed threshold (the primary's p99 before the
        step), which may rise by at most ``max_rise`` (0.01: from 1 % to 2 %)."""
        return cls._make(name, "proportion", max_rise, "lower_is_better", options)

    @classmethod
    def score_shift(cls, name: str, *, max_shift: float, **options: object) -> MetricRule:
        """The model's mean score, which may move by at most ``max_shift`` either way."""
        return cls._make(name, "mean", max_shift, "two_sided", options)

    @classmethod
    def accuracy(cls, name: str, *, max_drop: float, **options: object) -> MetricRule:
        """Realised accuracy where labels exist, which may fall by at most ``max_drop``; not
        required for promotion by default, since labels may arrive after the step ends."""
        return cls._make(name, "proportion", max_drop, "higher_is_better", {"required": False, **options})

    @classmethod
    def _make(cls, name: str, kind: Kind, tolerance: float, direction: Direction, options: Mapping[str, object]) -> MetricRule:
        try:
            return msgspec.convert(
                {"name": name, "kind": kind, "tolerance": tolerance, "direction": direction, **options}, cls
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"metric rule '{name}': {exc}") from exc


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One metric's verdict at one look, with the numbers it rests on (for the audit log).

    ``canary``/``primary`` are each arm's rate or mean; ``effect`` is canary minus primary
    (in log units for ``log_scale`` rules) and ``relative_effect`` the same as a share of
    the primary (``exp(effect) - 1`` for log scale); ``lower``/``upper`` the anytime-valid
    interval on ``effect``; ``statistic`` the z-score, ``log_likelihood_ratio`` the mSPRT's
    ``log Λ``, ``p_value`` always valid for no difference. Numbers are None when an arm has
    too few observations to estimate them.
    """

    metric: str
    decision: Decision
    reason: str
    method: str
    direction: Direction
    tolerance: float
    alpha: float
    min_n: int
    n_canary: int
    n_primary: int
    window: Window
    canary: float | None = None
    primary: float | None = None
    effect: float | None = None
    relative_effect: float | None = None
    lower: float | None = None
    upper: float | None = None
    statistic: float | None = None
    log_likelihood_ratio: float | None = None
    p_value: float | None = None


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    """Every rule's verdict at one look and the recommendation drawn from them."""

    recommendation: Recommendation
    reason: str
    window: Window
    verdicts: tuple[Verdict, ...]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready data (times as ISO 8601), for the audit log and the API."""
        return cast("dict[str, object]", msgspec.to_builtins(self))


def decide(lower: float, upper: float, tolerance: float, direction: Direction) -> Decision:
    """A metric's decision from its interval (the table in this module's docstring)."""
    rose, fell = lower > tolerance, upper < -tolerance
    if direction == "lower_is_better":
        return "fail" if rose else "pass" if upper <= tolerance else "inconclusive"
    if direction == "higher_is_better":
        return "fail" if fell else "pass" if lower >= -tolerance else "inconclusive"
    if rose or fell:
        return "fail"
    return "pass" if -tolerance <= lower and upper <= tolerance else "inconclusive"


RECOMMENDATIONS: Final[tuple[tuple[str, Callable[[Sequence[tuple[MetricRule, Verdict]]], bool], Recommendation], ...]] = (
    (
        "a rule that rolls back on failure failed",
        lambda judged: any(v.decision == "fail" and r.on_fail == "rollback" for r, v in judged),
        "rollback",
    ),
    (
        "a rule that holds on failure failed",
        lambda judged: any(v.decision == "fail" and r.on_fail == "hold" for r, v in judged),
        "hold",
    ),
    (
        "every required rule passed",
        lambda judged: all(v.decision == "pass" for r, v in judged if r.required),
        "promote",
    ),
    ("otherwise", lambda judged: True, "continue"),
)
"""The recommendation as data: the first row whose test holds over (rule, verdict) pairs."""


class Judge:
    """Judges a canary against its primary on every declared metric at once."""

    def __init__(self, rules: Sequence[MetricRule]) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"metric rules must have distinct names; repeated: {', '.join(duplicates)}")
        if not rules:
            raise ConfigError("a judge needs at least one metric rule")
        self._rules = tuple(rules)

    @property
    def rules(self) -> tuple[MetricRule, ...]:
        return self._rules

    def judge(self, observations: Mapping[str, Arms], *, window: Window) -> Judgement:
        """Every rule's verdict over ``window`` and the recommendation. A rule with no
        observations (no labels yet) is inconclusive; an observation without a rule is a
        mistake in the caller and raises ``ConfigError``."""
        unknown = sorted(set(observations) - {rule.name for rule in self._rules})
        if unknown:
            raise ConfigError(f"observations for metrics without a rule: {', '.join(unknown)}")
        judged = []
        for rule in self._rules:
            arms = observations.get(rule.name)
            judged.append((rule, self.verdict(rule, arms, window=window)))
        reason, recommendation = next((why, rec) for why, test, rec in RECOMMENDATIONS if test(judged))
        named = [v.metric for r, v in judged if v.decision == "fail"] if recommendation in ("rollback", "hold") else []
        if named:
            reason = f"{reason}: {', '.join(named)}"
        elif recommendation == "continue":
            waiting = [v.metric for r, v in judged if r.required and v.decision != "pass"]
            reason = f"still inconclusive: {', '.join(waiting)}"
        return Judgement(
            recommendation=recommendation, reason=reason, window=window, verdicts=tuple(v for _, v in judged)
        )

    @staticmethod
    def verdict(rule: MetricRule, arms: Arms | None, *, window: Window) -> Verdict:
        """One rule's verdict on one metric's sums (None: no data for it yet)."""
        expected = Proportion if rule.kind == "proportion" else Moments
        if arms is None:
            arms = Arms(expected(), expected())
        if not (isinstance(arms.canary, expected) and isinstance(arms.primary, expected)):
            raise ConfigError(
                f"metric '{rule.name}' is a {rule.kind} rule and needs {expected.__name__} for both "
                f"arms, got {type(arms.canary).__name__} and {type(arms.primary).__name__}"
            )
        n_c, n_p = arms.canary.n, arms.primary.n
        too_little = f"too little data: {n_c} canary and {n_p} primary observations, {rule.min_n} needed per arm"
        verdict = Verdict(
            metric=rule.name,
            decision="inconclusive",
            reason=too_little,
            method=_METHODS[rule.kind],
            direction=rule.direction,
            tolerance=rule.tolerance,
            alpha=rule.alpha,
            min_n=rule.min_n,
            n_canary=n_c,
            n_primary=n_p,
            window=window,
        )
        found = compare(arms.canary, arms.primary, alpha=rule.alpha, scale=rule.mixture_scale)
        if found is None:
            return verdict
        decision: Decision = "inconclusive"
        reason = too_little
        # Below the minimum the numbers are reported but never decide: an asymptotic
        # interval on a handful of requests is not to be trusted either way.
        if min(n_c, n_p) >= rule.min_n:
            decision = decide(found.lower, found.upper, rule.tolerance, rule.direction)
            reason = _explain(rule, found, decision)
        return msgspec.structs.replace(
            verdict,
            decision=decision,
            reason=reason,
            canary=found.canary,
            primary=found.primary,
            effect=found.effect,
            relative_effect=_relative(rule, found),
            lower=found.lower,
            upper=found.upper,
            statistic=found.z,
            log_likelihood_ratio=found.log_lr,
            p_value=found.p_value,
        )


_METHODS: Final = {
    "proportion": "mSPRT / asymptotic confidence sequence, difference of two proportions",
    "mean": "mSPRT / asymptotic confidence sequence, difference of two means",
}


def _relative(rule: MetricRule, found: Comparison) -> float | None:
    if rule.log_scale:
        return math.expm1(found.effect)
    return found.effect / found.primary if found.primary != 0 else None


def _explain(rule: MetricRule, found: Comparison, decision: Decision) -> str:
    if rule.log_scale:
        def show(x: float) -> str:
            return f"{math.expm1(x):+.1%}"
    elif rule.kind == "proportion":
        def show(x: float) -> str:
            return f"{x * 100:+.2f} pp"
    else:
        def show(x: float) -> str:
            return f"{x:+.4g}"
    interval = f"{show(found.effect)} (interval {show(found.lower)} to {show(found.upper)})"
    bound = {"lower_is_better": "rise", "higher_is_better": "drop", "two_sided": "shift"}[rule.direction]
    limit = f"a {bound} of at most {show(rule.tolerance).lstrip('+')}"
    if decision == "fail":
        return f"canary - primary = {interval}, beyond {limit}"
    if decision == "pass":
        return f"canary - primary = {interval}, within {limit}"
    return f"canary - primary = {interval}, not yet settled against {limit}"
