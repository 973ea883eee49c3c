"""The executor's local cache of artifacts, by digest: fetched once, verified, then reused."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from ksched.artifacts import ArtifactStore, hexdigest, sha256_file
from ksched.errors import ArtifactError
from ksched.schemas.events import ArtifactRef, FailureReason

from .sandbox import looks_executable


class ArtifactCache:
    def __init__(self, store: ArtifactStore, root: Path, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.store = store
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, digest: str) -> Path:
        return self.root / hexdigest(digest)

    def get(self, ref: ArtifactRef) -> Path:
        """A verified, executable local copy of `ref`. Raises ArtifactError with a FailureReason."""
        path = self.path_for(ref.digest)
        if path.exists():
            return path
        with self._guard:
            lock = self._locks.setdefault(ref.digest, threading.Lock())
        with lock:
            if path.exists():
                return path
            size = self.store.size(ref.digest)
            if size > self.max_bytes:
                raise ArtifactError(FailureReason.ARTIFACT_TOO_LARGE,
                                    f"artifact {ref.name} is {size} bytes; the limit is {self.max_bytes}")
            tmp = self.root / f".{hexdigest(ref.digest)}.{uuid.uuid4().hex}.part"
            try:
                self.store.fetch(ref.digest, tmp)
                actual = sha256_file(tmp)
                if actual != ref.digest:
                    raise ArtifactError(FailureReason.DIGEST_MISMATCH,
                                        f"artifact {ref.name}: expected {ref.digest}, got {actual}")
                if not looks_executable(tmp):
                    raise ArtifactError(FailureReason.NOT_EXECUTABLE,
                                        f"artifact {ref.name} is neither an ELF binary nor a #! script")
                os.chmod(tmp, 0o555)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path
