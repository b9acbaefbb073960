"""Source readers on the online path: external lookups (CallableSource)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from stalwart.durations import NS
from stalwart.features import OnlineFeatures
from stalwart.features.readers import make_reader
from stalwart.features.timecodec import to_ns
from stalwart.project import CallableSource, Entity, FeatureSet, FileSource, Latest
from stalwart.resilience import Guard, GuardConfig

ACCOUNT = Entity("account", keys=["account_id"])
_BLOCK = threading.Event()


def lookup(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """A blocking client of a remote service (it hangs while _BLOCK is set, up to 5 s)."""
    deadline = time.monotonic() + 5
    while _BLOCK.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)
    return {key: {"score": float(key[0]) / 2} for key in keys}


def _online(tmp_path: Path, clock: Any, guard: Guard | None = None) -> OnlineFeatures:
    offline = FileSource("scores_history", path=str(tmp_path / "scores.csv"), entity=ACCOUNT, timestamp="ts")
    live = CallableSource("scores", fn=lookup, entity=ACCOUNT, offline=offline)
    fs = FeatureSet("scores", entity=ACCOUNT, source=live, features=[Latest("score", column="score", default=-1.0)], cache=False)
    guards = {"scores": guard} if guard is not None else None
    return OnlineFeatures([fs["score"]], {"scores": make_reader(live, None)}, guards=guards, clock=clock)


def _late_instants(n: int) -> list[int]:
    """Instants (ns) that float seconds round to a later instant."""
    found: list[int] = []
    candidate = 1_764_000_000_123_456_789
    while len(found) < n:
        if int(to_ns(np.asarray([candidate / NS]))[0]) > candidate:
            found.append(candidate)
        candidate += 97
    return found


async def test_a_lookup_value_is_the_latest_value_at_every_instant(tmp_path: Path) -> None:
    """A CallableSource's current value is what a Latest feature serves, whatever the
    instant: its rows are stamped at exactly the request's time, never rounded past it."""
    instants = iter(_late_instants(20))
    online = _online(tmp_path, clock=lambda: next(instants))
    for _ in range(20):
        resolved = await online.resolve([{"account_id": 7}])
        assert resolved.columns["score"].tolist() == [3.5]
        assert resolved.degraded == []


async def test_a_blocking_lookup_leaves_the_event_loop_free_and_times_out(tmp_path: Path) -> None:
    """A plain (blocking) lookup function runs off the event loop: while it hangs, other
    requests are served, and the guard's time limit answers with the default on time."""
    guard = Guard("scores", GuardConfig.model_validate({"timeout": {"timeout_duration": "100ms"}}))
    online = _online(tmp_path, clock=time.time_ns, guard=guard)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    _BLOCK.set()
    try:
        started = time.monotonic()
        resolved = await online.resolve([{"account_id": 7}])
        elapsed = time.monotonic() - started
    finally:
        _BLOCK.clear()
        task.cancel()
    assert elapsed < 0.5
    assert resolved.columns["score"].tolist() == [-1.0]
    assert resolved.degraded[0]["reason"] == "CallTimeout"
    assert ticks >= 5  # the loop kept running while the lookup hung


def test_a_file_source_is_a_file_or_a_directory_of_parquet_files(tmp_path: Path) -> None:
    """A FileSource names a .parquet/.csv file or a directory (trailing '/' or no suffix);
    a directory's files are read in path order with their hive partitions as strings,
    hidden files left out; any other suffix is refused at declaration."""
    import pandas as pd
    import pytest

    from stalwart.errors import ConfigError

    assert not FileSource("a", path="tx.parquet", entity=ACCOUNT, timestamp="ts").is_dataset
    assert FileSource("b", path="data/tx/", entity=ACCOUNT, timestamp="ts").is_dataset
    assert FileSource("c", path="data/tx", entity=ACCOUNT, timestamp="ts").is_dataset
    with pytest.raises(ConfigError, match=r"tx\.json is neither \.parquet nor \.csv, nor a directory"):
        FileSource("d", path="tx.json", entity=ACCOUNT, timestamp="ts")
    for part, first in (("region=b", 10), ("region=a", 0)):
        (tmp_path / part).mkdir()
        pd.DataFrame({"account_id": [first, first + 1], "ts": [1.0, 1.0], "score": [0.5, 0.25]}).to_parquet(tmp_path / part / "x.parquet")
    (tmp_path / "region=a" / ".tmp.parquet").write_bytes(b"half-written")
    source = FileSource("d", path=str(tmp_path) + "/", entity=ACCOUNT, timestamp="ts")
    rows = make_reader(source, None).read_all(["score", "region"])
    assert rows.keys[0].tolist() == [0, 1, 10, 11]
    assert rows.columns["region"].tolist() == ["a", "a", "b", "b"]
    assert rows.order.tolist() == [0, 1, 2, 3]
