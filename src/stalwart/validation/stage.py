"""The validation stage of the request pipeline, and its Prometheus metrics.

>>> stage = ValidationStage(Validator(schema), next_stage, deployment="churn",   # doctest: +SKIP
...                         metrics=ValidationMetrics(registry))

The stage checks ``exchange.inputs``, writes the fixed arrays back, records what it found
in ``exchange.validation`` (a summary for logs and records, and what the client should be
told: imputed, clipped and flagged rows per feature), counts violations, and either awaits
the next stage or raises
:class:`~stalwart.errors.ValidationFailed` (HTTP 422) listing every violation. A model
without a schema simply has no validation stage.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter

from stalwart.pipeline import Exchange, Next, ValidationNote
from stalwart.validation.report import ValidationReport
from stalwart.validation.validator import Validator

__all__ = ["ValidationMetrics", "ValidationStage"]

OUTCOMES = ("passed", "fixed", "flagged", "rejected")


class ValidationMetrics:
    """Violations by deployment, feature, rule and policy applied; requests by outcome.

    Label values are bounded: features come from the schema, never from the request, and
    rules and policies are fixed sets.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.violations = Counter(
            "stalwart_validation_violations",
            "Values that broke a schema rule, by the policy applied to them",
            ("deployment", "feature", "rule", "policy"),
            registry=registry,
        )
        self.requests = Counter(
            "stalwart_validation_requests",
            "Validated requests by outcome (passed, fixed, flagged, rejected)",
            ("deployment", "outcome"),
            registry=registry,
        )
        self._request_children: dict[tuple[str, str], Counter] = {}

    def observe(self, deployment: str, report: ValidationReport) -> None:
        """Count one request's report."""
        outcome = _outcome(report)
        key = (deployment, outcome)
        child = self._request_children.get(key)
        if child is None:
            # labels() takes a lock and builds a tuple; cache the children per label set.
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()
        if report.ok:
            return
        for (feature, rule, policy), n in report.metric_counts().items():
            self.violations.labels(deployment, feature, rule, policy).inc(n)


def _outcome(report: ValidationReport) -> str:
    if report.ok:
        return "passed"
    if report.rejected:
        return "rejected"
    if "imputed" in report.changed or "clipped" in report.changed:
        return "fixed"
    return "flagged"


class ValidationStage:
    """Validates the exchange's inputs, then awaits ``next`` (or raises on ``reject``).

    ``deployment`` labels the metrics (a deployment name, or ``model:<name>`` for a bare
    ``/v2`` model). Timing goes to ``exchange.timings.validate_ms``.
    """

    def __init__(
        self,
        validator: Validator,
        next: Next,
        *,
        deployment: str = "",
        metrics: ValidationMetrics | None = None,
    ) -> None:
        self._validator = validator
        self._next = next
        self._deployment = deployment
        self._metrics = metrics

    async def __call__(self, exchange: Exchange) -> None:
        start = time.perf_counter()
        fixed, report = self._validator.check(exchange.inputs, exchange.rows)
        exchange.timings.validate_ms = (time.perf_counter() - start) * 1000
        exchange.timings.validate_start = start
        if self._metrics is not None:
            self._metrics.observe(self._deployment, report)
        if not report.ok:
            if report.rejected:
                exchange.validation = ValidationNote(report.to_notes())
                raise report.error(self._validator.subject)
            exchange.validation = ValidationNote(report.to_notes(), report.response_part())
            exchange.inputs = fixed
        await self._next(exchange)
