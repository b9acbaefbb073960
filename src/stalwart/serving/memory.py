"""The process's resident memory, and how much one model load adds to it.

``process_rss`` reads the resident set size from ``/proc/self/statm`` (Linux; elsewhere
it is None and loads are not measured: their size is estimated from the artifact). The
standard library's ``resource`` only gives the peak (``ru_maxrss``), which cannot show a
load's growth once the process has been bigger before.

A load's growth is the larger of two figures, because each misses what the other sees:

- the RSS growth: everything the load made resident, whoever allocated it (numpy, a C++
  runtime, a memory map); but memory freed earlier (an unloaded model) and still held by
  the allocator is reused without the RSS moving: glibc returns a thread arena's top to
  the system only when that arena's heap shrinks, which ``malloc_trim`` does not do;
- the growth of the bytes malloc has handed out and not got back (glibc's ``mallinfo2``:
  in-use arena bytes plus mmapped blocks), which counts reused memory too; but not what a
  library maps itself.

:func:`measure` brackets one load: a collection of the young generations and glibc's
``malloc_trim`` before, so memory freed by earlier unloads is handed back to the system
rather than reused by this load unseen (glibc keeps freed heap pages mapped, and a new
model would fill them without the RSS moving); the same after, so the load's garbage
(the artifact's bytes, temporary copies) is not counted. Only the young generations: a
full collection scans every object of the process (80 ms for a server with scikit-learn
imported, on a busy 2-core machine), and a load's garbage is young. What remains is an
estimate: other threads (requests being served meanwhile) allocate and free as well, and
a library may map memory lazily, on its first call. So a third figure is its floor: the
bytes of the numpy arrays the loaded object holds (:func:`array_bytes`), which no
concurrent free can hide.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Measured", "allocated_bytes", "array_bytes", "measure", "process_rss", "release_freed_memory"]

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]


def _mallinfo() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), or None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    info: Callable[[], _MallInfo2] = function
    return info


_MALLINFO = _mallinfo()


def allocated_bytes() -> int | None:
    """Bytes malloc has handed out and not got back, in every arena and mmapped block
    (None without glibc 2.33+)."""
    if _MALLINFO is None:
        return None
    info = _MALLINFO()
    return int(info.uordblks + info.hblkhd)


def release_freed_memory(generation: int = 2) -> None:
    """Collect garbage (up to ``generation``), then hand the heap's free pages back to the
    system (glibc), so the RSS shows what is really in use."""
    gc.collect(generation)
    if _TRIM is not None:
        _TRIM(0)


# Objects that lead from a model to the whole program (its class, its module, the
# functions and their globals) rather than to the data it holds.
_NOT_DATA = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.CodeType, types.FrameType)
_WALK_LIMIT = 200_000


def array_bytes(root: object, limit: int = _WALK_LIMIT) -> int:
    """The bytes of the distinct numpy arrays reachable from ``root`` through its data
    (attributes and containers; not classes, modules or functions), each buffer counted
    once however many views share it. A floor, not a size: memory a library keeps outside
    Python objects is not seen. At most ``limit`` objects are visited, so a huge object
    graph costs a bounded walk."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return 0
    seen: set[int] = set()
    buffers: dict[int, int] = {}
    pending = [root]
    while pending and len(seen) < limit:
        obj = pending.pop()
        if isinstance(obj, types.MethodType):  # a bound method keeps its object (a wrapper's model.predict)
            pending.append(obj.__self__)
            continue
        if id(obj) in seen or isinstance(obj, _NOT_DATA):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            owner = obj
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            # An array over another object's buffer (bytes, as unpickling makes them; a
            # memory map) is counted once per that object.
            key = id(owner) if owner.base is None else id(owner.base)
            buffers[key] = max(buffers.get(key, 0), owner.nbytes)
            if obj.dtype.hasobject:
                pending.extend(obj.ravel()[:limit])
            continue
        pending.extend(gc.get_referents(obj))
    return sum(buffers.values())


@dataclass(frozen=True, slots=True)
class Measured(Generic[T]):
    """What a measured call returned, and how much the process grew while it ran (bytes,
    at least 0; None where the RSS cannot be read)."""

    value: T
    grew: int | None


def measure(work: Callable[[], T]) -> Measured[T]:
    """Run ``work`` and measure the process's RSS growth across it (blocking: call it off the
    event loop, one at a time, or the measurements mix)."""
    release_freed_memory(1)
    before, held = process_rss(), allocated_bytes()
    value = work()
    release_freed_memory(1)
    after, holds = process_rss(), allocated_bytes()
    if before is None or after is None:
        return Measured(value, None)
    grew = after - before
    if held is not None and holds is not None:
        grew = max(grew, holds - held)
    return Measured(value, max(0, grew, array_bytes(value)))
