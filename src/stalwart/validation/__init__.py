"""Validation: a schema learned from the training data, checked against every request.

* :mod:`~stalwart.validation.schema`: :class:`Schema`, :func:`infer_schema`, YAML/JSON files.
* :mod:`~stalwart.validation.policy`: rules, policies, their precedence, deployment overrides.
* :mod:`~stalwart.validation.validator`: the compiled :class:`Validator`.
* :mod:`~stalwart.validation.stage`: the pipeline stage and its metrics.
"""

from stalwart.validation.policy import PolicyOverrides
from stalwart.validation.report import ValidationReport, Violation
from stalwart.validation.schema import FeatureSchema, Schema, infer_schema
from stalwart.validation.stage import ValidationMetrics, ValidationStage
from stalwart.validation.validator import Validator

__all__ = [
    "FeatureSchema",
    "PolicyOverrides",
    "Schema",
    "ValidationMetrics",
    "ValidationReport",
    "ValidationStage",
    "Validator",
    "Violation",
    "infer_schema",
]
