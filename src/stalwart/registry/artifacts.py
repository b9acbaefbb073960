"""Model artifacts on disk, content-addressed and verified before every load.

An artifact is stored once under ``<root>/<sha256[:2]>/<sha256><suffix>``; the registry
records the digest. :meth:`ArtifactStore.read_verified` returns the bytes only after
hashing them, and loaders deserialise those same bytes, so nothing between the check
and the load can swap the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stalwart.errors import ArtifactIntegrityError, RegistryError

__all__ = ["ArtifactStore", "StoredArtifact"]


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
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside, then rename: a reader never sees a half-written artifact.
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
        return StoredArtifact(sha256=digest, file=relative, size=len(data))

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
