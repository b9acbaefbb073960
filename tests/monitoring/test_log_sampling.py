"""Sampling the prediction log: every matching record read once across pages (records that
share an instant included), each equally likely to be drawn, and the scan bounded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.monitoring.log_sampling import sample_records
from stalwart.monitoring.records import encode_record
from stalwart.monitoring.sinks import Query
from stalwart.monitoring.sinks.sql import SqlSink
from tests.monitoring.records_factory import T0, full_record


@pytest.fixture
def sink(settings: Settings) -> Iterator[SqlSink]:
    opened = SqlSink.from_settings(settings)
    # 2,600 records; 1,500 of them share four instants, one of which spans a page boundary
    # (the store pages 1,000 at a time, newest first).
    records = [
        full_record(i, time_ns=T0 + (i // 500 if i < 1500 else i) * 1_000, deployment="fraud" if i % 10 else "other")
        for i in range(2_600)
    ]
    opened.write(records, [encode_record(r) for r in records])
    yield opened
    opened.close()


def test_a_sample_as_large_as_the_log_holds_every_record_once(sink: SqlSink) -> None:
    """Asking for more than there is returns every matching record exactly once, oldest
    first, across pages whose boundaries fall inside a run of records at one instant."""
    drawn = sample_records(sink, Query(deployment="fraud"), 5_000)
    ids = [r.request_id for r in drawn.records]
    assert len(ids) == len(set(ids)) == 2_340 == drawn.scanned == drawn.eligible
    assert not drawn.truncated
    assert [r.time_ns for r in drawn.records] == sorted(r.time_ns for r in drawn.records)


def test_each_record_is_equally_likely(sink: SqlSink) -> None:
    """Over many seeds, the oldest and the newest records are drawn about equally often
    (a reservoir, not the newest page)."""
    counts: Counter[str] = Counter()
    runs = 40
    for seed in range(runs):
        drawn = sample_records(sink, Query(deployment="fraud", since_ns=T0 + 1_600 * 1_000), 300, seed=seed)
        counts.update(r.request_id for r in drawn.records)
    eligible = sum(1 for i in range(1_600, 2_600) if i % 10)
    expected = runs * 300 / eligible  # 13.3 draws per record
    oldest = [f"req-{i:06d}" for i in range(1_601, 1_700) if i % 10]
    newest = [f"req-{i:06d}" for i in range(2_500, 2_600) if i % 10]
    assert sum(counts[r] for r in oldest) / len(oldest) == pytest.approx(expected, rel=0.15)
    assert sum(counts[r] for r in newest) / len(newest) == pytest.approx(expected, rel=0.15)


def test_keep_and_max_scan_bound_what_is_read(sink: SqlSink) -> None:
    """``keep`` filters without counting against the sample; ``max_scan`` stops the scan
    at the newest records read and says so."""
    odd = sample_records(sink, Query(deployment="fraud"), 5_000, keep=lambda r: int(r.request_id[-1]) % 2 == 1)
    assert odd.eligible == len(odd.records) == 1_300  # last digits 1, 3, 5, 7, 9 of 1-9
    assert odd.scanned == 2_340
    capped = sample_records(sink, Query(deployment="fraud"), 5_000, max_scan=1_200)
    assert (capped.scanned, len(capped.records), capped.truncated) == (1_200, 1_200, True)
    # The newest 990 matching records, then 210 of the 450 at the next instant back.
    assert sum(r.time_ns >= T0 + 1_500 * 1_000 for r in capped.records) == 990
    assert {r.time_ns for r in capped.records if r.time_ns < T0 + 1_500 * 1_000} == {T0 + 2_000}


def test_a_sample_size_out_of_bounds_is_refused(sink: SqlSink) -> None:
    with pytest.raises(ConfigError, match="sample"):
        sample_records(sink, Query(), 0)
    with pytest.raises(ConfigError, match="sample"):
        sample_records(sink, Query(), 10**9)
