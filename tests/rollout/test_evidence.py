"""Rollout evidence read from the prediction log and its labels, on SQLite and PostgreSQL:
counts and rates per arm are exact, the watermark neither skips nor double counts, a
controller resumes from its saved evidence, labels give accuracy per arm, and the result
drives the judge to a rollback for a clearly worse canary and to no verdict on too little
data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.feedback import FeedbackItem, store_feedback
from stalwart.monitoring.prediction_log import PredictionLog
from stalwart.monitoring.quality import OutputReading
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.rollout.evidence import (
    SCORES_PER_RECORD,
    Evidence,
    Tally,
    accuracy,
    default_rules,
    latency_threshold,
    observations,
)
from stalwart.rollout.judge import Judge, MetricRule
from stalwart.rollout.sequential import Moments, Proportion
from stalwart.storage import Database
from tests.monitoring.records_factory import T0, full_record

MS = 1_000_000  # ns


@pytest.fixture
def db(any_db_settings: Settings) -> Iterator[Database]:
    database = Database(any_db_settings.resolved_db_url())
    yield database
    database.dispose()


def _record(i: int, arm: str | None, **changes: Any) -> PredictionRecord:
    """A full record (features, entities, two rows) of request ``i`` to ``arm`` at
    ``T0 + i ms``; its scores (``probability``) are ``[0.25, 0.75]`` unless changed."""
    fields: dict[str, Any] = {
        "variant": arm, "outputs": {"probability": [0.25, 0.75], "label": [0, 1]}, "latency_ms": 10.0, "error": None,
    }
    fields.update(changes)
    return full_record(i, **fields)


def _write(db: Database, records: list[PredictionRecord]) -> None:
    SqlSink(db).write(records, None)


def test_counts_and_rates_per_arm_are_exact(db: Database) -> None:
    """Each arm counts answered requests, 5xx as errors, 422 as violations, degraded
    answers and flagged inputs; other 4xx are excluded from every metric; records of other
    variants, other deployments and before the window are not read. Log-latency and score
    moments equal numpy's over the counted requests, and exceedances of the threshold are
    exact."""
    rng = np.random.default_rng(3)
    records: list[PredictionRecord] = []
    expected: dict[str, dict[str, Any]] = {}
    i = 1
    for arm, errors, rejected in (("primary", 7, 3), ("canary", 19, 11)):
        latencies = rng.lognormal(np.log(20.0), 0.5, 300)
        flagged, degraded, client = 13 if arm == "canary" else 5, 17 if arm == "canary" else 2, 23
        for k, latency in enumerate(latencies):
            changes: dict[str, Any] = {"latency_ms": float(latency)}
            if k < flagged:
                changes["validation"] = {"violations": 2, "rejected": 0, "flagged": {"amount": [0]}}
            if flagged <= k < flagged + degraded:
                changes["degraded"] = "fallback"
            records.append(_record(i, arm, **changes))
            i += 1
        for k in range(errors):
            status = (500, 503, 504)[k % 3]
            records.append(_record(i, arm, status=status, error="ModelError", outputs=None, latency_ms=5000.0))
            i += 1
        for _ in range(rejected):
            records.append(_record(i, arm, status=422, error="ValidationFailed", outputs=None, latency_ms=1.0))
            i += 1
        for k in range(client):
            status = (400, 401, 404, 408, 413, 429)[k % 6]
            records.append(_record(i, arm, status=status, error="RequestError", outputs=None, latency_ms=0.5))
            i += 1
        expected[arm] = {
            "requests": 300 + errors + rejected, "errors": errors, "degraded": degraded,
            "violations": flagged + rejected, "excluded": client, "latencies": latencies,
        }
    ignored = [
        _record(i + 1, "fallback", status=500), _record(i + 2, None), _record(i + 3, "shadow"),
        _record(i + 4, "canary", deployment="other", status=500), _record(0, "canary", time_ns=T0 - 1, status=500),
    ]
    _write(db, records + ignored)

    evidence = Evidence(T0, slow_ms=30.0)
    progress = evidence.advance(db, "fraud", T0 + 10_000 * MS)

    assert (progress.rows, progress.capped, progress.watermark_ns) == (len(records), False, T0 + 10_000 * MS)
    for arm, want in expected.items():
        tally = evidence.tallies[arm]
        counted = {name: getattr(tally, name) for name in ("requests", "errors", "degraded", "violations", "excluded")}
        assert counted == {name: want[name] for name in counted}, arm
        logs = np.log(want["latencies"] / 1000.0)
        assert tally.log_latency.n == 300
        assert tally.log_latency.total == pytest.approx(logs.sum(), rel=1e-12)
        assert tally.log_latency.total_sq == pytest.approx(np.dot(logs, logs), rel=1e-12)
        assert tally.slow == int(np.count_nonzero(want["latencies"] > 30.0))
        assert (tally.scores.n, tally.scores.mean) == (600, pytest.approx(0.5))
        summary = evidence.summary()[arm]
        assert summary["error_rate"] == want["errors"] / want["requests"]
        assert summary["violation_rate"] == want["violations"] / want["requests"]
        assert summary["degradation_rate"] == want["degraded"] / want["requests"]
    found = observations(evidence.tallies)
    assert found["error_rate"].canary == Proportion(300 + 19 + 11, 19)
    assert found["tail_latency"].primary == Proportion(300, evidence.tallies["primary"].slow)
    assert found["latency"].canary == evidence.tallies["canary"].log_latency


def test_client_errors_never_move_a_rate(db: Database) -> None:
    """A canary whose clients send many malformed requests (400, 404, 413) has the same
    error rate as a primary without them: the client's mistakes are counted aside."""
    records = [_record(n, arm) for n, arm in enumerate(["primary", "canary"] * 100, start=1)]
    records += [_record(300 + n, "canary", status=(400, 404, 413)[n % 3], outputs=None) for n in range(150)]
    records += [_record(500 + n, arm, status=500, outputs=None) for n, arm in enumerate(["primary", "canary"] * 5)]
    _write(db, records)

    evidence = Evidence(T0)
    evidence.advance(db, "fraud", T0 + 10**12)

    rates = {arm: evidence.summary()[arm]["error_rate"] for arm in ("primary", "canary")}
    assert rates == {"primary": 5 / 105, "canary": 5 / 105}
    assert (evidence.tallies["canary"].excluded, evidence.tallies["primary"].excluded) == (150, 0)


def test_the_watermark_never_double_counts_or_skips(tmp_path: Path, any_db_settings: Settings) -> None:
    """Records arrive through the prediction log's writer (spool, then the SQL sink) in
    several bursts, some sharing a nanosecond, a slow one arriving after faster ones that
    came later, while the controller looks again and again (some looks capped): in the
    end each arm's counts equal one read of everything, and no look counted a record twice."""
    db = Database(any_db_settings.resolved_db_url())
    log: PredictionLog[PredictionRecord] = PredictionLog(SqlSink(db), tmp_path / "spool", convert=lambda r: r)
    log.start()
    try:
        evidence = Evidence(T0)
        lag = 50 * MS
        bursts = [range(1, 400), range(400, 1_100), range(1_100, 1_500), range(1_500, 3_000)]
        written: list[PredictionRecord] = []
        for number, burst in enumerate(bursts):
            for i in burst:
                arm = "canary" if i % 3 == 0 else "primary"
                status = 500 if i % 11 == 0 else 200
                # Every fifth request shares its arrival nanosecond with the one before it.
                record = _record(i, arm, status=status, time_ns=T0 + (i - i % 5 // 4) * MS, request_id=f"r{i:05d}")
                written.append(record)
                log.submit(record)
            if number == 2:
                # A slow request that arrived early in this burst, written after the others.
                slow = _record(1, "canary", time_ns=T0 + 1_200 * MS, request_id="slow", latency_ms=900.0)
                written.append(slow)
                log.submit(slow)
            assert log.wait_idle(10)
            now = T0 + (burst[-1] + 1) * MS
            while evidence.advance(db, "fraud", now - lag, max_rows=350).capped:
                pass
        assert log.wait_idle(10)
        while evidence.advance(db, "fraud", T0 + 10**12, max_rows=350).capped:
            pass
    finally:
        log.close()

    whole = Evidence(T0)
    whole.advance(db, "fraud", T0 + 10**12)
    db.dispose()
    for arm in ("primary", "canary"):
        mine = [r for r in written if r.variant == arm]
        assert evidence.tallies[arm].requests == len(mine) == whole.tallies[arm].requests
        assert evidence.tallies[arm].errors == sum(r.status >= 500 for r in mine) == whole.tallies[arm].errors
        assert evidence.tallies[arm].log_latency.n == whole.tallies[arm].log_latency.n
        assert evidence.tallies[arm].log_latency.total == pytest.approx(whole.tallies[arm].log_latency.total, rel=1e-12)


def test_a_capped_read_advances_only_as_far_as_it_read(db: Database) -> None:
    """With 1,000 records and at most 300 per look, a look reads 300, says it was capped,
    and leaves the watermark at the last record it read, even where the cap falls between
    records of the same nanosecond; four looks read every record once."""
    records = [_record(i, "primary", time_ns=T0 + (i // 4) * MS, request_id=f"r{i:04d}") for i in range(1, 1_001)]
    _write(db, records)
    evidence = Evidence(T0)

    first = evidence.advance(db, "fraud", T0 + 10**12, max_rows=300)

    assert (first.rows, first.capped) == (300, True)
    assert first.watermark_ns == records[299].time_ns == records[300].time_ns  # the cap splits a nanosecond
    assert evidence.tallies["primary"].requests == 300
    looks = [evidence.advance(db, "fraud", T0 + 10**12, max_rows=300) for _ in range(3)]
    assert [(p.rows, p.capped) for p in looks] == [(300, True), (300, True), (100, False)]
    assert looks[-1].watermark_ns == T0 + 10**12
    assert evidence.tallies["primary"].requests == 1_000
    assert evidence.advance(db, "fraud", T0 + 10**12).rows == 0


def test_saved_evidence_resumes_to_the_same_sums(db: Database) -> None:
    """A controller that saves its evidence as JSON mid-way (a capped look included) and
    resumes from it ends with the counts and sums of one that never stopped; the restored
    evidence equals the saved one."""
    records = [_record(i, "canary" if i % 4 == 0 else "primary", latency_ms=1.0 + i % 37) for i in range(1, 2_001)]
    _write(db, records)
    straight = Evidence(T0, slow_ms=20.0)
    straight.advance(db, "fraud", T0 + 10**12)

    first = Evidence(T0, slow_ms=20.0)
    first.advance(db, "fraud", T0 + 800 * MS)
    first.advance(db, "fraud", T0 + 10**12, max_rows=500)
    saved = json.loads(json.dumps(first.to_dict()))
    resumed = Evidence.from_dict(saved)
    assert resumed.to_dict() == first.to_dict()
    assert resumed.advance(db, "fraud", T0 + 10**12).rows == 2_000 - 800 - 500

    for arm in ("primary", "canary"):
        got, want = resumed.tallies[arm], straight.tallies[arm]
        assert (got.requests, got.slow, got.log_latency.n, got.scores.n) == (want.requests, want.slow, want.log_latency.n, want.scores.n)
        assert got.log_latency.total == pytest.approx(want.log_latency.total, rel=1e-12)
        assert got.scores.total_sq == pytest.approx(want.scores.total_sq, rel=1e-12)
        assert got.latency_quantiles([0.5]) == pytest.approx(want.latency_quantiles([0.5]), abs=1.0)
    with pytest.raises(ConfigError, match="tally"):
        Evidence.from_dict({**saved, "tallies": {"primary": {"requests": "many"}}})


def test_tallies_merge_and_refuse_different_thresholds() -> None:
    """Tallies add up field by field; two counted over different slow thresholds do not."""
    a = Tally(requests=3, errors=1, log_latency=Moments.of([0.0, 1.0]), slow_ms=5.0)
    b = Tally(requests=2, degraded=1, log_latency=Moments.of([2.0]), slow_ms=5.0)
    merged = a.merge(b)
    assert (merged.requests, merged.errors, merged.degraded, merged.log_latency) == (5, 1, 1, Moments(3, 3.0, 5.0))
    assert Tally.from_dict(merged.to_dict()) == merged
    with pytest.raises(ConfigError, match="slow thresholds"):
        a.merge(Tally(slow_ms=6.0))


def test_accuracy_per_arm_joins_the_labels(db: Database) -> None:
    """Labels sent by request id make each arm's correct/labelled rows (two rows per
    request, the predicted class from ``predict``); unlabelled rows, predictions outside
    the window and other deployments do not count; the latest label of a row wins; a cap
    keeps the newest labelled rows per arm."""
    records, items = [], []
    for i in range(1, 201):
        arm = "canary" if i % 2 else "primary"
        predicted = [1, 0]
        records.append(_record(i, arm, outputs={"predict": predicted, "predict_proba": [[0.2, 0.8], [0.6, 0.4]]}))
        if i % 10 == 0:
            continue  # unlabelled
        wrong_second = arm == "canary" and i % 3 == 0
        items.append(FeedbackItem(label=1, request_id=f"req-{i:06d}", row=0))
        items.append(FeedbackItem(label=1 if wrong_second else 0, request_id=f"req-{i:06d}", row=1))
    records.append(_record(999, "canary", deployment="other", outputs={"predict": [1, 1]}))
    _write(db, records)
    early = [FeedbackItem(label=0, request_id=f"req-{i:06d}", row=0) for i in range(1, 201) if i % 10]
    store_feedback(db, early, now_ns=T0 + 10**9)
    store_feedback(db, [*items, FeedbackItem(label=0, request_id="req-000999")], now_ns=T0 + 2 * 10**9)  # latest win

    found = accuracy(db, "fraud", T0, T0 + 10**12)

    labelled = {arm: [i for i in range(1, 201) if (i % 2 == 1) == (arm == "canary") and i % 10] for arm in ("primary", "canary")}
    assert found["primary"] == Proportion(2 * len(labelled["primary"]), 2 * len(labelled["primary"]))
    wrong = sum(1 for i in labelled["canary"] if i % 3 == 0)
    assert found["canary"] == Proportion(2 * len(labelled["canary"]), 2 * len(labelled["canary"]) - wrong)
    window = accuracy(db, "fraud", T0 + 101 * MS, T0 + 200 * MS)
    assert window["primary"].n == 2 * sum(1 for i in labelled["primary"] if i > 100)
    newest = accuracy(db, "fraud", T0, T0 + 10**12, max_rows=20)
    assert newest["canary"].n == 20
    assert newest["canary"].events == 20 - sum(1 for i in labelled["canary"][-10:] if i % 3 == 0)


def test_a_regression_has_no_accuracy(db: Database) -> None:
    """Numeric predictions with numeric labels are never simply right: no accuracy."""
    _write(db, [_record(1, "canary", outputs={"predict": [1.5, 2.5]})])
    store_feedback(db, [FeedbackItem(label=1.5, request_id="req-000001")], now_ns=T0)
    assert accuracy(db, "fraud", T0, T0 + 10**12) == {"primary": Proportion(), "canary": Proportion()}


def test_a_clearly_worse_canary_fails_on_error_rate(db: Database) -> None:
    """3,000 requests per arm, the canary failing 8 % of them and the primary 1 %: the
    judge fails the canary on error_rate and recommends a rollback; the other metrics,
    alike in both arms, do not fail."""
    rng = np.random.default_rng(11)
    records = []
    for i in range(1, 6_001):
        arm = "canary" if i % 2 else "primary"
        failing = rng.uniform() < (0.08 if arm == "canary" else 0.01)
        latency = float(rng.lognormal(np.log(20.0), 0.3))
        records.append(
            PredictionRecord(
                request_id=f"r{i}", time_ns=T0 + i * MS, entrypoint="/v1", status=500 if failing else 200,
                latency_ms=latency, deployment="fraud", variant=arm, rows=1,
                outputs=None if failing else {"predict_proba": [[0.3, 0.7]]},
            )
        )
    _write(db, records)
    threshold = latency_threshold(db, "fraud", T0 + 10**12, window_ns=10**12)
    assert threshold is not None
    evidence = Evidence(T0, slow_ms=threshold)
    evidence.advance(db, "fraud", T0 + 10**12)

    rules = default_rules()
    judgement = Judge(rules).judge(evidence.observations(rules=rules), window=evidence.window())

    verdicts = {v.metric: v.decision for v in judgement.verdicts}
    assert verdicts["error_rate"] == "fail"
    assert judgement.recommendation == "rollback"
    assert all(verdicts[m] != "fail" for m in ("degradation_rate", "violation_rate", "latency", "tail_latency"))
    assert verdicts["accuracy"] == "inconclusive"  # no labels


def test_too_little_data_is_inconclusive(db: Database) -> None:
    """Fifty requests per arm, the canary failing half of them: every verdict is
    inconclusive (the minimum is 200 per arm) and the rollout continues."""
    _write(db, [_record(i, arm, status=500 if arm == "canary" and i % 4 == 2 else 200) for i, arm in enumerate(["primary", "canary"] * 50, 1)])
    evidence = Evidence(T0)
    evidence.advance(db, "fraud", T0 + 10**12)
    rules = default_rules(tail_latency=None)

    judgement = Judge(rules).judge(evidence.observations(rules=rules), window=evidence.window())

    assert {v.decision for v in judgement.verdicts} == {"inconclusive"}
    assert judgement.recommendation == "continue"
    assert evidence.tallies["canary"].errors == 25


def test_latency_threshold_is_the_primarys_recent_p99(db: Database) -> None:
    """The threshold is the p99 of the primary's answered requests in the window before
    the step: the canary's, failed ones and later ones do not count; too few gives None."""
    rng = np.random.default_rng(5)
    latencies = rng.lognormal(np.log(15.0), 0.6, 2_000)
    records = [_record(i, "primary", latency_ms=float(ms)) for i, ms in enumerate(latencies, 1)]
    records += [_record(3_000 + i, "canary", latency_ms=10_000.0) for i in range(100)]
    records += [_record(4_000 + i, "primary", status=504, latency_ms=10_000.0) for i in range(100)]
    records += [_record(10_000 + i, "primary", latency_ms=10_000.0) for i in range(100)]  # after the step starts
    _write(db, records)
    start = T0 + 5_000 * MS

    assert latency_threshold(db, "fraud", start) == pytest.approx(float(np.quantile(latencies, 0.99)))
    recent = latency_threshold(db, "fraud", start, max_rows=1_000)
    assert recent == pytest.approx(float(np.quantile(latencies[-1_000:], 0.99)))
    assert latency_threshold(db, "fraud", T0 + 500 * MS) is None  # 499 requests: too few
    with pytest.raises(ConfigError, match="quantile"):
        latency_threshold(db, "fraud", start, quantile=99)


def test_scores_follow_the_reading_and_are_bounded_per_record(tmp_path: Path) -> None:
    """The score is the declared output; without one, the first probability output (the
    positive class's column), else the first numeric output; one batch of 1,000 rows adds
    only its first SCORES_PER_RECORD rows."""
    db = Database(f"sqlite:///{tmp_path / 'scores.db'}")
    _write(db, [
        _record(1, "primary", outputs={"label": ["a", "b"], "margin": [2.0, 4.0], "risk": [0.5, 0.25]}),
        _record(2, "primary", outputs={"label": ["a"], "predict_proba": [[0.9, 0.1]], "risk": [0.75]}),
        _record(3, "canary", outputs={"predict": [1] * 1_000}),
    ])
    default = Evidence(T0)
    default.advance(db, "fraud", T0 + 10**12)
    declared = Evidence(T0)
    declared.advance(db, "fraud", T0 + 10**12, reading=OutputReading(score="risk"))
    db.dispose()

    assert default.tallies["primary"].scores == Moments.of([2.0, 4.0, 0.1])
    assert declared.tallies["primary"].scores == Moments.of([0.5, 0.25, 0.75])
    assert default.tallies["canary"].scores == Moments(SCORES_PER_RECORD, float(SCORES_PER_RECORD), float(SCORES_PER_RECORD))


def test_summary_reports_latency_quantiles_and_score_divergence(db: Database) -> None:
    """The summary's p50/p99 are the arm's latency quantiles (exact at 150 requests), and a
    canary whose scores moved shows a larger divergence from the primary than one whose
    scores did not."""
    rng = np.random.default_rng(9)
    primary_ms = rng.lognormal(np.log(20.0), 0.5, 150)
    records = [_record(i, "primary", latency_ms=float(ms), outputs={"score": [float(s)]}) for i, (ms, s) in enumerate(zip(primary_ms, rng.beta(2, 5, 150), strict=True), 1)]
    records += [_record(1_000 + i, "canary", outputs={"score": [float(s)]}) for i, s in enumerate(rng.beta(5, 2, 150))]
    _write(db, records)
    evidence = Evidence(T0)
    evidence.advance(db, "fraud", T0 + 10**12)

    summary = evidence.summary()

    latency = summary["primary"]["latency_ms"]
    assert latency["p50"] in primary_ms
    assert latency["p99"] in primary_ms
    assert abs(np.mean(primary_ms <= latency["p99"]) - 0.99) < 0.01
    assert latency["geometric_mean"] == pytest.approx(math.exp(np.mean(np.log(primary_ms))))
    moved = summary["canary"]["divergence"]
    assert moved is not None
    assert (moved["ks"] > 0.4, moved["js"] > 0.3, moved["psi"] > 1.0) == (True, True, True)
    alike = Tally.from_dict(evidence.tallies["primary"].to_dict()).summary(evidence.tallies["primary"])["divergence"]
    assert alike == {"js": 0.0, "psi": 0.0, "ks": 0.0, "rank_error": 0.0}
    assert summary["primary"]["divergence"] is None
    json.dumps(summary)  # ready for the audit log


def test_default_rules_take_overrides_by_name() -> None:
    """A rule is replaced or dropped by its name; an unknown name, or a replacement named
    otherwise, is refused; observations keep only the metrics a rule set judges."""
    rules = default_rules(latency=MetricRule.latency("latency", max_ratio_rise=0.2), tail_latency=None)
    names = [rule.name for rule in rules]
    assert names == ["error_rate", "degradation_rate", "violation_rate", "latency", "score_shift", "accuracy"]
    assert rules[3].tolerance == pytest.approx(math.log(1.2))
    with pytest.raises(ConfigError, match="no rule named"):
        default_rules(p99=None)
    with pytest.raises(ConfigError, match="named 'errors'"):
        default_rules(error_rate=MetricRule.rate("errors", max_rise=0.01))
    tallies = {"primary": Tally(slow_ms=9.0), "canary": Tally(slow_ms=9.0)}
    assert set(observations(tallies, {"canary": Proportion(3, 2)}, rules=rules)) == set(names)
    assert "tail_latency" in observations(tallies)
    assert "tail_latency" not in observations({"primary": Tally(), "canary": Tally()})
