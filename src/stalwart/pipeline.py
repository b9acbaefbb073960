"""The request pipeline's shared shapes: the :class:`Exchange` and the :class:`Stage`.

A prediction travels as one mutable :class:`Exchange` through a chain of stages, each a
small object that does one job and awaits the next (decode, route, resolve features,
validate, guard, batch, model). A chain is built once per model version or deployment,
so a stage that is switched off is simply absent and costs nothing per request.

This module sits at the bottom of the layering so every layer can build stages without
importing the serving layer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["Arrays", "Exchange", "Next", "Stage"]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(slots=True)
class Exchange:
    """One prediction request, as it moves through the pipeline.

    ``inputs`` are named columns or tensors with rows first; ``results`` are filled by the
    model stage. ``notes`` gathers what later stages report back to the client and the logs
    (validation issues, degradation, cache hits), keyed by the stage that wrote them.
    """

    request_id: str
    inputs: Arrays
    rows: int
    outputs: tuple[str, ...]
    model: str = ""
    version: int = 0
    deadline: float | None = None  # time.monotonic() by which the answer is due
    on_service_start: Callable[[], None] | None = None  # told when the model call begins
    results: Arrays | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None when the request has none)."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


Next = Callable[[Exchange], Awaitable[None]]


class Stage(Protocol):
    """One step of the pipeline: do its job on the exchange, then (usually) await the next."""

    async def __call__(self, exchange: Exchange) -> None: ...
