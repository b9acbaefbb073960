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
    """``ok``, ``raise``, ``hang`` (until set back) or ``slow`` (``seconds=``)."""
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
        with _lock:
            state = CONTROL.setdefault(self.name, {"mode": "ok"})
            state["calls"] = state.get("calls", 0) + 1
            mode = state["mode"]
            seconds = float(state.get("seconds", 0.0))
        if mode == "raise":
            raise RuntimeError(f"{self.name} is broken")
        if mode == "hang":
            deadline = time.monotonic() + 30
            while CONTROL.get(self.name, {}).get("mode") == "hang" and time.monotonic() < deadline:
                time.sleep(0.005)
        if mode == "slow":
            time.sleep(seconds)
        if isinstance(x, dict):
            x = np.column_stack([np.asarray(v, dtype=np.float64) for v in x.values()])
        matrix = np.asarray(x, dtype=np.float64)
        return self.scale * matrix.reshape(len(matrix), -1).sum(axis=1)
