"""The artifact store in a local directory (the embedded default, `file:///path`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ksched.artifacts.base import Progress, hexdigest, sha256_file
from ksched.errors import ArtifactError
from ksched.schemas.events import ArtifactRef, FailureReason


class LocalStore:
    """`<root>/sha256/<2 hex>/<64 hex>`; logs under `<root>/logs/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, digest: str) -> Path:
        h = hexdigest(digest)
        return self.root / "sha256" / h[:2] / h

    def put_file(self, path: Path, progress: Progress | None = None) -> ArtifactRef:
        digest = sha256_file(path, progress)
        dest = self._path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent)
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return ArtifactRef(digest, path.name, path.stat().st_size)

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()

    def size(self, digest: str) -> int:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            raise ArtifactError(FailureReason.ARTIFACT_MISSING, f"artifact {digest} not in {self.url}") from None

    def fetch(self, digest: str, dest: Path) -> None:
        src = self._path(digest)
        if not src.exists():
            raise ArtifactError(FailureReason.ARTIFACT_MISSING, f"artifact {digest} not in {self.url}")
        shutil.copyfile(src, dest)

    def put_log(self, key: str, path: Path) -> str:
        dest = self.root / "logs" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return f"logs/{key}"

    def read_log(self, ref: str) -> bytes:
        path = self.root / ref
        if not ref.startswith("logs/") or ".." in Path(ref).parts or not path.exists():
            raise ArtifactError("LOG_MISSING", f"no log {ref!r} in {self.url}")
        return path.read_bytes()
