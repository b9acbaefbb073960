"""Which model versions stay loaded when memory is bounded (``STALWART_MODEL_MEMORY``).

Each loaded version is charged the memory its load added to the process (measured:
``serving/memory.py``). The versions loaded together may be charged at most the budget.
Before a load, the version's size is estimated: its last measured memory (the registry's
``model_memory`` table, written by whichever server loaded it last), else its artifact's
size times :data:`UNMEASURED_FACTOR`. When the estimate does not fit beside what is
loaded, idle versions are unloaded to make room:

- only a version with no call in flight is idle (:class:`Usage` counts them at the top of
  every chain), so a request being served never loses its model;
- the least recently used go first, except that the versions a deployment routes to
  (primary, canary, fallback, shadows) and each model's latest (what unversioned requests
  get) go only after every other idle version;
- a version larger than the whole budget is refused outright
  (:class:`~stalwart.errors.MemoryBudgetExceeded` without ``retry_after``), and one that
  would fit only if busy versions were unloaded is refused for now (with ``retry_after``):
  a load is refused before it starts, never after the process ran out of memory.

The budget counts the models, not the whole process: the server itself, request buffers
and batches come on top (``GET /v1/resources`` shows the process's RSS beside it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stalwart.registry import ModelVersion
from stalwart.registry.memory import MemoryRecord
from stalwart.sizes import format_bytes

__all__ = ["UNMEASURED_FACTOR", "Candidate", "Estimate", "Usage", "choose_victims", "estimate"]

UNMEASURED_FACTOR = 2.0
"""A never-measured version is expected to take this many times its artifact's size: a
deserialised model holds its arrays plus the objects around them (skops, pickle and
python-flavor artifacts store the arrays about as they lie in memory; an ONNX session adds
its own buffers), so twice the file errs on the safe side; its first load measures it."""


@dataclass(slots=True, eq=False)
class Usage:
    """How a loaded version is used now (counted by its chains' ``Tracked`` stage, built
    when a memory budget or a call limit needs it). The event loop's alone: plain
    attributes, no lock."""

    max_calls: int  # calls it may have in flight (sys.maxsize: no limit)
    last_used: float  # time.monotonic() when its latest call started (or it loaded)
    in_flight: int = 0
    retired: bool = False  # unloaded: its chains load the version again for a late call

    @property
    def idle(self) -> bool:
        return self.in_flight == 0


@dataclass(frozen=True, slots=True)
class Estimate:
    """A version's expected memory before it loads, and where the figure comes from."""

    bytes: int
    measured: bool  # True: a server measured it; False: the artifact's size x the factor

    def describe(self) -> str:
        if self.measured:
            return f"about {format_bytes(self.bytes)}, as last measured"
        return f"about {format_bytes(self.bytes)}, estimated as {UNMEASURED_FACTOR:g} x its artifact"


def estimate(mv: ModelVersion, recorded: MemoryRecord | None) -> Estimate:
    """The memory ``mv`` is expected to take once loaded (see the module docstring)."""
    if recorded is not None:
        return Estimate(recorded.bytes, True)
    return Estimate(int(mv.artifact_size * UNMEASURED_FACTOR), False)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A loaded version, as the budget sees it."""

    key: tuple[str, int]
    charge: int  # bytes
    usage: Usage
    protected: bool  # a deployment routes to it, or it is its model's latest


def choose_victims(needed: int, used: int, budget: int, loaded: Iterable[Candidate]) -> list[Candidate] | None:
    """The idle versions to unload so that ``needed`` more bytes fit in ``budget`` beside
    the ``used`` ones, in the order to unload them; None when unloading every idle version
    would not make enough room. ``[]``: it fits already."""
    excess = used + needed - budget
    if excess <= 0:
        return []
    idle = sorted((c for c in loaded if c.usage.idle), key=lambda c: (c.protected, c.usage.last_used))
    chosen: list[Candidate] = []
    for candidate in idle:
        chosen.append(candidate)
        excess -= candidate.charge
        if excess <= 0:
            return chosen
    return None
