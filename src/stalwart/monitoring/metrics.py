"""Prometheus metrics, one registry per server so tests and embedded servers never collide.

Label values are bounded: ``endpoint`` is a route template, never a raw path, and a model
name is only used as a label once the registry knows it (a 404 for a made-up name is
counted under ``model=""``), so a scanner cannot blow up the series count.

**Worker processes.** Under ``stalwart serve --workers N`` (N > 1) a scrape reaches one
worker, and it must show what all of them did. The supervisor gives every worker
``PROMETHEUS_MULTIPROC_DIR``, a private directory, so prometheus_client keeps every value in
a per-process file there (its multiprocess mode) and :func:`exposition` merges the files
of every worker: counters and histograms add up (a dead worker's counts stay in the
totals), and each gauge says how its workers' values combine (``multiprocess_mode``, every
one a ``live`` mode, so a dead worker's gauges go with it; docs/workers.md lists them). A
gauge read by a function when scraped (:func:`gauge_function`) is written to the file by
:func:`sample` instead: each worker every :data:`SAMPLE_SECONDS`, the scraped one at the
scrape. Without the variable (one process, the default) none of this happens: values are
plain in-memory floats and a scrape reads this process's registry, as always.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "SAMPLE_SECONDS",
    "BatchMetrics",
    "BatchSeries",
    "RouteMetrics",
    "ServingMetrics",
    "exposition",
    "gauge_function",
    "multiprocess_dir",
    "sample",
]

SAMPLE_SECONDS = 1.0
"""How often each worker writes its function gauges to its file (multiprocess mode only):
how old another worker's queue lengths may be in a scrape."""

# Function gauges of this process, when in multiprocess mode: prometheus_client's mode is
# the process's (chosen once, when it is imported), so this list is too.
_SAMPLED: list[tuple[Gauge, Callable[[], float]]] = []


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode when this process is in it
    (a worker of ``stalwart serve --workers N``), else None: the test prometheus_client
    makes when it is imported."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def gauge_function(gauge: Gauge, read: Callable[[], float]) -> None:
    """``gauge`` (or a labelled child) shows ``read()`` when scraped. In one process that is
    ``set_function``; in multiprocess mode a scrape reads files, so :func:`sample` writes it."""
    if multiprocess_dir() is None:
        gauge.set_function(read)
    else:
        _SAMPLED.append((gauge, read))


def stop_gauge_function(gauge: Gauge) -> None:
    """``gauge`` no longer reads the function :func:`gauge_function` gave it, nor keeps it
    (and what it reads) alive."""
    if multiprocess_dir() is None:
        gauge.set_function(_nothing)
    else:
        _SAMPLED[:] = [(sampled, read) for sampled, read in _SAMPLED if sampled is not gauge]


def sample() -> None:
    """Write this process's function gauges to its multiprocess file (nothing otherwise)."""
    for gauge, read in _SAMPLED:
        gauge.set(read())


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry``; in multiprocess mode, of every worker's files."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(registry)
    from prometheus_client.multiprocess import MultiProcessCollector

    sample()
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    return generate_latest(merged)

# Tabular models answer in well under a millisecond; the buckets start there.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServingMetrics:
    """The serving layer's metrics, registered in their own :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process's CPU seconds, resident memory and file descriptors (process_*): what
        # a replica costs, beside what its models are measured at (docs/operations.md).
        # Under --workers N the scrape merges the workers' files, which hold none of these:
        # the container's own metrics (cAdvisor) stand in for them there.
        ProcessCollector(registry=r)
        labels = ("model", "version", "endpoint", "status")
        self.requests = Counter(
            "stalwart_requests", "HTTP requests served", labels, registry=r
        )
        self.latency = Histogram(
            "stalwart_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # A plain count the event loop updates (no lock per request), read at scrape time.
        self.in_flight_count = 0
        self.in_flight = Gauge(
            "stalwart_requests_in_flight", "Requests being served now", registry=r, multiprocess_mode="livesum"
        )
        gauge_function(self.in_flight, lambda: self.in_flight_count)
        self.model_load = Histogram(
            "stalwart_model_load_seconds",
            "Time to verify, deserialise and prepare a model version",
            ("model", "version"),
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge(
            "stalwart_models_loaded", "Model versions loaded and ready to serve", registry=r,
            multiprocess_mode="livemin",  # workers: what every one of them serves
        )
        self.model_load_failures = Counter(
            "stalwart_model_load_failures", "Model versions that failed to load", ("model", "version"), registry=r
        )
        # Resources (stalwart.serving.residency): a loaded version's series is removed when
        # it is unloaded, so the gauge sums to what is loaded now.
        self.model_memory = Gauge(
            "stalwart_model_memory_bytes",
            "Memory of each loaded model version: the process's RSS growth across its load (an estimate)",
            ("model", "version"),
            registry=r,
            multiprocess_mode="livesum",  # workers: every one loads its own copy
        )
        self.model_memory_budget = Gauge(
            "stalwart_model_memory_budget_bytes", "The loaded versions' memory budget (STALWART_MODEL_MEMORY); absent: no limit", registry=r,
            multiprocess_mode="livemax",  # each worker's own budget, the same for all
        )
        self.model_evictions = Counter(
            "stalwart_model_evictions", "Idle model versions unloaded to make room for another within the memory budget",
            ("model", "version"), registry=r,
        )
        self.model_memory_refusals = Counter(
            "stalwart_model_memory_refusals",
            "Model loads refused by the memory budget: too_large (more than the whole budget) or busy (versions serving requests fill it)",
            ("model", "reason"), registry=r,
        )
        self._request_children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    def observe_request(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        key = (model, version, endpoint, str(status))
        children = self._request_children.get(key)
        if children is None:
            # labels() takes a lock and builds a tuple; cache the children per label set.
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        return exposition(self.registry)


# Rows per batched call: powers of two up to the largest batch anyone should configure.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Queue waits are budgeted in fractions of a millisecond.
_WAIT_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


@dataclass(frozen=True, slots=True)
class BatchSeries:
    """One model version's batching series, resolved once (``labels()`` takes a lock)."""

    rows: Histogram
    requests: Histogram
    queue_wait: Histogram
    model_time: Histogram
    failures: Counter


