"""Artifact files: a full disk (or a file-size limit) is a StalwartError that says what to
do, and leaves no half-written file behind."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stalwart.config import Settings
from stalwart.errors import ArtifactWriteError, RegistryError
from stalwart.registry import Registry
from stalwart.registry.artifacts import ArtifactStore
from tests.models import Linear


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: writing more than that fails with a real ENOSPC (needs root)."""
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs to fill ({done.stderr.strip()}); this test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_a_registry_error_and_leaves_no_file(tiny_disk: Path, tmp_path: Path) -> None:
    """Registering onto a full disk fails with ArtifactWriteError naming the directory and
    the way out; no artifact (or temp file) remains, no version is taken, and the next
    registration that fits works."""
    settings = Settings(home=tiny_disk / "home", db_url=f"sqlite:///{tmp_path / 'registry.db'}", python_modules=("tests",))
    registry = Registry.open(settings)
    try:
        big = Linear(np.arange(20_000, dtype=np.float64), 0.0)  # ~400 KB of JSON
        with pytest.raises(ArtifactWriteError, match=r"no space left.*free space under .*STALWART_HOME") as info:
            registry.register("big", big, sample=np.ones((2, 20_000)))
        assert isinstance(info.value, RegistryError)
        assert isinstance(info.value.__cause__, OSError)
        leftovers = [p for p in (tiny_disk / "home" / "artifacts").rglob("*") if p.is_file()]
        assert leftovers == []
        small = registry.register("small", Linear(np.ones(3), 0.0), sample=np.ones((2, 3)))
        assert small.version == 1
        assert [m.name for m in registry.models()] == ["small"]
    finally:
        registry.db.dispose()


_OVER_LIMIT = """
import resource, signal, sys
from pathlib import Path
from stalwart.errors import ArtifactWriteError
from stalwart.registry.artifacts import ArtifactStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then the write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
root = Path(sys.argv[1])
try:
    ArtifactStore(root).put(b"x" * 100_000, ".bin")
except ArtifactWriteError as exc:
    print(exc.message)
    print(sorted(str(p) for p in root.rglob("*") if p.is_file()))
"""


def test_a_file_size_limit_is_the_same_error(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (EFBIG) is reported like a full disk, and leaves no file."""
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run([sys.executable, "-c", _OVER_LIMIT, str(tmp_path / "artifacts")], capture_output=True, text=True, env={"PYTHONPATH": str(src)}, check=True)
    message, files = done.stdout.strip().splitlines()
    assert "file size limit" in message
    assert str(tmp_path / "artifacts") in message
    assert files == "[]"


def test_artifacts_that_fit_are_written_whole(tmp_path: Path) -> None:
    """The happy path is unchanged: the file holds exactly the bytes, and re-putting is free."""
    store = ArtifactStore(tmp_path / "a")
    first = store.put(b"abc" * 1000, ".bin")
    assert store.read_verified(first.file, first.sha256) == b"abc" * 1000
    assert store.put(b"abc" * 1000, ".bin") == first


