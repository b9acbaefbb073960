"""Traces through a real server: a span per inference request, its stages as children laid
out at their recorded times, the client's traceparent honoured and answered, the trace id
in the access line; nothing traced (nor OpenTelemetry imported) without a provider."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import stalwart
from stalwart.config import Settings
from stalwart.monitoring.logs import configure_logging
from stalwart.project import Deployment, Project, RequestSource, load_project
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import start_server
from tests.serving.conftest import FraudCopy, predict_body, recent_card

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
V2_BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [4.0]}]}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(shutdown_on_exit=False)
    # Synchronous export: a span is in the exporter as soon as it ends (after the response).
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tapped(settings: Settings, registry: Registry) -> Project:
    """A model with a learned schema (so a validation stage) behind a deployment whose
    features come from the request."""
    txn = RequestSource("txn", fields={"x": "float"})
    set_mode("traced", "ok")
    registry.register("traced", Switchable("traced", 2.0), sample=pd.DataFrame({"x": [float(i) for i in range(60)]}))
    return Project.of(Deployment("scores", model="traced", features=[txn.x]), txn)


def _trace(exporter: InMemorySpanExporter, trace_id: str) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """The request's server span and its descendants by name, for one trace id."""
    spans = [s for s in exporter.get_finished_spans() if s.context is not None and format(s.context.trace_id, "032x") == trace_id]
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    by_name = {s.name: s for s in spans if s is not server}
    return server, by_name