class BatchMetrics:
    """The adaptive batcher's metrics, labelled by model and version, in the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        labels = ("model", "version")
        self.rows = Histogram(
            "stalwart_batch_rows", "Rows per batched model call", labels, buckets=_BATCH_BUCKETS, registry=r
        )
        self.requests = Histogram(
            "stalwart_batch_requests",
            "Requests (or parts of a split request) answered by one batched model call",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stalwart_batch_queue_wait_seconds",
            "Time a request waited in the batch queue before its model call started",
            labels,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge(
            "stalwart_batch_queue_rows", "Rows waiting in the batch queue now", labels, registry=r,
            multiprocess_mode="livesum",
        )
        self.model_time = Histogram(
            "stalwart_batch_model_seconds",
            "Time of one batched model call, inputs joined and outputs split included",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "stalwart_batch_failures", "Batched model calls that failed", labels, registry=r
        )

    def forget(self, model: str, version: str) -> None:
        """Drop the version's queue gauge (its batcher closed): the gauge reads the batcher,
        which must not be kept alive by the metrics once its version is unloaded."""
        # set_function leaves the child and its sampling closure in a reference cycle, which
        # only a full collection frees (never, once gc.freeze() froze it): point it at a
        # function that holds nothing before letting the child go.
        stop_gauge_function(self.queue_rows.labels(model, version))
        with contextlib.suppress(KeyError):
            self.queue_rows.remove(model, version)

    def series(self, model: str, version: str, queued_rows: Callable[[], float]) -> BatchSeries:
        """The series of one model version; the queue gauge reads ``queued_rows`` when scraped."""
        gauge_function(self.queue_rows.labels(model, version), queued_rows)
        return BatchSeries(
            rows=self.rows.labels(model, version),
            requests=self.requests.labels(model, version),
            queue_wait=self.queue_wait.labels(model, version),
            model_time=self.model_time.labels(model, version),
            failures=self.failures.labels(model, version),
        )


def _nothing() -> float:
    return 0.0


class ResilienceMetrics:
    """Breakers, degradation and shedding, in the serving registry.

    ``reason`` labels are error class names (``CallTimeout``, ``ModelError``...), never
    messages, so they stay a small fixed set.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.breaker_state = Gauge(
            "stalwart_breaker_state",
            "1 for each guard's current circuit-breaker state, 0 for the others",
            ("guard", "state"),
            registry=registry,
            multiprocess_mode="livesum",  # workers: how many of them are in each state
        )
        self.breaker_transitions = Counter(
            "stalwart_breaker_transitions",
            "Circuit-breaker state changes",
            ("guard", "from_state", "to_state"),
            registry=registry,
        )
        self.degraded = Counter(
            "stalwart_degraded_responses",
            "Responses served by a step of the degradation ladder",
            ("deployment", "level", "reason"),
            registry=registry,
        )
        self.shed = Counter(
            "stalwart_shed_requests",
            "Requests turned away by load shedding",
            ("deployment", "priority"),
            registry=registry,
        )

    def set_breaker_state(self, guard: str, state: str, states: tuple[str, ...]) -> None:
        for name in states:
            self.breaker_state.labels(guard, name).set(1.0 if name == state else 0.0)


class RouteMetrics:
    """The routes each replica serves, per deployment: the canary's share of routing keys,
    the routes' revision (every replica shows the same once a change has reached them all)
    and the model each variant routes to. Labels are bounded by the project's deployments
    and the models they route to now. Under ``--workers N`` the revision is the oldest any
    worker serves, so one lagging behind shows."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.canary_weight = Gauge(
            "stalwart_route_canary_weight",
            "Share of routing keys this replica sends to the deployment's canary (0 without one)",
            ("deployment",),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.revision = Gauge(
            "stalwart_route_revision",
            "Revision of the deployment's routes this replica serves (equal on every replica once a change reached them all)",
            ("deployment",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.variant = Gauge(
            "stalwart_route_variant",
            "1 for the model each variant (primary, canary) of the deployment routes to on this replica, 0 for one it no longer does",
            ("deployment", "variant", "model"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._models: dict[tuple[str, str], str] = {}

    def set_routes(self, deployment: str, revision: int, primary: str, canary: str | None, canary_weight: float) -> None:
        """Publish the routes ``deployment`` serves now (``canary`` None: it has none)."""
        self.canary_weight.labels(deployment).set(canary_weight)
        self.revision.labels(deployment).set(revision)
        for variant, model in (("primary", primary), ("canary", canary)):
            before = self._models.pop((deployment, variant), None)
            if before is not None and before != model:
                # Zeroed, then removed: a worker's file (multiprocess mode) keeps a removed
                # series at its last value, and that must not read as still routed.
                self.variant.labels(deployment, variant, before).set(0.0)
                self.variant.remove(deployment, variant, before)
            if model is not None:
                self.variant.labels(deployment, variant, model).set(1.0)
                self._models[(deployment, variant)] = model
