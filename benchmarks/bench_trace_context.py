"""Cost per request of the trace context in the middleware: reading the identity headers
(request id, ``traceparent``, ``tracestate``) in one scan, making ids, and formatting the
response's ``traceparent``.

Run from the repository root::

    PYTHONPATH=src python -m benchmarks.bench_trace_context [--calls 200000] [--runs 15]

Times are the best of ``runs`` in thread CPU time (``time.thread_time``), so a busy
machine's scheduling does not count; the headers are those an HTTP client typically sends.
"""

from __future__ import annotations

import argparse
import time
import timeit

from stalwart.monitoring.tracing import format_traceparent, new_ids, parse_traceparent
from stalwart.serving.middleware import _identify, _new_request_id

BASE = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"python-httpx/0.27"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"application/json"),
    (b"content-length", b"92"),
]
TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
CASES = {
    "no identity headers": BASE,
    "X-Request-ID": [*BASE, (b"x-request-id", b"abc-123")],
    "traceparent": [*BASE, TRACEPARENT],
    "traceparent + tracestate": [*BASE, TRACEPARENT, (b"tracestate", b"congo=t61rcWkgMzE")],
}


def _best(fn: object, calls: int, runs: int) -> float:
    """Nanoseconds per call, the best of ``runs``."""
    timer = timeit.Timer(fn, timer=time.thread_time)  # type: ignore[arg-type]  # a zero-argument callable
    return min(timer.repeat(repeat=runs, number=calls)) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"{'what':50s} {'ns/request':>10s}")
    for name, headers in CASES.items():

        def identify(headers: list[tuple[bytes, bytes]] = headers) -> None:
            info = _identify(headers, 0.0)
            format_traceparent(info.trace_id, info.span_id, info.trace_flags)

        print(f"{'identity + response traceparent, ' + name:50s} {_best(identify, args.calls, args.runs):10.0f}")
    value = TRACEPARENT[1]
    parts = {
        "parse_traceparent": lambda: parse_traceparent(value),
        "format_traceparent": lambda: format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1),
        "new_ids (trace + span)": new_ids,
        "a new request id (before this change too)": _new_request_id,
    }
    for name, fn in parts.items():
        print(f"{name:50s} {_best(fn, args.calls, args.runs):10.0f}")


if __name__ == "__main__":
    main()
