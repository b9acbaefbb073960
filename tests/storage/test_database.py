"""The database handle: SQLite write transactions that survive a busy database, files
created private."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from stalwart.storage import Database

_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO stalwart_meta (key, value) VALUES ('holder', 'x')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_a_write_outlasting_the_busy_timeout_is_retried(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock past the busy timeout: the write is retried
    with backoff as a whole transaction and succeeds, instead of 'database is locked'."""
    path = tmp_path / "registry.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.1)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path), "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        attempts = []

        def work(conn: object) -> int:
            attempts.append(1)
            conn.execute(text("INSERT INTO stalwart_meta (key, value) VALUES ('writer', 'y')"))  # type: ignore[attr-defined]
            return 7

        assert db.transact(work) == 7
        assert time.monotonic() - started >= 0.5
        assert holder.wait(timeout=30) == 0
        with db.read() as conn:
            assert dict(conn.execute(text("SELECT key, value FROM stalwart_meta WHERE key IN ('holder', 'writer')")).all()) == {"holder": "x", "writer": "y"}
        assert len(attempts) == 1  # the lock is taken before the work runs
    finally:
        holder.kill()
        holder.communicate()
        db.dispose()


def test_a_write_that_stays_locked_fails_with_advice(tmp_path: Path) -> None:
    """A lock held for longer than the whole retry budget is a StorageError that says what to do."""
    from stalwart.errors import StorageError

    path = tmp_path / "registry.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.05, busy_retry_seconds=0.3)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError, match=r"database is locked.*another process"), db.write() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        holder.kill()
        holder.communicate()
        db.dispose()


def test_a_new_sqlite_file_and_its_directory_are_private(tmp_path: Path) -> None:
    """A SQLite file the handle creates is 0600 (and so are its -wal and -shm files), in a
    directory it creates 0700; an existing directory's mode is left alone."""
    import os

    old = os.umask(0o022)
    try:
        db = Database(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'x.db'}")
        with db.write() as conn:
            conn.execute(text("INSERT INTO stalwart_meta (key, value) VALUES ('k', 'v')"))
        files = sorted((tmp_path / "new" / "deeper").iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        db.dispose()
    finally:
        os.umask(old)
    assert modes == {"x.db": 0o600, "x.db-shm": 0o600, "x.db-wal": 0o600}
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o700
