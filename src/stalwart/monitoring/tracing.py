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

__all__ = [
    "SAMPLED",
    "TRACESTATE_LIMIT",
    "format_traceparent",
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
    a parent id that are not all zeros. No regular expression: slices and one
    ``bytes.translate`` (in C) are about three times cheaper.
    """
    if len(value) != _TRACEPARENT_LENGTH or value[:3] != b"00-" or value[35] != _DASH or value[52] != _DASH:
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    flags = value[53:55]
    # Deleting every hex digit leaves nothing only when there was nothing else.
    if (trace_id + parent_id + flags).translate(None, _HEX_DIGITS):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id.decode(), parent_id.decode(), int(flags, 16)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> bytes:
    """The ``traceparent`` header naming ``span_id`` (16 hex digits) of trace ``trace_id``
    (32 hex digits) as the parent, with ``flags`` (``SAMPLED`` or 0)."""
    return b"00-%s-%s-%02x" % (trace_id.encode(), span_id.encode(), flags & 0xFF)


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex digits, never all zeros."""
    while True:
        trace_id = os.urandom(16).hex()
        if trace_id != "0" * 32:  # one chance in 2**128; the specification forbids it
            return trace_id


def new_span_id() -> str:
    """A random span id: 16 lowercase hex digits, never all zeros."""
    while True:
        span_id = os.urandom(8).hex()
        if span_id != "0" * 16:
            return span_id
