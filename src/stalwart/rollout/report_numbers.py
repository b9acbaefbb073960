"""How a rollout's numbers are written, in the report's page, its plots and the terminal.

A metric reads in one of three units (:data:`Unit`): a **rate** (an error rate: arms in %,
differences in percentage points), a **ratio** (a log-scale mean such as log-latency: arms
as geometric means, differences as the ratio canary / primary - 1), or **plain** numbers.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from stalwart.rollout.history import LookVerdict, PlanRule

__all__ = ["Unit", "effect", "interval", "level", "metric_unit", "plot_value", "tolerance"]

Unit = Literal["rate", "ratio", "plain"]
"""How a metric's numbers read (see the module docstring)."""

_BOUNDS: Final = {"lower_is_better": "rise", "higher_is_better": "drop", "two_sided": "shift"}
# exp() of more than this overflows a float: a log ratio that large is shown as infinite.
_MAX_LOG: Final = 700.0


def metric_unit(rule: PlanRule | None, verdict: LookVerdict | None = None) -> Unit:
    """How a metric's numbers read: its rule's ``log_scale`` and ``kind``, else the verdict's
    method (a look judged by a rule the plan no longer lists)."""
    if rule is not None and rule.log_scale:
        return "ratio"
    if (rule is not None and rule.kind == "proportion") or (verdict is not None and "proportions" in verdict.method):
        return "rate"
    return "plain"


def level(value: float | None, unit: Unit) -> str:
    """An arm's rate or mean: ``0.98%``, a geometric mean, or the number; "—" for none."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "rate":
        return f"{100 * value:.2f}%"
    if unit == "ratio":
        return _short(math.exp(min(value, _MAX_LOG)))
    return _short(value)


def effect(value: float | None, unit: Unit) -> str:
    """A difference, signed: ``+0.25 pp``, ``+3.1%`` (a ratio), or the number; "—" for none."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "rate":
        return f"{100 * value:+.2f} pp"
    if unit == "ratio":
        return f"{math.expm1(min(value, _MAX_LOG)):+.1%}"
    return f"{value:+.3g}"


def interval(lower: float | None, upper: float | None, unit: Unit) -> str:
    """``[lower, upper]`` in the unit; "—" when either end is missing."""
    if lower is None or upper is None:
        return "—"
    return f"[{effect(lower, unit)}, {effect(upper, unit)}]"


def tolerance(verdict: LookVerdict, unit: Unit) -> str:
    """What the rule allows: ``rise ≤ 0.50 pp``, ``drop ≤ 2.00 pp``, ``shift ≤ 0.02``."""
    if verdict.tolerance is None:
        return "—"
    bound = _BOUNDS.get(verdict.direction, "change")
    return f"{bound} ≤ {effect(verdict.tolerance, unit).lstrip('+')}"


def plot_value(value: float | None, unit: Unit) -> float:
    """A difference on a plot's axis: percentage points, percent (a ratio), or as is; NaN
    for none (matplotlib leaves a gap)."""
    if value is None or not math.isfinite(value):
        return math.nan
    if unit == "rate":
        return 100.0 * value
    if unit == "ratio":
        return 100.0 * math.expm1(min(value, _MAX_LOG))
    return value


def _short(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:,.0f}"
