"""Models whose behaviour a test switches at run time, for fault injection.

They are plain Python-flavor models (importable, so the registry stores them as data).
Each reads its mode from ``CONTROL`` on every call; the server under test runs in this
process, so a test flips a fault on and off while requests flow.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

CONTROL: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def set_mode(name: str, mode: str, **options: Any) -> None:
    """``ok``, ``raise``, ``hang`` (until set back) or ``slow`` (``seconds=``); with
    ``threads="prefix"``, only calls on threads whose name starts so misbehave (the same
    model object, called from a shadow's executor, ``stalwart-shadow-...``)."""
    with _lock:
        CONTROL[name] = {"mode": mode, **options}


def calls(name: str) -> int:
    return int(CONTROL.get(name, {}).get("calls", 0))


class Switchable:
    """Predicts ``scale * sum(row)``; misbehaves as ``CONTROL[name]`` says."""

    def __init__(self, name: str, scale: float = 1.0) -> None:
        self.name = name
        self.scale = scale

    def predict(self, x: Any) -> Any:
        self._misbehave()
        return self.scale * self._matrix(x).sum(axis=1)

    def _misbehave(self) -> None:
        with _lock:
            state = CONTROL.setdefault(self.name, {"mode": "ok"})
            state["calls"] = state.get("calls", 0) + 1
            mode = state["mode"]
            seconds = float(state.get("seconds", 0.0))
            threads = state.get("threads")
        if threads is not None and not threading.current_thread().name.startswith(threads):
            return
        if mode == "raise":
            raise RuntimeError(f"{self.name} is broken")
        if mode == "hang":
            deadline = time.monotonic() + 30
            while CONTROL.get(self.name, {}).get("mode") == "hang" and time.monotonic() < deadline:
                time.sleep(0.005)
        if mode == "slow":
            time.sleep(seconds)

    @staticmethod
    def _matrix(x: Any) -> Any:
        if isinstance(x, dict):
            x = np.column_stack([np.asarray(v, dtype=np.float64) for v in x.values()])
        matrix = np.asarray(x, dtype=np.float64)
        return matrix.reshape(len(matrix), -1)


class SwitchableClassifier(Switchable):
    """A classifier on ``scale * sum(row)``: class ``"fraud"`` at ``threshold`` or above,
    else ``"ok"``, with ``predict_proba`` ``[1 - p, p]``, p = min(1, score / (2 threshold));
    misbehaves as :class:`Switchable` does."""

    def __init__(self, name: str, scale: float = 1.0, threshold: float = 50.0) -> None:
        super().__init__(name, scale)
        self.threshold = threshold

    def predict(self, x: Any) -> Any:
        self._misbehave()
        score = self.scale * self._matrix(x).sum(axis=1)
        p = np.clip(score / (2 * self.threshold), 0.0, 1.0)
        return {"predict": np.where(score >= self.threshold, "fraud", "ok").astype(object), "predict_proba": np.column_stack([1 - p, p])}
