"""A full disk under the prediction log's spool (a real ENOSPC from a small tmpfs): in
``async`` mode nothing is lost and the hash chain stays whole once space returns; in
``sync`` mode the requests that could not be recorded fail, and only they are missing."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.monitoring.records import PredictionRecord, verify_chain
from stalwart.monitoring.sinks import PredictionStore, Query, open_sink
from stalwart.monitoring.spool import Spool
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import start_server

SAMPLE = pd.DataFrame({"x": [float(i) for i in range(60)]})
V2 = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [4.0]}]}


@pytest.fixture
def spool_disk(home: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted where the server's spool goes (``<home>/spool``; needs root)."""
    mount = home / "spool"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs to fill ({done.stderr.strip()}); this test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    """Fill the file system to its last byte; the filler's path (remove it to free the space)."""
    filler = mount / f".filler-{uuid.uuid4().hex[:6]}"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def _records(settings: Settings) -> list[PredictionRecord]:
    sink = open_sink(settings)
    assert isinstance(sink, PredictionStore)
    try:
        records = sink.query(Query(limit=100_000))
        for chain in sink.chains():
            assert verify_chain(sink.chain(chain)) is None, "the chain has a gap"
        return records
    finally:
        sink.close()


def test_async_records_wait_out_a_full_disk_and_none_is_lost(settings: Settings, registry: Registry, spool_disk: Path) -> None:
    """Requests answered while the spool's disk is full are all recorded once it has room
    again, exactly once each, in an unbroken chain."""
    set_mode("steady", "ok")
    registry.register("steady", Switchable("steady"), sample=SAMPLE)
    app = create_app(settings, registry=registry)
    with start_server(settings, app=app) as server:
        before = [server.post("/v2/models/steady/infer", json=V2) for _ in range(5)]
        assert app.state.predictions.wait_idle(10)
        filler = _fill(spool_disk)
        during = [server.post("/v2/models/steady/infer", json=V2) for _ in range(40)]
        assert not app.state.predictions.wait_idle(0.5), "records cannot be on a full disk yet"
        filler.unlink()
        after = [server.post("/v2/models/steady/infer", json=V2) for _ in range(5)]
        assert app.state.predictions.wait_idle(20)
    answered = [r for r in (*before, *during, *after) if r.status_code == 200]
    assert len(answered) == 50
    stored = [r.request_id for r in _records(settings)]
    assert sorted(stored) == sorted(r.headers["x-request-id"] for r in answered)


def test_sync_requests_fail_while_the_disk_is_full_and_the_chain_stays_whole(home: Path, registry: Registry, spool_disk: Path) -> None:
    """With STALWART_PREDICTION_LOG_MODE=sync a request whose record cannot be made durable
    fails with 503 and leaves no record; the ones before and after are recorded, and the
    chain links them without a gap."""
    settings = Settings(home=home, registry_poll_seconds=0.2, python_modules=("tests",), prediction_log_mode="sync")
    set_mode("steady", "ok")
    registry.register("steady", Switchable("steady"), sample=SAMPLE)
    app = create_app(settings, registry=registry)
    with start_server(settings, app=app) as server:
        before = server.post("/v2/models/steady/infer", json=V2)
        filler = _fill(spool_disk)
        # A record may still fit in the spool file's last page; a few more cannot.
        during = [server.post("/v2/models/steady/infer", json=V2) for _ in range(10)]
        filler.unlink()
        after = server.post("/v2/models/steady/infer", json=V2)
        assert app.state.predictions.wait_idle(20)
    assert (before.status_code, after.status_code) == (200, 200)
    failed = [r for r in during if r.status_code != 200]
    assert failed
    assert all(r.status_code == 503 and "disk" in r.json()["error"] for r in failed)
    answered = [before, *(r for r in during if r.status_code == 200), after]
    stored = {r.request_id for r in _records(settings)}
    assert stored == {r.headers["x-request-id"] for r in answered}


def test_an_append_the_disk_refuses_leaves_the_spool_as_it_was(spool_disk: Path) -> None:
    """A partly written batch is cut off: the records appended later read back whole, right
    after the last ones before the failure."""
    spool = Spool(spool_disk / "s")
    try:
        spool.append([b'{"n": 1}'])
        filler = _fill(spool_disk)
        os.truncate(filler, filler.stat().st_size - 4096)  # a page: room for part of the next batch only
        with pytest.raises(OSError, match="No space left"):
            spool.append([b'{"n": 2, "pad": "' + b"x" * 20_000 + b'"}'])
        filler.unlink()
        spool.append([b'{"n": 3}'])
        payloads, _ = spool.read_pending(10)
        assert payloads == [b'{"n": 1}', b'{"n": 3}']
    finally:
        spool.close()
