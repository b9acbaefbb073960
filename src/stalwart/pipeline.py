"""The request pipeline's shared shapes: the :class:`Exchange` and the :class:`Stage`.

A prediction travels as one mutable :class:`Exchange` through a chain of stages, each a
small object that does one job and awaits the next (validate, guard, batch, model). A
chain is built once per model version and entrypoint, so a stage that is switched off is
simply absent and costs nothing per request.

What stages report back (timings, what validation did, the batch a call went through) are
typed fields, so every reader and writer agrees on them: the data plane turns them into
the response, the access line and (later) the prediction record.

This module sits at the bottom of the layering so every layer can build stages without
importing the serving layer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

__all__ = ["Arrays", "Exchange", "Next", "Stage", "Timings", "ValidationNote"]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(slots=True)
class Timings:
    """Milliseconds spent in each stage of one request; None for a stage it skipped.

    Each ``<stage>_start`` is the ``time.perf_counter()`` instant the stage began, recorded
    where its duration is, so a trace can lay the stages out exactly (the durations alone
    do not say where the gaps between them are).
    """

    decode_ms: float | None = None
    features_ms: float | None = None
    validate_ms: float | None = None
    queue_wait_ms: float | None = None
    model_ms: float | None = None
    decode_start: float | None = None
    features_start: float | None = None
    validate_start: float | None = None
    queue_wait_start: float | None = None
    model_start: float | None = None

    def items(self) -> Iterator[tuple[str, float]]:
        """``(name, ms)`` for each stage that ran, in the order of the pipeline."""
        for f in _TIMING_FIELDS:
            value = getattr(self, f)
            if value is not None:
                yield f, value

    def spans(self) -> Iterator[tuple[str, float, float]]:
        """``(stage, start, seconds)`` for each stage that ran and recorded its start, in
        the order of the pipeline (``stage`` without ``_ms``; ``start`` a perf_counter
        instant)."""
        for f, start_field in _SPAN_FIELDS:
            ms = getattr(self, f)
            start = getattr(self, start_field)
            if ms is not None and start is not None:
                yield f[:-3], start, ms / 1000

    def copy(self) -> Timings:
        return Timings(*(getattr(self, f) for f in _ALL_FIELDS))

    def update(self, other: Timings) -> None:
        """Take every stage ``other`` timed (keeps this object: callers may hold it)."""
        for f in _ALL_FIELDS:
            value = getattr(other, f)
            if value is not None:
                setattr(self, f, value)


_ALL_FIELDS = tuple(f.name for f in fields(Timings))
_TIMING_FIELDS = tuple(name for name in _ALL_FIELDS if name.endswith("_ms"))
_SPAN_FIELDS = tuple((name, f"{name[:-3]}_start") for name in _TIMING_FIELDS)


@dataclass(frozen=True, slots=True)
class ValidationNote:
    """What validation found in a request that it let through or rejected.

    ``summary`` is for logs and records (violation counts, the first few violations);
    ``response`` is what the client is told (the rows imputed, clipped or flagged per
    feature), absent when the request was rejected.
    """

    summary: dict[str, Any]
    response: dict[str, Any] | None = None


@dataclass(slots=True)
class Exchange:
    """One pass of a request through a chain.

    ``inputs`` are named columns or tensors with rows first (after validation: the values
    the model saw); ``results`` are filled by the model stage.
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
    timings: Timings = field(default_factory=Timings)
    validation: ValidationNote | None = None
    batch_rows: int | None = None  # rows in the model call this request shared

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None when the request has none)."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


Next = Callable[[Exchange], Awaitable[None]]


class Stage(Protocol):
    """One step of the pipeline: do its job on the exchange, then (usually) await the next."""

    async def __call__(self, exchange: Exchange) -> None: ...
