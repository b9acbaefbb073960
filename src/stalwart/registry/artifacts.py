"""Model artifacts on disk, content-addressed and verified before every load.

An artifact is stored once under ``<root>/<sha256[:2]>/<sha256><suffix>``; the registry
records the digest. :meth:`ArtifactStore.read_verified` returns the bytes only after
hashing them, and loaders deserialise those same bytes, so nothing between the check
and the load can swap the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stalwart.config import private_dir
from stalwart.errors import ArtifactIntegrityError, ArtifactWriteError, RegistryError

__all__ = ["ArtifactStore", "StoredArtifact"]

# The ways a write can run out of room, as the message names them.
_NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "no space left in the disk quota",
    errno.EFBIG: "over the file size limit",
}


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    sha256: str
    file: str  # relative to the store's root
    size: int


class ArtifactStore:
    """A directory of immutable, content-addressed artifact files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes, suffix: str) -> StoredArtifact:
        """Store ``data`` (idempotently) and return its address."""
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest}{suffix}"
        path = self.root / relative
        if not path.exists():
            try:
                self._write(path, data)
            except OSError as exc:
                if exc.errno in _NO_ROOM:
                    raise ArtifactWriteError(
                        f"cannot store a {len(data)}-byte artifact under {self.root}: "
                        f"{_NO_ROOM[exc.errno]} ({exc.strerror}); free space under {self.root}, "
                        f"or point STALWART_HOME at a disk with room, then register again"
                    ) from exc
                raise
        return StoredArtifact(sha256=digest, file=relative, size=len(data))

    def _write(self, path: Path, data: bytes) -> None:
        private_dir(path.parent)
        # Write beside, then rename: a reader never sees a half-written artifact, and a
        # failed write (a full disk) leaves no file behind. mkstemp makes the file 0600.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_verified(self, file: str, sha256: str) -> bytes:
        """The artifact's bytes, after checking they hash to ``sha256``."""
        path = self.root / file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(
                f"artifact {path} is missing; restore it, or point STALWART_HOME at the "
                f"directory that holds the artifacts of this registry"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactIntegrityError(
                f"artifact {path} has sha256 {actual} but {sha256} was registered; the file "
                f"was changed or corrupted after registration. Restore the original or "
                f"register the new file as a new version"
            )
        return data

    def path_of(self, file: str) -> Path:
        return self.root / file
