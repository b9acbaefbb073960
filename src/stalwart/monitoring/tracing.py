"""W3C Trace Context (``traceparent``) without OpenTelemetry: parse, format, new ids.

Every request gets a trace id, whether tracing is on or not: the client's (from a valid
``traceparent``) or a new random one. It goes into the access line and the prediction
record, and back to the client in the response's ``traceparent``, so a request can be found
in logs, records and (when exported) traces by one id.

>>> parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', 1)
>>> parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01") is None
True
>>> format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
b'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

This module imports nothing beyond the standard library: the OpenTelemetry SDK (the
``otel`` extra) is only loaded when spans are exported (``stalwart.serving.tracing``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = [
    "SAMPLED",
    "TRACESTATE_LIMIT",
    "format_traceparent",
    "new_ids",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
]

SAMPLED = 0x01
"""The ``sampled`` bit of the trace flags."""
TRACESTATE_LIMIT = 512
"""Longest ``tracestate`` passed on, in bytes (the W3C limit a vendor must propagate);
a longer one is dropped rather than truncated mid-entry."""

_TRACEPARENT_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2: version 00 has exactly this length
_DASH = ord("-")
_HEX_DIGITS = b"0123456789abcdef"  # lowercase only, as the specification requires
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def parse_traceparent(value: bytes) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` from a ``traceparent`` header, or None when it is
    not a valid version-00 header: a bad header is ignored (the request starts a trace of
    its own), never an error.

    Strict on purpose: exactly 55 characters, version ``00``, lowercase hex, a trace id and
    a parent id that are not all zeros. No regular expression (it measured no faster): one
    ``bytes.translate`` in C checks every digit.
    """
    if len(value) != _TRACEPARENT_LENGTH or value[:3] != b"00-" or value[35] != _DASH or value[52] != _DASH:
        return None
    # With the three dashes where they belong, deleting every hex digit leaves exactly
    # them only when every other byte is one (a stray dash or letter is left over).
    if value.translate(None, _HEX_DIGITS) != b"---":
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id.decode(), parent_id.decode(), int(value[53:55], 16)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> bytes:
    """The ``traceparent`` header naming ``span_id`` (16 hex digits) of trace ``trace_id``
    (32 hex digits) as the parent, with ``flags`` (``SAMPLED`` or 0)."""
    return b"00-%s-%s-%02x" % (trace_id.encode(), span_id.encode(), flags & 0xFF)


def new_ids() -> tuple[str, str]:
    """A new trace id and span id (32 and 16 lowercase hex digits, never all zeros): what a
    request without a valid ``traceparent`` needs."""
    global _ids
    ids = next(_ids, None)
    if ids is None:
        # Another thread may refill at the same moment: each refill is fresh random bytes,
        # and next() on a list iterator is atomic, so no two callers get the same ids.
        _ids = _refill()
        ids = next(_ids)
    return ids


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex digits, never all zeros."""
    return new_ids()[0]


def new_span_id() -> str:
    """A random span id: 16 lowercase hex digits, never all zeros."""
    return new_ids()[1]


_ZERO_TRACE_TEXT = "0" * 32
_ZERO_SPAN_TEXT = "0" * 16
_BATCH = 170  # ids per os.urandom call: 4080 bytes


def _refill() -> Iterator[tuple[str, str]]:
    """Ids for the next ``_BATCH`` requests from one ``os.urandom`` call: a system call
    costs microseconds (more in a sandboxed kernel), more than the rest of the middleware,
    and slicing one hex string is cheaper than hex-encoding each id."""
    raw = os.urandom(24 * _BATCH).hex()
    pairs = [(raw[i : i + 32], raw[i + 32 : i + 48]) for i in range(0, len(raw), 48)]
    # All zeros is one chance in 2**64 at worst, and the specification forbids it.
    return iter([p for p in pairs if p[0] != _ZERO_TRACE_TEXT and p[1] != _ZERO_SPAN_TEXT])


_ids: Iterator[tuple[str, str]] = iter(())


def _forget_ids() -> None:
    # A forked child must not hand out the parent's remaining ids as its own.
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_ids)
