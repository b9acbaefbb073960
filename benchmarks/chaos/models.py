"""The chaos run's primary model: the fraud example's gradient-boosted classifier with a
fault switch an operator can flip from outside the server.

``FaultSwitch`` is a plain scikit-learn subclass, trained exactly as
``examples/fraud/train.py`` trains its model and saved by the sklearn flavor (skops, the
class named in ``trusted_types``), so the server loads and batches it as it would any
user's estimator. The only addition is a hook: before each call it reads the file named by
``fault_file`` (when the file changed) and behaves as it says:

- ``ok`` (or no file): the model answers;
- ``raise``: every call raises, as a model with a bug in its input handling would;
- ``hang``: every call blocks until the file says otherwise (at most ``HANG_LIMIT``), as
  a model stuck on a lock or a remote call would;
- ``slow N``: every call takes N times as long as it would (it sleeps N - 1 times its own
  measured duration), as a model on a starved machine would.

The server under test runs in another process, so the file is the switch.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier

__all__ = ["HANG_LIMIT", "FaultSwitch", "set_fault"]

HANG_LIMIT = 120.0  # seconds a hung call waits at most, so a forgotten switch cannot hold a thread forever


def set_fault(path: Path, mode: str) -> None:
    """Flip the switch at ``path``: ``ok``, ``raise``, ``hang`` or ``slow N``. The file is
    replaced whole (written then renamed), so a reader never sees half a mode."""
    words = mode.split()
    if not words or words[0] not in {"ok", "raise", "hang", "slow"} or (words[0] == "slow") != (len(words) == 2):
        raise ValueError(f"unknown fault mode {mode!r}; use ok, raise, hang or 'slow N'")
    staged = path.with_suffix(".tmp")
    staged.write_text(mode)
    os.replace(staged, path)


class FaultSwitch(HistGradientBoostingClassifier):
    """HistGradientBoostingClassifier that obeys the fault switch at ``self.fault_file``
    (an attribute set after fitting; empty: no switch)."""

    fault_file: str = ""

    def predict(self, X: Any) -> Any:
        return self._switched(super().predict, X)

    def predict_proba(self, X: Any) -> Any:
        return self._switched(super().predict_proba, X)

    def _switched(self, method: Any, X: Any) -> Any:
        mode = _mode(self.fault_file)
        if mode == "raise":
            raise RuntimeError("the fraud model failed: injected fault (raise)")
        if mode == "hang":
            deadline = time.monotonic() + HANG_LIMIT
            while _mode(self.fault_file) == "hang" and time.monotonic() < deadline:
                time.sleep(0.01)
        start = time.perf_counter()
        result = method(X)
        if mode.startswith("slow "):
            factor = float(mode.split()[1])
            time.sleep(max(0.0, factor - 1.0) * (time.perf_counter() - start))
        return result


_cache: dict[str, tuple[tuple[int, int], str]] = {}
_lock = threading.Lock()


def _mode(path: str) -> str:
    """The switch's mode, read again only when the file's mtime changes (one stat per call)."""
    if not path:
        return "ok"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "ok"
    stamp = (info.st_ino, info.st_mtime_ns)  # a rename gives a new inode even within one mtime tick
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        mode = Path(path).read_text().strip() or "ok"
    except FileNotFoundError:
        mode = "ok"
    with _lock:
        _cache[path] = (stamp, mode)
    return mode
