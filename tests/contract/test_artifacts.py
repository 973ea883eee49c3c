"""The artifact-store contract, run against every implementation: the local directory and S3 on a real
S3-compatible server (moto in server mode, over HTTP)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.artifacts import ArtifactStore, LocalStore, open_store, sha256_file
from ksched.errors import ArtifactError
from ksched.schemas.events import FailureReason
from tests.s3server import make_bucket, s3_env, s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    for k, v in s3_env().items():
        os.environ.setdefault(k, v)
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"b{abs(hash(tmp_path)) % 10**9}"
    make_bucket(endpoint, bucket)
    return open_store(f"s3://{bucket}/artifacts", endpoint)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_put_is_content_addressed_and_idempotent(store: ArtifactStore, tmp_path: Path) -> None:
    f = write(tmp_path, "a.sh", b"#!/bin/sh\necho a\n")
    ref = store.put_file(f)
    assert ref.digest == sha256_file(f) and ref.size == f.stat().st_size and ref.name == "a.sh"
    assert store.put_file(f) == ref
    assert store.exists(ref.digest) and store.size(ref.digest) == ref.size


def test_fetch_returns_the_same_bytes(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    ref = store.put_file(write(tmp_path, "big.bin", data))
    out = tmp_path / "out"
    store.fetch(ref.digest, out)
    assert out.read_bytes() == data


def test_missing_artifacts_are_reported_as_missing(store: ArtifactStore, tmp_path: Path) -> None:
    digest = "sha256:" + "0" * 64
    assert not store.exists(digest)
    with pytest.raises(ArtifactError) as exc:
        store.fetch(digest, tmp_path / "x")
    assert exc.value.reason == FailureReason.ARTIFACT_MISSING
    with pytest.raises(ArtifactError):
        store.size(digest)


def test_progress_is_reported_up_to_the_whole_size(store: ArtifactStore, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    f = write(tmp_path, "p.bin", os.urandom(2 * 1024 * 1024))
    store.put_file(f, lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (f.stat().st_size, f.stat().st_size)


def test_logs_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put_log("job@t/main#1.log", write(tmp_path, "log", b"out\n"))
    assert store.read_log(ref) == b"out\n"
    with pytest.raises(ArtifactError):
        store.read_log("logs/none.log")
