"""Traces: a span per inference request and one per stage, through OpenTelemetry.

Installed by ``create_app`` only when tracing is configured (``STALWART_OTEL_ENDPOINT``, or
a ``tracer_provider`` given); this module imports the OpenTelemetry SDK (the ``otel``
extra), so it is imported only then, and a server without tracing never loads it.

Nothing is traced while the request runs. The stages already record when they start and
how long they take (:class:`~stalwart.pipeline.Timings`, and per source
:class:`~stalwart.features.readers.Fetched`); from those, after the fact, come:

- at the tap (:class:`Tracing`, a :class:`~stalwart.serving.dataplane.RequestTap`, called
  as the data plane answers, before the response is encoded): the request's server span,
  started at the request's arrival, child of the client's ``traceparent`` span. Its ids go
  on the :class:`~stalwart.serving.middleware.RequestInfo`, so the response's
  ``traceparent``, the access line and the prediction record name the span exported;
- once the response is sent (``RequestInfo.on_done``, called by the middleware): the
  children with their recorded start and end times (``decode``, ``features`` with a
  ``cache <feature set>`` span per cached set looked up and a ``source <name>`` span per
  round trip, ``validate``, ``queue_wait``, ``model``, ``encode``), the attributes, the
  HTTP status (ERROR for a 5xx), and the server span's end.

Times are ``time.perf_counter()`` instants, turned into the epoch nanoseconds spans take
by one offset read per request. Requests outside the data plane (health, metadata,
metrics) get trace ids and a ``traceparent`` back, but no span.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from stalwart._version import __version__
from stalwart.config import Settings
from stalwart.features.readers import Fetched
from stalwart.serving.dataplane import Outcome
from stalwart.serving.middleware import RequestInfo

__all__ = ["Tracing", "otlp_provider"]

_NS = 1_000_000_000
_SERVER_ERROR = 500


class Tracing:
    """The tracing tap: starts each inference request's server span as the data plane
    answers, and finishes it (children, attributes, status) once the response is sent.

    ``owned``: the provider was built here (from the settings), so :meth:`close` flushes
    and shuts it down; a provider given by the caller is the caller's to shut down.
    """

    def __init__(self, provider: trace.TracerProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("stalwart", __version__)
        self._owned = owned

    def __call__(self, outcome: Outcome) -> None:
        info = outcome.info
        tapped = time.perf_counter()
        # One offset per request from perf_counter to the epoch: spans take wall-clock
        # nanoseconds, the stages record perf_counter instants (cheap, monotonic).
        offset = time.time_ns() - int(tapped * _NS)
        span = self._tracer.start_span(
            # Both data plane entrypoints are POST routes; info.endpoint is the route's
            # template, so the name stays low in cardinality (HTTP semantic conventions).
            f"POST {info.endpoint}",
            context=_parent(info),
            kind=SpanKind.SERVER,
            start_time=offset + int(info.started * _NS),
        )
        context = span.get_span_context()
        # A request without a valid traceparent starts its trace here: the SDK chose the
        # ids, so the response and the log name the trace that is exported.
        info.trace_id = format(context.trace_id, "032x")
        info.span_id = format(context.span_id, "016x")
        info.trace_flags = int(context.trace_flags)
        if span.is_recording():  # a sampler may drop it: then there is nothing to finish
            info.on_done = _Finish(self._tracer, span, outcome, tapped, offset)

    def close(self) -> None:
        """Export what is buffered and stop, when the provider is this object's own."""
        shutdown = getattr(self.provider, "shutdown", None)  # the SDK's provider has one, the API's not
        if self._owned and shutdown is not None:
            shutdown()


