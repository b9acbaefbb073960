"""The process's resident memory, and how much one model load adds to it.

``process_rss`` reads the resident set size from ``/proc/self/statm`` (Linux; elsewhere
it is None and loads are not measured: their size is estimated from the artifact). The
standard library's ``resource`` only gives the peak (``ru_maxrss``), which cannot show a
load's growth once the process has been bigger before.

:func:`measure` brackets one load: a full garbage collection and glibc's ``malloc_trim``
before, so memory freed by earlier unloads is handed back to the system rather than reused
by this load unseen (glibc keeps freed heap pages mapped, and a new model would fill them
without the RSS moving); a full collection after, so the load's garbage is not counted.
What remains is an estimate: other threads (requests being served meanwhile) allocate
and free as well, and a library may map memory lazily, on its first call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Measured", "measure", "process_rss", "release_freed_memory"]

T = TypeVar("T")

_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss() -> int | None:
    """The process's resident set size in bytes now (None where it cannot be read)."""
    try:
        with open(_STATM, "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE


def _trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another libc, or not Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _trimmer()


def release_freed_memory() -> None:
    """Collect garbage, then hand the heap's free pages back to the system (glibc), so the
    RSS shows what is really in use."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


@dataclass(frozen=True, slots=True)
class Measured(Generic[T]):
    """What a measured call returned, and how much the process grew while it ran (bytes,
    at least 0; None where the RSS cannot be read)."""

    value: T
    grew: int | None


def measure(work: Callable[[], T]) -> Measured[T]:
    """Run ``work`` and measure the process's RSS growth across it (blocking: call it off the
    event loop, one at a time, or the measurements mix)."""
    release_freed_memory()
    before = process_rss()
    value = work()
    gc.collect()
    after = process_rss()
    grew = None if before is None or after is None else max(0, after - before)
    return Measured(value, grew)
