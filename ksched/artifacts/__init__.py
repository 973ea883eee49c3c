"""Content-addressed artifact storage (binaries by sha256) and run logs.

Two implementations of one port: a local directory (the embedded default, `file:///path`) and S3 or any
S3-compatible server (`s3://bucket/prefix`, endpoint from `KSCHED_S3_ENDPOINT_URL`). Both are checked
by the same contract tests.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ksched.artifacts.base import CHUNK, EMPTY_LOG, ArtifactStore, Progress, hexdigest, read_log, sha256_file
from ksched.artifacts.local import LocalStore
from ksched.errors import ArtifactError

__all__ = ["CHUNK", "EMPTY_LOG", "ArtifactStore", "LocalStore", "Progress", "hexdigest", "open_store", "read_log",
           "sha256_file"]


def open_store(url: str, s3_endpoint_url: str = "") -> ArtifactStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path or url))
    if parsed.scheme == "s3":
        from ksched.artifacts.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.lstrip("/"), s3_endpoint_url or None)
    raise ArtifactError("BAD_URL", f"KSCHED_ARTIFACTS: unsupported artifact store URL {url!r} (file:// or s3://)")
