"""Content-addressed artifact storage (binaries by sha256) and run logs.

Two implementations of one port: a local directory (the embedded default, `file:///path`) and S3 or any
S3-compatible server (`s3://bucket/prefix`, endpoint from `KSCHED_S3_ENDPOINT_URL`). Both are checked
by the same contract tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from ksched.errors import ArtifactError
from ksched.events import ArtifactRef, FailureReason

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


def _hex(digest: str) -> str:
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


class LocalStore:
    """`<root>/sha256/<2 hex>/<64 hex>`; logs under `<root>/logs/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, digest: str) -> Path:
        h = _hex(digest)
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


def open_store(url: str, s3_endpoint_url: str = "") -> ArtifactStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path or url))
    if parsed.scheme == "s3":
        from ksched.s3store import S3Store

        return S3Store(parsed.netloc, parsed.path.lstrip("/"), s3_endpoint_url or None)
    raise ArtifactError("BAD_URL", f"KSCHED_ARTIFACTS: unsupported artifact store URL {url!r} (file:// or s3://)")