class _Finish:
    """What is left to do for one request once its response is sent (``on_done``)."""

    __slots__ = ("offset", "outcome", "span", "tapped", "tracer")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, outcome: Outcome, tapped: float, offset: int) -> None:
        self.tracer = tracer
        self.span = span
        self.outcome = outcome
        self.tapped = tapped
        self.offset = offset

    def __call__(self, info: RequestInfo, status: int) -> None:
        end = self.offset + time.perf_counter_ns()  # perf_counter_ns is perf_counter's clock in ns
        info.on_done = None  # info → this → outcome → info: a cycle the collector need not find
        span, outcome, offset = self.span, self.outcome, self.offset
        parent = trace.set_span_in_context(span)
        exchange = outcome.exchange
        if exchange is not None:
            for stage, start, seconds in exchange.timings.spans():
                child = self._child(stage, parent, offset + int(start * _NS))
                if stage == "features":
                    self._features(trace.set_span_in_context(child), outcome.features.get("fetches", ()))
                child.end(offset + int((start + seconds) * _NS))
        # From the data plane's answer to the response sent: encoding it and handing it to
        # the transport.
        self._child("encode", parent, offset + int(self.tapped * _NS)).end(end)
        span.set_attributes(_attributes(info, outcome, status))
        if status >= _SERVER_ERROR:
            error = outcome.error
            span.set_status(Status(StatusCode.ERROR, type(error).__name__ if error is not None else f"HTTP {status}"))
        span.end(end)

    def _child(self, name: str, parent: Any, start_ns: int, attributes: Mapping[str, str] | None = None) -> trace.Span:
        return self.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, start_time=start_ns, attributes=attributes)

    def _features(self, parent: Any, fetches: Iterable[Fetched]) -> None:
        """A span per cached set looked up, and per round trip to a source: a round trip
        made for a cached set's misses (same source, within its lookup) nests under it."""
        offset = self.offset
        fetches = list(fetches)
        lookups = [(f, self._child(f"cache {f.feature_set}", parent, offset + int(f.start * _NS), {
            "stalwart.feature_set": f.feature_set or "", "stalwart.source": f.source,
        })) for f in fetches if f.feature_set is not None]
        for fetch in fetches:
            if fetch.feature_set is not None:
                continue
            within = next(
                (s for f, s in lookups if f.source == fetch.source and f.start <= fetch.start
                 and fetch.start + fetch.seconds <= f.start + f.seconds),
                None,
            )
            context = trace.set_span_in_context(within) if within is not None else parent
            child = self._child(f"source {fetch.source}", context, offset + int(fetch.start * _NS), {"stalwart.source": fetch.source})
            if fetch.error is not None:
                child.set_status(Status(StatusCode.ERROR, fetch.error))
                child.set_attribute("error.type", fetch.error)
            child.end(offset + int((fetch.start + fetch.seconds) * _NS))
        for f, lookup in lookups:
            lookup.end(offset + int((f.start + f.seconds) * _NS))


def _parent(info: RequestInfo) -> Any:
    """The client's span as the server span's parent (None: a root span)."""
    if info.parent_span_id is None:
        return None
    state = TraceState.from_header([info.tracestate]) if info.tracestate else None
    remote = SpanContext(
        int(info.trace_id, 16), int(info.parent_span_id, 16), is_remote=True,
        trace_flags=TraceFlags(info.trace_flags), trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _attributes(info: RequestInfo, outcome: Outcome, status: int) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": "POST",
        "http.route": info.endpoint,
        "http.response.status_code": status,
        "stalwart.request_id": info.request_id,
        "stalwart.entrypoint": outcome.entrypoint,
    }
    if outcome.deployment is not None:
        attributes["stalwart.deployment"] = outcome.deployment
    if outcome.variant is not None:
        attributes["stalwart.variant"] = outcome.variant
    if info.model:
        attributes["stalwart.model"] = info.model
    if info.version:
        attributes["stalwart.model_version"] = info.version
    exchange = outcome.exchange
    if exchange is not None:
        attributes["stalwart.rows"] = exchange.rows
        if exchange.batch_rows is not None:
            attributes["stalwart.batch_rows"] = exchange.batch_rows
    prediction = outcome.prediction
    if prediction is not None and prediction.degraded is not None:
        attributes["stalwart.degraded"] = prediction.degraded.level
    if outcome.error is not None:
        attributes["error.type"] = type(outcome.error).__name__
    return attributes


def otlp_provider(settings: Settings) -> trace.TracerProvider:
    """A provider exporting over OTLP/HTTP to ``settings.otel_endpoint`` in batches (off
    the event loop, on the SDK's thread), its spans named ``settings.otel_service_name``.

    An endpoint without a path (``http://collector:4318``) gets the standard
    ``/v1/traces``; one with a path is used as it is.
    """
    # Imported here: the exporter pulls in protobuf and requests, which a provider given
    # by the caller (tests) does not need.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = settings.otel_endpoint or ""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        endpoint = urlunsplit(parts._replace(path="/v1/traces"))
    # shutdown_on_exit=False: the app's lifespan shuts it down (Tracing.close), once.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider
