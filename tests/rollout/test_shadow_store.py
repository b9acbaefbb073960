"""Shadow pairs in the database: every replica's rows and minutes merge on read into the
report one process would have built over the same pairs; a bucket written again merges
into its row; reads are bounded; answers are read as the deployment's quality says."""

from __future__ import annotations

import random
import time

import pytest

from stalwart.errors import ConfigError
from stalwart.monitoring.quality import OutputReading
from stalwart.registry import Registry
from stalwart.rollout import shadow_store
from stalwart.rollout.paired import Answer, PairedReport
from stalwart.rollout.shadow_pairs import PairBuckets, answer_of
from stalwart.rollout.shadow_store import read_pairs, write_buckets

READING = OutputReading()
T0 = 1_700_000_040  # a minute's start


def _rows(rng: random.Random) -> tuple[list[dict[str, object]], list[dict[str, object]] | None]:
    amount = rng.random() * 100
    primary = {"predict": "fraud" if amount >= 50 else "ok", "predict_proba": [1 - amount / 100, amount / 100]}
    if rng.random() < 0.05:
        return [primary], None  # the shadow failed
    shadow = {"predict": "fraud" if amount >= 45 else "ok", "predict_proba": [1 - amount / 90, min(1.0, amount / 90)]}
    return [primary], [shadow]


def test_replicas_and_minutes_merge_into_one_processs_report(any_registry: Registry) -> None:
    """Pairs written by two replicas over three minutes, one bucket flushed twice, read
    back as the report of all of them: counts, agreement, confusion and score moments
    exact, quantiles within the sketch's error, model counts and per-minute counts summed."""
    db = any_registry.db
    rng = random.Random(3)
    reference = PairedReport()
    replicas = {"a": PairBuckets(), "b": PairBuckets()}
    per_minute = {T0 + 60 * m: 0 for m in range(3)}
    for i in range(3000):
        replica = "a" if i % 2 else "b"
        minute = T0 + 60 * (i % 3)
        primary, shadow = _rows(rng)
        latencies = (0.001 + rng.random() / 100, 0.002 + rng.random() / 100)
        replicas[replica].add(("fraud", "next", minute), READING, primary, shadow, 1, latencies, ("fraud:2", "fraud:3"))
        theirs = answer_of(shadow[0], READING, latencies[1]) if shadow else Answer(latency=latencies[1], error=True)
        reference.add(answer_of(primary[0], READING, latencies[0]), theirs)
        per_minute[minute] += 1
        if i == 1500:  # replica a flushes halfway: its buckets are written again later, merged
            write_buckets(db, replicas["a"].take(), "a")
    for name, buckets in replicas.items():
        write_buckets(db, buckets.take(), name)
    found = read_pairs(db, "fraud", since=T0, until=T0 + 180)
    got = found["next"]
    report = got.report
    assert report.pairs == reference.pairs == 3000
    assert (report.errors_primary, report.errors_shadow) == (0, reference.errors_shadow)
    assert report.agreement == reference.agreement
    assert report.confusion() == reference.confusion()
    assert report.score_difference_mean == pytest.approx(reference.score_difference_mean)
    assert report.score_test().sd == pytest.approx(reference.score_test().sd)
    for side in ("primary", "shadow"):
        ours, theirs = report.latency_quantiles(side), reference.latency_quantiles(side)
        assert ours is not None
        assert theirs is not None
        assert ours == pytest.approx(theirs, rel=0.1)
    assert got.models == {"primary": {"fraud:2": 3000}, "shadow": {"fraud:3": 3000}}
    assert [(m.start, m.pairs) for m in got.minutes] == sorted(per_minute.items())
    assert sum(m.agreed for m in got.minutes) == report.agreed
    # One row per replica and minute: the bucket written twice was merged, not duplicated.
    with db.read() as conn:
        rows = conn.exec_driver_sql("SELECT COUNT(*) FROM shadow_pairs").scalar_one()
    assert rows == 6


def test_reads_keep_to_the_range_and_the_shadow_asked_for(any_registry: Registry) -> None:
    """Minutes outside [since, until) and other shadows or deployments are left out."""
    db = any_registry.db
    buckets = PairBuckets()
    row = [{"predict": 1, "predict_proba": [0.2, 0.8]}]
    for deployment, shadow, minute in [("fraud", "next", T0), ("fraud", "next", T0 + 60), ("fraud", "other", T0),
                                       ("payments", "next", T0)]:
        buckets.add((deployment, shadow, minute), READING, row, row, 1, (0.001, 0.002), ("m:1", "m:2"))
    write_buckets(db, buckets.take(), "r")
    assert read_pairs(db, "fraud", since=T0, until=T0 + 60)["next"].report.pairs == 1
    assert sorted(read_pairs(db, "fraud", since=T0, until=T0 + 120)) == ["next", "other"]
    assert list(read_pairs(db, "fraud", since=T0, until=T0 + 120, shadow="other")) == ["other"]
    assert read_pairs(db, "nobody", since=T0, until=T0 + 120) == {}
    with pytest.raises(ConfigError, match=r"until .* is before since"):
        read_pairs(db, "fraud", since=T0 + 60, until=T0)


def test_a_read_over_too_many_rows_is_refused(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows one read merges are bounded: past the bound, a ConfigError says to narrow
    the range, before any row is merged."""
    buckets = PairBuckets()
    row = [{"predict": 1}]
    for m in range(5):
        buckets.add(("fraud", "next", T0 + 60 * m), READING, row, row, 1, (0.001, 0.002), ("m:1", "m:2"))
    write_buckets(registry.db, buckets.take(), "r")
    monkeypatch.setattr(shadow_store, "MAX_ROWS_READ", 4)
    with pytest.raises(ConfigError, match=r"5 shadow pair rows in this range .* narrow the range"):
        read_pairs(registry.db, "fraud", since=T0, until=T0 + 600)


def test_buckets_kept_while_the_database_refuses_are_bounded() -> None:
    """Buckets the writer could not write are put back, merged with newer pairs; past the
    bound the oldest minutes go, and their pairs are counted."""
    buckets = PairBuckets(max_buckets=2)
    row = [{"predict": 1}]
    for m in range(2):
        buckets.add(("fraud", "next", T0 + 60 * m), READING, row, row, 1, (0.001, 0.002), ("m:1", "m:2"))
    taken = buckets.take()
    buckets.add(("fraud", "next", T0 + 60), READING, row, row, 1, (0.001, 0.002), ("m:1", "m:2"))
    buckets.add(("fraud", "next", T0 + 120), READING, row, row, 1, (0.001, 0.002), ("m:1", "m:2"))
    buckets.restore(taken)
    assert len(buckets) == 2
    assert buckets.dropped_pairs == 1  # the oldest minute, T0
    kept = buckets.take()
    assert kept[("fraud", "next", T0 + 60)].report.pairs == 2
    assert kept[("fraud", "next", T0 + 60)].models == {"primary": {"m:1": 2}, "shadow": {"m:2": 2}}


def test_answers_are_read_as_the_deployments_quality_declares() -> None:
    """Class from predict, score from the first score output (a pair of probabilities: the
    positive class's), a float prediction without scores as a regression's value."""
    row = {"predict": "fraud", "predict_proba": [0.25, 0.75]}
    assert (answer_of(row, READING).label, answer_of(row, READING).score) == ("fraud", 0.75)
    declared = OutputReading.from_mapping({"classes": ["fraud", "ok"], "positive": "fraud"}, "deployment 'x'")
    assert answer_of(row, declared).score == 0.25
    named = OutputReading.from_mapping({"score": "risk", "predicted": "label"}, "deployment 'x'")
    assert (answer_of({"label": 1, "risk": 0.4}, named).label, answer_of({"label": 1, "risk": 0.4}, named).score) == (1, 0.4)
    regression = answer_of({"predict": 12.5}, READING)
    assert (regression.label, regression.score) == (None, 12.5)
    assert answer_of({"predict": 2, "predict_proba": [0.1, 0.2, 0.7]}, READING).score is None  # three classes: compared as classes
    assert answer_of({"predict": 1.0, "predict_proba": [float("nan"), 0.5]}, READING).score == 0.5
    assert answer_of({"predict": float("inf")}, READING).score is None


def test_pairs_of_a_request_with_several_rows_and_a_failed_side(registry: Registry) -> None:
    """Each row is a pair; a failed side fails every row; latency counts once per request."""
    buckets = PairBuckets()
    rows = [{"predict": "a"}, {"predict": "b"}, {"predict": "c"}]
    buckets.add(("fraud", "next", T0), READING, rows, rows, 3, (0.01, 0.02), ("m:1", "m:2"))
    buckets.add(("fraud", "next", T0), READING, rows, None, 3, (0.01, 0.5), ("m:1", None))
    write_buckets(registry.db, buckets.take(), "r", now=time.time())
    got = read_pairs(registry.db, "fraud", since=T0, until=T0 + 60)["next"]
    assert got.report.pairs == 6
    assert got.report.errors_shadow == 3
    assert got.report.agreement == 1.0
    latency = got.report.to_dict()["summary"]["latency"]
    assert latency["primary"]["count"] == latency["shadow"]["count"] == 2
    assert got.report.latency_quantiles("shadow", (0.0, 1.0)) == [0.02, 0.5]
    assert got.models == {"primary": {"m:1": 2}, "shadow": {"m:2": 1}}
