"""The report document: JSON-safe, times in UTC, checked when read (a wrong field is named),
and the orders the renderers share (drifted and most severe first, firing first)."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import msgspec
import pytest

from stalwart.errors import ConfigError
from stalwart.monitoring.report_document import (
    AlertEntry,
    ColumnDrift,
    DriftSummary,
    QualityBucket,
    ReportDocument,
    latest,
    quality_metrics,
    sorted_alerts,
    sorted_columns,
)
from tests.monitoring.report_factory import empty_document, fraud_document


def test_a_document_survives_json_both_ways() -> None:
    """to_dict is plain JSON (ISO 8601 UTC times), and reading it back gives the same
    document: what `--json` prints, `--from-json` renders."""
    doc = ReportDocument.from_dict(fraud_document())
    data = json.loads(json.dumps(doc.to_dict(), allow_nan=False))
    assert ReportDocument.from_dict(data) == doc
    assert ReportDocument.from_json(doc.to_json()) == doc
    assert data["since"] == "2024-05-01T00:00:00Z"
    assert data["distributions"]["merchant_category"]["kind"] == "categorical"
    assert data["alerts"][0]["ended_at"] is None


def test_times_in_another_zone_are_written_in_utc() -> None:
    """A time given with an offset is the same instant, written in UTC."""
    doc = ReportDocument.from_dict(empty_document() | {"since": "2024-05-01T02:30:00+02:00"})
    assert doc.to_dict()["since"] == "2024-05-01T00:30:00Z"


def test_a_number_that_could_not_be_computed_is_null() -> None:
    """NaN and infinities become null where a field allows it (JSON has neither)."""
    column = ColumnDrift(column="x", kind="numeric", method="psi", score=math.nan, threshold=0.1, drifted=False, p_value=math.inf)
    doc = msgspec.structs.replace(ReportDocument.from_dict(empty_document()), drift=DriftSummary(columns=[column]))
    data = doc.to_dict()
    assert data["drift"]["columns"][0]["score"] is None
    assert data["drift"]["columns"][0]["p_value"] is None
    json.dumps(data, allow_nan=False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"since": "2024-05-01T00:00:00"}, "$.since"),  # no zone: ambiguous
        ({"drift": {"share": 1.5}}, "$.drift.share"),
        ({"multivariate": {"auroc": float("nan"), "threshold": 0.6, "drifted": False}}, "$.multivariate.auroc"),
        ({"quality": [{"bucket": "2024-05-01T00:00:00Z", "predictions": -1, "labelled": 0}]}, "$.quality[0].predictions"),
        ({"distributions": {"x": {"kind": "numeric", "edges": [0, 1], "reference": [1.0], "current": [0.5, 0.5]}}}, "len(edges) - 1"),
        ({"distributions": {"x": {"kind": "histogram"}}}, "$.distributions[...]"),
        ({"skew": {"parity": [{"feature": "f", "checked": 1}]}}, "mismatched"),
        ({"surprise": 1}, "surprise"),
        ({"notes": {"qualty": "typo"}}, "qualty"),
        ({"format": 99}, "newer than this Stalwart reads"),
        ({"until": "2024-04-30T00:00:00Z"}, "is before since"),
    ],
)
def test_a_wrong_document_is_refused_naming_what_is_wrong(change: dict[str, Any], field: str) -> None:
    """Reading a document checks every field and names the first wrong one."""
    with pytest.raises(ConfigError) as info:
        ReportDocument.from_dict(empty_document() | change)
    assert field in info.value.message


def test_columns_sort_drifted_first_by_how_far_past_the_threshold() -> None:
    """Drifted first; a test-based column (threshold on its p-value) ranks by how far its
    p-value is below the threshold, the others by score over threshold."""
    def col(name: str, score: float, threshold: float, drifted: bool, p: float | None = None) -> ColumnDrift:
        return ColumnDrift(column=name, kind="numeric", method="ks" if p is not None else "psi", score=score, threshold=threshold, drifted=drifted, p_value=p)

    columns = [
        col("stable-close", 0.09, 0.1, False),
        col("psi-twice", 0.2, 0.1, True),
        col("ks-tiny-p", 0.3, 0.05, True, p=1e-6),
        col("stable-far", 0.01, 0.1, False),
        col("ks-stable", 0.01, 0.05, False, p=0.5),
    ]
    assert [c.column for c in sorted_columns(columns)] == ["ks-tiny-p", "psi-twice", "stable-close", "ks-stable", "stable-far"]


def test_alerts_sort_firing_first_then_by_severity_then_newest() -> None:
    """Firing before pending before resolved; critical before warning before info."""
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)

    def alert(name: str, state: str, severity: str, hour: int) -> AlertEntry:
        return AlertEntry(name=name, severity=severity, state=state, started_at=t0 + dt.timedelta(hours=hour))

    alerts = [
        alert("resolved-critical", "resolved", "critical", 1),
        alert("firing-info", "firing", "info", 2),
        alert("firing-critical-old", "firing", "critical", 1),
        alert("firing-critical-new", "firing", "critical", 3),
        alert("pending-warning", "pending", "warning", 4),
    ]
    assert [a.name for a in sorted_alerts(alerts)] == [
        "firing-critical-new", "firing-critical-old", "firing-info", "pending-warning", "resolved-critical",
    ]


def test_quality_metrics_in_the_usual_order_and_their_newest_values() -> None:
    """Known metrics in their usual order, others after; the newest non-null value wins."""
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    buckets = [
        QualityBucket(bucket=t0, predictions=10, labelled=10, realised={"zeta": 1.0, "f1": 0.7, "accuracy": 0.9}),
        QualityBucket(bucket=t0 + dt.timedelta(hours=1), predictions=10, labelled=0, realised={"accuracy": None}, estimated={"accuracy": 0.8}),
    ]
    assert quality_metrics(buckets) == ["accuracy", "f1", "zeta"]
    assert latest(buckets, "accuracy", "realised") == 0.9
    assert latest(buckets, "accuracy", "estimated") == 0.8
    assert latest(buckets, "roc_auc", "realised") is None
