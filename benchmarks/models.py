"""Model classes the benchmarks register with the python flavor (importable by the server
process, which finds this checkout on its ``PYTHONPATH``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

# One model call at a time in the process, like one accelerator or one single-threaded
# native model: capacity is then 1 / seconds calls per second whatever the worker count.
_DEVICE = threading.Lock()


class Sleepy:
    """Holds the process's one "device" for ``seconds`` per call, then returns ``sum(row)``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, x: Any) -> Any:
        with _DEVICE:
            time.sleep(self.seconds)
        if isinstance(x, dict):
            x = np.column_stack([np.asarray(v, dtype=np.float64) for v in x.values()])
        matrix = np.asarray(x, dtype=np.float64)
        return matrix.reshape(len(matrix), -1).sum(axis=1)
