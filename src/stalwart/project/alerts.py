"""Declaring an alert: a condition on a monitoring metric, held for a while, with a severity.

>>> drift = Alert("feature-drift", "fraud", "psi", threshold=0.2, window="1h", for_="10m")
>>> drift.column, drift.op, drift.window_seconds, drift.for_seconds
('*', '>', 3600.0, 600.0)
>>> ks = Alert("ks-drift", "fraud", "ks", threshold=0.05, correction="bh", severity="critical")

A rule compares the metric's value for one column of a deployment (``column="*"``: every
column the metric reports, one alert each) over the last ``window`` with ``threshold``
(``op`` ``">"`` or ``"<"``). The condition must hold on every evaluation for ``for_``
before the alert fires (``"0"``: at once); it resolves on the first evaluation where it
does not hold. ``severity`` and ``labels`` travel with every notification.

False-alarm control, both off by default because each changes what ``threshold`` means:

- ``correction="bh"``: the metric must report p-values; across the columns of the rule,
  Benjamini-Hochberg picks the columns that fire, and ``threshold`` is the false discovery
  rate (a level in (0, 1), e.g. 0.05), not a value of the score.
- ``calibrate=True``: the threshold of each column is learned from the reference (the
  training data) by bootstrap, as the score a window of serving size reaches by chance with
  probability 1 %; ``threshold`` is then a floor (``op=">"``) or a ceiling (``op="<"``) it
  never goes past.

Declarations do no I/O; the engine that evaluates them is :mod:`stalwart.monitoring.alerts`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

from stalwart.durations import Duration, parse_seconds
from stalwart.errors import ConfigError

__all__ = ["Alert", "Op", "Severity"]

Op = Literal[">", "<"]
Severity = Literal["info", "warning", "critical"]

_OPS = (">", "<")
_SEVERITIES = ("info", "warning", "critical")
_CORRECTIONS = ("bh",)
# Prometheus label names (Alertmanager keys its routing on them); "__" is reserved there.
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_LABELS = frozenset({"alertname", "deployment", "column", "severity", "metric"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Alert:
    """One alert rule. Errors name the alert and the field (``alert 'x' window: ...``)."""

    name: str
    deployment: str
    metric: str
    _: KW_ONLY
    threshold: float
    column: str = "*"
    op: Op = ">"
    window: Duration = "1h"
    for_: Duration = "10m"
    severity: Severity = "warning"
    labels: Mapping[str, str] = field(default_factory=dict)
    calibrate: bool = False
    correction: Literal["bh"] | None = None
    window_seconds: float = field(init=False, repr=False)
    for_seconds: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"alert name {self.name!r} must start with a letter and hold only letters, digits, '-' and '_'")
        where = f"alert '{self.name}'"
        for attr in ("deployment", "metric", "column"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} {attr}: {value!r} must be a non-empty string")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not math.isfinite(self.threshold):
            raise ConfigError(f"{where} threshold: {self.threshold!r} must be a finite number")
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.op not in _OPS:
            raise ConfigError(f"{where} op: {self.op!r} must be '>' or '<'")
        if self.severity not in _SEVERITIES:
            raise ConfigError(f"{where} severity: {self.severity!r} must be one of {', '.join(_SEVERITIES)}")
        object.__setattr__(self, "window_seconds", parse_seconds(self.window, f"{where} window", positive=True))
        object.__setattr__(self, "for_seconds", parse_seconds(self.for_, f"{where} for_"))
        self._check_labels(where)
        if not isinstance(self.calibrate, bool):
            raise ConfigError(f"{where} calibrate: {self.calibrate!r} must be True or False")
        if self.correction is not None and self.correction not in _CORRECTIONS:
            raise ConfigError(f"{where} correction: {self.correction!r} must be 'bh' or None")
        if self.correction == "bh":
            if not 0 < self.threshold < 1:
                raise ConfigError(
                    f"{where} threshold: {self.threshold!r} must be in (0, 1): with correction='bh' "
                    f"it is the false discovery rate across columns (e.g. 0.05)"
                )
            if self.calibrate:
                raise ConfigError(
                    f"{where} calibrate: a rule with correction='bh' decides on p-values; "
                    f"calibrating a score threshold does not apply to it, so drop one of the two"
                )

    def _check_labels(self, where: str) -> None:
        if not isinstance(self.labels, Mapping):
            raise ConfigError(f"{where} labels: must be a mapping of label names to strings")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not _LABEL.fullmatch(key) or key.startswith("__"):
                raise ConfigError(f"{where} labels: {key!r} is not a label name (letters, digits and '_', not starting with '__')")
            if key in _RESERVED_LABELS:
                raise ConfigError(f"{where} labels: {key!r} is set by the alert itself; choose another name")
            if not isinstance(value, str):
                raise ConfigError(f"{where} labels: the value of {key!r} must be a string, not {type(value).__name__}")
        object.__setattr__(self, "labels", dict(self.labels))

    @property
    def fires_above(self) -> bool:
        """Whether larger values are worse (``op=">"``)."""
        return self.op == ">"
