"""W3C trace context: a valid traceparent is read exactly, anything else is ignored (the
request starts a trace of its own), and the ids Stalwart makes are well formed."""

from __future__ import annotations

import pytest

from stalwart.monitoring.tracing import (
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_traceparent_is_read_and_written_back_the_same() -> None:
    """Version 00, both ids and the flags, round trip through format_traceparent."""
    header = f"00-{TRACE}-{SPAN}-01".encode()
    assert parse_traceparent(header) == (TRACE, SPAN, 1)
    assert format_traceparent(TRACE, SPAN, 1) == header
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == (TRACE, SPAN, 0)


@pytest.mark.parametrize(
    "header",
    [
        b"",
        f"01-{TRACE}-{SPAN}-01".encode(),  # another version: its format is not known here
        f"00-{TRACE}-{SPAN}-01-extra".encode(),  # version 00 has exactly 55 characters
        f"00-{TRACE.upper()}-{SPAN}-01".encode(),  # hex is lowercase
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # an all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # an all-zero parent id
        f"00-{TRACE[:-1]}g-{SPAN}-01".encode(),
        f"00-{TRACE}-{SPAN[:-1]}+-01".encode(),
        f"00-{TRACE}-{SPAN}-0x".encode(),
        f"00_{TRACE}_{SPAN}_01".encode(),
        f" 00-{TRACE}-{SPAN}-1".encode(),
        f"00-{TRACE}-{SPAN}-01"[:-1].encode() + b"\xff",
    ],
)
def test_a_bad_traceparent_is_ignored(header: bytes) -> None:
    """Anything but a strictly valid version-00 header parses to None, never an error."""
    assert parse_traceparent(header) is None


def test_new_ids_are_lowercase_hex_of_the_right_length_and_random() -> None:
    """32 and 16 hex digits, never zero, never repeating."""
    traces = {new_trace_id() for _ in range(100)}
    spans = {new_span_id() for _ in range(100)}
    assert len(traces) == len(spans) == 100
    for trace_id in traces:
        assert parse_traceparent(format_traceparent(trace_id, SPAN, 0)) == (trace_id, SPAN, 0)
    for span_id in spans:
        assert parse_traceparent(format_traceparent(TRACE, span_id, 1)) == (TRACE, span_id, 1)
