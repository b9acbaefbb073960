"""The prediction log's spool: an append-only, crash-safe queue on disk."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stalwart.monitoring.spool import Spool


def _payloads(n: int, start: int = 0) -> list[bytes]:
    return [f'{{"request_id": "r{i}"}}'.encode() for i in range(start, start + n)]


def test_records_come_back_in_order_until_delivered(tmp_path: Path) -> None:
    """What was appended is read back in order from the cursor; advancing the cursor past
    delivered records survives reopening the spool."""
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(5))
    payloads, ends = spool.read_pending(3)
    assert payloads == _payloads(3)
    spool.advance(ends[-1])
    spool.close()
    again = Spool(tmp_path / "s")
    payloads, ends = again.read_pending(100)
    assert payloads == _payloads(2, start=3)
    again.advance(ends[-1])
    assert not again.pending()
    again.close()


def test_segments_rotate_and_delivered_ones_are_removed(tmp_path: Path) -> None:
    """Past the segment size a new segment starts; reading crosses segments; segments wholly
    before the cursor are deleted."""
    spool = Spool(tmp_path / "s", segment_bytes=200)
    for i in range(10):
        spool.append(_payloads(3, start=3 * i))
    assert len(list((tmp_path / "s").glob("*.seg"))) > 3
    payloads, ends = spool.read_pending(1000)
    assert payloads == _payloads(30)
    spool.advance(ends[-1])
    assert len(list((tmp_path / "s").glob("*.seg"))) == 1
    spool.close()


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    """A crash in the middle of a write leaves half a frame: reopening keeps every whole
    record before it, drops the torn one, and appends after them."""
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(4))
    spool.close()
    segment = next((tmp_path / "s").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])
    again = Spool(tmp_path / "s")
    again.append(_payloads(1, start=10))
    payloads, _ = again.read_pending(100)
    assert payloads == [*_payloads(3), *_payloads(1, start=10)]
    again.close()


def test_a_corrupted_record_ends_the_readable_spool(tmp_path: Path) -> None:
    """A flipped byte fails the record's checksum: nothing after it is handed to a sink as
    if it were a record."""
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(3))
    spool.close()
    segment = next((tmp_path / "s").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path / "s")
    payloads, _ = again.read_pending(100)
    assert payloads == _payloads(2)
    again.close()


def test_one_spool_has_one_writer(tmp_path: Path) -> None:
    """A spool directory is locked by the writer that opened it: a second one is refused
    (which is how a live process's spool is told from a dead one's)."""
    spool = Spool(tmp_path / "s")
    with pytest.raises(BlockingIOError):
        Spool(tmp_path / "s")
    spool.close()
    Spool(tmp_path / "s").close()


def test_a_live_writers_spool_is_never_adopted(tmp_path: Path) -> None:
    """Workers start together, each making its spool while the others adopt every spool
    they find unlocked (a dead writer's): a spool appears under its name already locked, so
    none is ever taken for a dead one, and none is removed under its writer."""
    adopted: list[str] = []
    stop = threading.Event()

    def adopt_everything() -> None:
        while not stop.is_set():
            for directory in sorted(tmp_path.iterdir()):
                if directory.name.startswith("."):
                    continue
                orphan = Spool.adopt(directory)
                if orphan is not None:
                    adopted.append(directory.name)
                    orphan.remove()

    adopters = [threading.Thread(target=adopt_everything) for _ in range(2)]
    for adopter in adopters:
        adopter.start()
    spools = []
    try:
        for i in range(300):
            spool = Spool(tmp_path / f"writer-{i}")
            spool.append(_payloads(1, i))
            spools.append(spool)
    finally:
        stop.set()
        for adopter in adopters:
            adopter.join()
    assert adopted == []
    for i, spool in enumerate(spools):
        assert spool.read_pending(10)[0] == _payloads(1, i)
        spool.close()


def test_a_dead_writers_spool_is_adopted_once_and_removed(tmp_path: Path) -> None:
    """Once its writer is gone, a spool is adopted by one process only; removing it leaves
    no directory behind, and adopting it again finds nothing (it is not made anew)."""
    Spool(tmp_path / "dead").close()
    first = Spool.adopt(tmp_path / "dead")
    assert first is not None
    assert Spool.adopt(tmp_path / "dead") is None  # held by the first adopter
    first.remove()
    assert list(tmp_path.iterdir()) == []
    assert Spool.adopt(tmp_path / "dead") is None
    assert list(tmp_path.iterdir()) == []
