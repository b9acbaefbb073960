"""An append-only local spool of encoded records, in segments, with a delivered cursor.

The prediction log writes every record here first (a write-ahead log), then delivers what
the spool holds to its sink in order, and moves the cursor past what the sink has stored.
So a sink that is down (PostgreSQL restarting, a broker unreachable) costs nothing but
disk: records wait here and go out, in order, when it returns; a process killed at any
point loses nothing that reached the spool, and its successor (or any process sharing the
home) delivers the rest. Sinks are idempotent by request id, so delivering a record twice
(the cursor is written after the sink confirms) stores it once.

On disk: ``<dir>/<segment number>.seg`` files of frames ``length (u32) | crc32 (u32) |
payload``, little-endian, and ``<dir>/cursor`` holding ``<segment> <offset>`` of the first
record not yet delivered. A frame cut short by a crash, or whose CRC does not match, ends
the readable spool: it is truncated away when the spool is opened again.

>>> spool = Spool(Path("/tmp/spool"))           # doctest: +SKIP
>>> spool.append([b'{"request_id": "r1"}'])    # doctest: +SKIP
>>> spool.read_pending(100)                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Position", "Spool"]

_HEADER = struct.Struct("<II")
_SEGMENT_BYTES = 64 * 1024 * 1024
_MAX_FRAME = 64 * 1024 * 1024  # a length beyond this is corruption, not a record


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: a segment and a byte offset in it."""

    segment: int
    offset: int


class Spool:
    """One writer's spool directory (locked, so no two processes write one spool).

    A new spool's directory appears under its name already locked (made under a hidden
    name, locked, then renamed), and a spool that is removed is first renamed away, lock
    held: so processes starting together, each adopting the spools it finds unlocked
    (:meth:`adopt`), never take a live writer's spool for a dead one's.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = _SEGMENT_BYTES, create: bool = True) -> None:
        """Open (``create``: or make) the spool in ``directory``; OSError when another
        process holds it (BlockingIOError) or, without ``create``, when it is gone."""
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._lock_fd = _lock(directory, create=create)
        try:
            self._cursor = self._read_cursor()
            segments = self._segments()
            self._segment = segments[-1] if segments else max(1, self._cursor.segment)
            self._end = self._repair(self._segment)
            self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def adopt(cls, directory: Path) -> Spool | None:
        """The spool in ``directory`` when no live process holds it (its writer died), else
        None (held, or removed meanwhile). Never makes a directory."""
        try:
            return cls(directory, create=False)
        except OSError:
            return None

    # --- writing -------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes], *, sync: bool = False) -> Position:
        """Append records in order; returns the position after the last. ``sync``: fsync
        before returning (the records survive a machine crash, not only the process's).
        OSError (a full disk) leaves the spool as it was: none of them is appended."""
        if self._end >= self._segment_bytes:
            self._rotate()
        frames = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        view = memoryview(frames)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if sync:
                os.fsync(self._fd)
        except OSError:
            # A full disk can take part of the frames: cut them off, so the next append
            # (appending at the file's end) starts where the last whole record ended.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
            raise
        self._end += len(frames)
        return Position(self._segment, self._end)

    def sync(self) -> None:
        os.fsync(self._fd)

    @property
    def end(self) -> Position:
        return Position(self._segment, self._end)

    # --- delivering ----------------------------------------------------------------------

    @property
    def cursor(self) -> Position:
        """The first record not yet delivered."""
        return self._cursor

    def pending(self) -> bool:
        return self._cursor < self.end

    def read_pending(self, limit: int, start: Position | None = None) -> tuple[list[bytes], list[Position]]:
        """Up to ``limit`` undelivered payloads from the cursor (or from ``start``, a
        position after it) on, with the position after each (advance the cursor to one of
        them once the sink has stored that far)."""
        payloads: list[bytes] = []
        ends: list[Position] = []
        position = self._cursor if start is None or start < self._cursor else start
        while len(payloads) < limit and position < self.end:
            path = self._path(position.segment)
            if not path.exists():  # a segment removed by hand: skip to the next
                position = Position(position.segment + 1, 0)
                continue
            with path.open("rb") as f:
                f.seek(position.offset)
                offset = position.offset
                while len(payloads) < limit:
                    payload = _read_frame(f)
                    if payload is None:
                        break
                    offset += _HEADER.size + len(payload)
                    payloads.append(payload)
                    ends.append(Position(position.segment, offset))
            if len(payloads) >= limit or position.segment >= self._segment:
                break
            position = Position(position.segment + 1, 0)
        return payloads, ends

    def advance(self, position: Position) -> None:
        """Everything before ``position`` is delivered: record it, drop finished segments."""
        if position <= self._cursor:
            return
        finished = position.segment > self._cursor.segment
        self._cursor = position
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{position.segment} {position.offset}")
        os.replace(tmp, self.directory / "cursor")
        if not finished:
            return  # no segment was finished: nothing to drop, no directory to list
        for segment in self._segments():
            if segment < position.segment:
                with contextlib.suppress(FileNotFoundError):
                    self._path(segment).unlink()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def remove(self) -> None:
        """Delete the whole spool (everything delivered; used for a dead process's spool).
        Renamed away first, lock held, so nobody opens it by its name meanwhile."""
        grave = self.directory.with_name(f".{self.directory.name}.removed-{secrets.token_hex(4)}")
        try:
            os.rename(self.directory, grave)
        except FileNotFoundError:
            grave = self.directory
        self.close()
        shutil.rmtree(grave, ignore_errors=True)

    # --- internals -----------------------------------------------------------------------

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._segment += 1
        self._end = 0
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _read_cursor(self) -> Position:
        try:
            segment, offset = (self.directory / "cursor").read_text().split()
            return Position(int(segment), int(offset))
        except (FileNotFoundError, ValueError):
            segments = self._segments()
            return Position(segments[0] if segments else 1, 0)

    def _repair(self, segment: int) -> int:
        """The readable length of the last segment, truncating a torn final frame."""
        path = self._path(segment)
        if not path.exists():
            return 0
        good = 0
        with path.open("rb") as f:
            while (payload := _read_frame(f)) is not None:
                good += _HEADER.size + len(payload)
        if good < path.stat().st_size:
            with path.open("r+b") as f:
                f.truncate(good)
        return good


def _lock(directory: Path, *, create: bool) -> int:
    """The descriptor of ``directory``'s lock file, exclusively locked (``create``: making
    the directory, under a hidden name until it is locked, when it does not exist)."""
    if create and not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        hidden = directory.with_name(f".{directory.name}.new-{secrets.token_hex(4)}")
        hidden.mkdir(mode=0o700)
        fd = os.open(hidden / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a directory nobody else can name: free
        try:
            os.rename(hidden, directory)
        except OSError:  # made meanwhile by another process (or the parent is gone): open that one
            os.close(fd)
            shutil.rmtree(hidden, ignore_errors=True)
        else:
            return fd
    fd = os.open(directory / "lock", os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked, but is it still the lock of the directory by that name? A spool removed
        # (renamed away) between our open and our lock is not.
        if not os.path.samestat(os.fstat(fd), os.stat(directory / "lock")):
            raise FileNotFoundError(f"spool {directory} was removed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_frame(f: BinaryIO) -> bytes | None:
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    if length > _MAX_FRAME:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload
