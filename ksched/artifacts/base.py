"""The artifact store's port and what every implementation shares: the sha256 digest of a file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ksched.errors import ArtifactError
from ksched.schemas.events import ArtifactRef, FailureReason

CHUNK = 1 << 20
Progress = Callable[[int, int], None]


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return "sha256:" + h.hexdigest()


def hexdigest(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ArtifactError(FailureReason.ARTIFACT_MISSING, f"malformed digest {digest!r}")
    return digest[7:]


class ArtifactStore(Protocol):
    url: str

    def put_file(self, path: Path, progress: Progress | None = None) -> ArtifactRef: ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def fetch(self, digest: str, dest: Path) -> None:
        """Copy the artifact to `dest` (not verified: callers verify the digest)."""

    def put_log(self, key: str, path: Path) -> str: ...

    def read_log(self, ref: str) -> bytes: ...


#: The log reference of an attempt that wrote nothing: no object is stored for it (one upload less per attempt).
EMPTY_LOG = "empty"


def read_log(store: ArtifactStore, ref: str) -> bytes:
    """An attempt's log by its reference (an empty one is stored nowhere)."""
    return b"" if ref == EMPTY_LOG else store.read_log(ref)
