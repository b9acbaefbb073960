"""A uniform random sample of the prediction log, in bounded memory.

:func:`sample_records` pages through a store's matching records, newest first, and keeps a
reservoir (Vitter's algorithm R): after ``n`` records have been seen, each of them is in the
sample with probability ``k / n``, whatever the order the store returns them in. Memory
holds one page and the sample; time grows with the records read, which ``max_scan`` bounds
(the sample is then uniform over the newest ``max_scan`` matching records, and
:attr:`LogSample.truncated` says so).

>>> from stalwart.monitoring.sinks import Query
>>> sample = sample_records(store, Query(deployment="fraud", status=200), 500, seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stalwart.errors import ConfigError
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks import PredictionStore, Query

__all__ = ["MAX_SAMPLE", "LogSample", "sample_records"]

MAX_SAMPLE = 100_000
"""The most records one sample may hold (each is decoded and kept in memory)."""
_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class LogSample:
    """The sampled records (oldest first) and how many matching records they came from."""

    records: list[PredictionRecord]
    scanned: int  # records matching the query that were read
    eligible: int  # of those, the ones ``keep`` kept: the sample is uniform over these
    truncated: bool  # max_scan was reached: older matching records were not read


def sample_records(
    store: PredictionStore,
    query: Query,
    k: int,
    *,
    seed: int = 0,
    max_scan: int = 1_000_000,
    keep: Callable[[PredictionRecord], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> LogSample:
    """Up to ``k`` records drawn uniformly from those matching ``query`` (its ``limit`` is
    ignored) and ``keep`` (when given), reading at most ``max_scan`` records that match the
    query. ``progress`` is called with the count read after each page."""
    if not 1 <= k <= MAX_SAMPLE:
        raise ConfigError(f"sample: {k} is not between 1 and {MAX_SAMPLE}; ask for fewer records")
    if max_scan < 1:
        raise ConfigError(f"max_scan: {max_scan} must be at least 1")
    rng = np.random.default_rng(seed)
    reservoir: list[PredictionRecord] = []
    seen = read = 0
    until = query.until_ns
    boundary: set[str] = set()  # ids already read at the time the next page starts from
    truncated = False
    while True:
        page = store.query(dataclasses.replace(query, until_ns=until, limit=_PAGE))
        fresh = [r for r in page if r.request_id not in boundary]
        for record in fresh:
            if read >= max_scan:
                truncated = True
                break
            read += 1
            if keep is not None and not keep(record):
                continue
            seen += 1
            if len(reservoir) < k:
                reservoir.append(record)
            else:
                slot = int(rng.integers(0, seen))
                if slot < k:
                    reservoir[slot] = record
        if progress is not None:
            progress(read)
        if truncated or len(page) < _PAGE:
            break
        oldest = page[-1].time_ns
        if page[0].time_ns == oldest:
            # A whole page at one instant: step past it rather than read it forever.
            until, boundary = oldest, set()
        else:
            # Records at the oldest instant may continue on the next page: read that instant
            # again (until is exclusive), skipping the ones already read.
            until = oldest + 1
            boundary = {r.request_id for r in page if r.time_ns == oldest}
    reservoir.sort(key=lambda r: (r.time_ns, r.request_id))
    return LogSample(reservoir, read, seen, truncated)
