"""Stalwart's benchmarks, run by ``make bench`` (``python -m benchmarks``), never by the tests;
and the chaos run and soak (``benchmarks/chaos``: ``make chaos``, ``make soak``), whose
world ``tests/chaos`` reuses for a few short checks.

Importing this package pins the numeric libraries to one thread before numpy is imported
anywhere, so the in-process figures and every server started from here compute alike, and
puts this checkout's ``src`` first on the path, so the code measured is the code beside it
(not whichever checkout the virtualenv was installed from).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PINNED_THREADS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
os.environ.update(PINNED_THREADS)

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