def _assert_inside(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None
    assert parent.context is not None
    assert child.parent.span_id == parent.context.span_id, (child.name, parent.name)
    assert child.start_time is not None
    assert child.end_time is not None
    assert parent.start_time is not None
    assert parent.end_time is not None
    assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time, child.name


def _access_line(stream: io.BytesIO, request_id: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stream.getvalue().decode().splitlines() if line.strip()]
    (line,) = [entry for entry in lines if entry.get("event") == "request" and entry.get("request_id") == request_id]
    return line


def test_a_v2_request_continues_the_clients_trace_with_a_span_per_stage(
    settings: Settings, registry: Registry, tapped: Project, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With a client traceparent, the server span is the client span's child in the same
    trace; decode, validate, queue wait, model and encode are its children, inside it and
    in pipeline order; the response's traceparent names the server span; the JSON access
    line carries the trace id."""
    stream = io.BytesIO()
    configure_logging("json", "info", stream=stream)
    app = create_app(settings, registry=registry, project=tapped, tracer_provider=provider)
    with start_server(settings, app=app) as server:
        response = server.post("/v2/models/traced/infer", json=V2_BODY, headers={"traceparent": TRACEPARENT, "X-Request-ID": "v2-traced"})
    assert response.status_code == 200, response.text

    server_span, children = _trace(exporter, TRACE_ID)
    assert server_span.parent is not None
    assert server_span.parent.span_id == int(CLIENT_SPAN, 16)
    assert server_span.parent.is_remote
    assert server_span.name == "POST /v2/models/{model}/infer"
    assert server_span.status.status_code == StatusCode.UNSET
    attributes = dict(server_span.attributes or {})
    assert attributes["stalwart.request_id"] == "v2-traced"
    assert attributes["stalwart.entrypoint"] == "/v2"
    assert (attributes["stalwart.model"], attributes["stalwart.model_version"]) == ("traced", "1")
    assert attributes["http.response.status_code"] == 200
    assert attributes["stalwart.batch_rows"] == 1
    for name in ("decode", "validate", "queue_wait", "model", "encode"):
        _assert_inside(children[name], server_span)
    order = [children[name] for name in ("decode", "validate", "queue_wait", "model", "encode")]
    for before, after in itertools.pairwise(order):
        assert before.end_time is not None
        assert after.start_time is not None
        assert before.end_time <= after.start_time + 1_000, (before.name, after.name)  # 1 µs: float rounding

    returned = response.headers["traceparent"]
    assert server_span.context is not None
    assert returned == f"00-{TRACE_ID}-{server_span.context.span_id:016x}-01"
    line = _access_line(stream, "v2-traced")
    assert line["trace_id"] == TRACE_ID


def test_a_deployment_request_has_a_span_per_feature_source(
    fraud_copy: FraudCopy, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A /v1 deployment with a cached SQL feature set: the features span holds the cached
    set's lookup, which holds the round trip to the transactions table (a cold cache);
    attributes name the deployment, variant and model."""
    project = load_project(fraud_copy.project(tmp_path / "project"))
    app = create_app(fraud_copy.settings, project=project, tracer_provider=provider)
    card = recent_card(fraud_copy.frame)
    with start_server(fraud_copy.settings, app=app) as server:
        response = server.post("/v1/deployments/fraud/predict", json=predict_body(card), headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text

    server_span, children = _trace(exporter, TRACE_ID)
    assert server_span.parent is not None
    assert server_span.parent.span_id == int(CLIENT_SPAN, 16)
    attributes = dict(server_span.attributes or {})
    assert (attributes["stalwart.entrypoint"], attributes["stalwart.deployment"], attributes["stalwart.variant"]) == ("/v1", "fraud", "primary")
    assert attributes["stalwart.model"] == "fraud"
    features = children["features"]
    _assert_inside(features, server_span)
    lookups = [s for name, s in children.items() if name.startswith("cache ")]
    assert lookups, sorted(children)
    for lookup in lookups:
        _assert_inside(lookup, features)
    source = children["source transactions"]
    assert source.parent is not None
    assert source.parent.span_id in {s.context.span_id for s in lookups if s.context is not None}
    assert (source.attributes or {})["stalwart.source"] == "transactions"
    for name in ("queue_wait", "model", "encode"):
        _assert_inside(children[name], server_span)
    assert response.headers["traceparent"].startswith(f"00-{TRACE_ID}-")


def test_a_bad_traceparent_is_ignored_and_a_new_trace_begins(
    settings: Settings, registry: Registry, tapped: Project, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A malformed traceparent (uppercase hex here) is no error: the request is answered,
    in a new trace of its own (a root span), and the response says which."""
    app = create_app(settings, registry=registry, project=tapped, tracer_provider=provider)
    bad = f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01"
    with start_server(settings, app=app) as server:
        response = server.post("/v2/models/traced/infer", json=V2_BODY, headers={"traceparent": bad})
    assert response.status_code == 200, response.text
    version, trace_id, span_id, _flags = response.headers["traceparent"].split("-")
    assert version == "00"
    assert trace_id.lower() != TRACE_ID
    server_span, _ = _trace(exporter, trace_id)
    assert server_span.parent is None
    assert server_span.context is not None
    assert format(server_span.context.span_id, "016x") == span_id


def test_a_failed_request_has_an_error_status(
    settings: Settings, registry: Registry, tapped: Project, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A model that fails answers 5xx and its span says ERROR with the error class; a
    client's mistake (400) is not the server's error."""
    app = create_app(settings, registry=registry, project=tapped, tracer_provider=provider)
    with start_server(settings, app=app) as server:
        bad_request = server.post("/v2/models/traced/infer", json={"inputs": []}, headers={"traceparent": TRACEPARENT})
        set_mode("traced", "raise")
        failed = server.post("/v2/models/traced/infer", json=V2_BODY, headers={"traceparent": f"00-{'1' * 32}-{CLIENT_SPAN}-01"})
    assert bad_request.status_code == 400
    assert failed.status_code >= 500, failed.text

    client_error, _ = _trace(exporter, TRACE_ID)
    assert client_error.status.status_code == StatusCode.UNSET
    assert (client_error.attributes or {})["error.type"] == "RequestError"
    server_error, _ = _trace(exporter, "1" * 32)
    assert server_error.status.status_code == StatusCode.ERROR
    assert (server_error.attributes or {})["http.response.status_code"] == failed.status_code
    assert "error.type" in (server_error.attributes or {})


def test_without_a_provider_nothing_is_traced_but_ids_still_travel(
    settings: Settings, registry: Registry, tapped: Project, exporter: InMemorySpanExporter
) -> None:
    """Tracing off: no span anywhere, yet the client's trace id comes back (with a server
    span id of its own) and is in the access line."""
    stream = io.BytesIO()
    configure_logging("json", "info", stream=stream)
    app = create_app(settings, registry=registry, project=tapped)
    with start_server(settings, app=app) as server:
        response = server.post("/v2/models/traced/infer", json=V2_BODY, headers={"traceparent": TRACEPARENT, "X-Request-ID": "untraced"})
        plain = server.get("/v2/health/live")
    assert response.status_code == 200
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != CLIENT_SPAN
    assert len(span_id) == 16
    assert _access_line(stream, "untraced")["trace_id"] == TRACE_ID
    assert plain.headers["traceparent"].startswith("00-")
    assert exporter.get_finished_spans() == ()


def test_serving_without_tracing_never_imports_opentelemetry(tmp_path: Path) -> None:
    """Building the app without STALWART_OTEL_ENDPOINT nor a provider loads no
    OpenTelemetry module: the extra costs nothing to those who do not trace."""
    src = str(Path(stalwart.__file__).resolve().parents[1])
    code = (
        "import sys\n"
        "from stalwart.config import Settings\n"
        "from stalwart.serving.app import create_app\n"
        f"create_app(Settings(home={str(tmp_path)!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))\n"
    )
    env = {**os.environ, "PYTHONPATH": src}
    env.pop("STALWART_OTEL_ENDPOINT", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_otel_endpoint_installs_an_otlp_exporter(settings: Settings, registry: Registry) -> None:
    """STALWART_OTEL_ENDPOINT alone turns tracing on: spans go to an OTLP/HTTP exporter
    at the endpoint's /v1/traces, named by the service name."""
    configured = settings.model_copy(update={"otel_endpoint": "http://127.0.0.1:1", "otel_service_name": "scorer"})
    app = create_app(configured, registry=registry)
    tracing = app.state.tracing
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "scorer"
    tracing.close()
