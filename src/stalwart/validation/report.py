"""What validation found in one request: violations, and what was done about them.

A :class:`ValidationReport` is JSON-ready through :meth:`ValidationReport.to_notes` (what
the pipeline keeps in ``exchange.validation`` and the log line carries) and
:meth:`ValidationReport.response_part` (what a response tells the client). Values are made
JSON-safe on the way in: NaN and infinities become strings, long strings are cut, objects
of other types are named rather than echoed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stalwart.errors import ValidationFailed
from stalwart.validation.policy import POLICY_OF_ACTION, Action

__all__ = ["EMPTY_REPORT", "ValidationReport", "Violation", "json_value"]

_MAX_TEXT = 120
_INT64 = 2**63


def json_value(value: object) -> Any:
    """``value`` as something every JSON encoder takes, without echoing anything huge."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, bool):
            return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else (str(value)[:40] + "…")
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which row and feature, the value, what was expected, what happened.

    ``row`` is None when the whole feature is missing. ``policy`` is the policy the feature
    had; ``action`` what was done (they differ where a policy cannot apply, see
    :mod:`stalwart.validation.policy`). ``fixed`` is the value put in its place.
    """

    row: int | None
    feature: str
    rule: str
    value: Any
    expected: str
    policy: str
    action: Action
    fixed: Any = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "row": self.row,
            "feature": self.feature,
            "rule": self.rule,
            "value": self.value,
            "expected": self.expected,
            "policy": self.policy,
            "action": self.action,
        }
        if self.action in ("imputed", "clipped"):
            data["fixed"] = self.fixed
        return data

    def describe(self) -> str:
        where = "every row" if self.row is None else f"row {self.row}"
        got = "" if self.rule == "missing" else f"got {self.value!r}, "
        return f"{where} '{self.feature}': {self.rule} ({got}expected {self.expected})"


class ValidationReport:
    """Everything validation found in one request.

    ``violations`` is sorted by row, then feature (column order), and holds at most the
    validator's ``max_violations``; ``total`` counts them all. ``counts`` is keyed by
    ``(feature, rule, action)``; ``changed`` maps an action (imputed, clipped, flagged) to
    the rows of each feature it touched; ``examples`` keeps the first few ``(row, value)``
    of each ``(feature, rule)``, whatever the cap on ``violations``.

    The list of violations is built when first read (most requests only need the counts
    and the first few for the log line), so a large batch with many fixed values does
    not pay for objects nobody looks at.
    """

    __slots__ = ("_build", "_cap", "_violations", "changed", "counts", "examples", "rejected", "total")

    def __init__(
        self,
        violations: tuple[Violation, ...] | None = None,
        *,
        total: int = 0,
        rejected: int = 0,
        counts: dict[tuple[str, str, Action], int] | None = None,
        changed: dict[Action, dict[str, list[int]]] | None = None,
        examples: dict[tuple[str, str], list[tuple[int | None, Any]]] | None = None,
        build: Callable[[int], tuple[Violation, ...]] | None = None,
        cap: int = 0,
    ) -> None:
        self._violations = violations if violations is not None or build is not None else ()
        self._build = build
        self._cap = cap
        self.total = total
        self.rejected = rejected
        self.counts = counts or {}
        self.changed = changed or {}
        self.examples = examples or {}

    @property
    def violations(self) -> tuple[Violation, ...]:
        if self._violations is None:
            self._violations = self._build(self._cap) if self._build is not None else ()
        return self._violations

    def first(self, limit: int) -> tuple[Violation, ...]:
        """The first ``limit`` violations (without building the rest)."""
        if self._violations is not None or self._build is None:
            return self.violations[:limit]
        return self._build(min(limit, self._cap))

    @property
    def ok(self) -> bool:
        """True when no value broke a rule."""
        return self.total == 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.violations)

    def response_part(self) -> dict[str, dict[str, list[int]]]:
        """What the client is told: ``{"imputed": {feature: [rows]}, "clipped": ..., "flagged": ...}``
        (only the actions that happened)."""
        return {action: dict(rows) for action, rows in self.changed.items() if rows}

    def to_notes(self, limit: int = 20) -> dict[str, Any]:
        """JSON-ready summary for the request's log line and record."""
        if self.ok:
            return {"violations": 0}
        notes: dict[str, Any] = {"violations": self.total, "rejected": self.rejected}
        notes.update(self.response_part())
        notes["details"] = [v.to_dict() for v in self.first(limit)]
        return notes

    def error(self, subject: str = "the input schema") -> ValidationFailed:
        """The :class:`ValidationFailed` for a request with rejected values."""
        rejected = [v for v in self.violations if v.action == "rejected"]
        shown = "; ".join(v.describe() for v in rejected[:3])
        more = self.rejected - min(3, len(rejected))
        if more > 0:
            shown += f"; and {more} more"
        listed = (
            f"'violations' lists the first {len(self.violations)} of {self.total}"
            if self.truncated
            else "'violations' lists every one"
        )
        return ValidationFailed(
            f"{self.rejected} value{'s' if self.rejected != 1 else ''} broke {subject} under "
            f"the reject policy: {shown}. {listed}; send values like those seen in training, "
            f"or change the feature's policy (stalwart schema export, edit, stalwart schema attach)",
            [v.to_dict() for v in self.violations],
        )

    def metric_counts(self) -> dict[tuple[str, str, str], int]:
        """Counts keyed by ``(feature, rule, policy applied)`` for the metrics."""
        out: dict[tuple[str, str, str], int] = {}
        for (feature, rule, action), n in self.counts.items():
            key = (feature, rule, POLICY_OF_ACTION[action])
            out[key] = out.get(key, 0) + n
        return out


EMPTY_REPORT = ValidationReport()
