"""How a response says it was degraded, and the last good prediction per entity.

Every degraded response carries a ``degraded`` object (``level`` and ``reason``) in its
body and the ``X-Stalwart-Degraded`` header (``level; reason=...``), is counted by
deployment, level and reason, and names both in its log line. Levels, from the mildest:

- ``stale_features``: a feature source failed; cached values within their bound served;
- ``feature_defaults``: a feature source failed; features' declared defaults served;
- ``fallback_model``: the primary model failed; the fallback model answered;
- ``last_good``: no model answered; the entity's last good prediction (within its age);
- ``default``: nothing else could; the deployment's declared default prediction.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from threading import Lock
from typing import Any

__all__ = ["LEVELS", "Degradation", "LastGoodStore"]

LEVELS = ("stale_features", "feature_defaults", "fallback_model", "last_good", "default")


@dataclass(frozen=True, slots=True)
class Degradation:
    """One step down the ladder: which, and why (an error class name and a message)."""

    level: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        body = {"level": self.level, "reason": self.reason}
        if self.detail:
            body["detail"] = self.detail
        return body

    def header(self) -> str:
        return f"{self.level}; reason={self.reason}"


def worst(steps: Sequence[Degradation]) -> Degradation | None:
    """The furthest step down among several (what the response headline says)."""
    if not steps:
        return None
    return max(steps, key=lambda s: LEVELS.index(s.level))


class LastGoodStore:
    """The most recent successful prediction of each entity, per deployment, bounded.

    Kept in this process: losing it (a restart, another replica) only means the ladder
    steps further down, to the declared default; it never serves something wrong, because
    every entry carries its age and is refused past the deployment's bound.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[str, tuple[Any, ...]], tuple[float, Mapping[str, Any]]] = OrderedDict()
        self._max = max_entries
        self._lock = Lock()

    def remember(self, deployment: str, keys: Sequence[tuple[Any, ...]], predictions: Sequence[Mapping[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            for key, prediction in zip(keys, predictions, strict=True):
                entry = (deployment, key)
                self._entries[entry] = (now, prediction)
                self._entries.move_to_end(entry)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def recall(self, deployment: str, keys: Sequence[tuple[Any, ...]], max_age: float) -> list[Mapping[str, Any]] | None:
        """Every entity's last good prediction no older than ``max_age``, or None if any
        entity has none (a response is served whole or not at all)."""
        now = time.time()
        found: list[Mapping[str, Any]] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get((deployment, key))
                if entry is None or now - entry[0] > max_age:
                    return None
                found.append(entry[1])
        return found
