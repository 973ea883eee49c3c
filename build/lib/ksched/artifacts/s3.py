"""The artifact store on S3 or any S3-compatible server (boto3; endpoint configurable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ksched.artifacts.base import Progress, hexdigest, sha256_file
from ksched.errors import ArtifactError
from ksched.schemas.events import ArtifactRef, FailureReason


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any | None = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _object(self, digest: str) -> str:
        h = hexdigest(digest)
        return self._key(f"sha256/{h[:2]}/{h}")

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            return head
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def put_file(self, path: Path, progress: Progress | None = None) -> ArtifactRef:
        digest = sha256_file(path)
        key = self._object(digest)
        size = path.stat().st_size
        if self._head(key) is None:
            sent = 0

            def callback(n: int) -> None:
                nonlocal sent
                sent += n
                if progress:
                    progress(sent, size)

            self.client.upload_file(str(path), self.bucket, key, Callback=callback)
        elif progress:
            progress(size, size)
        return ArtifactRef(digest, path.name, size)

    def exists(self, digest: str) -> bool:
        return self._head(self._object(digest)) is not None

    def size(self, digest: str) -> int:
        head = self._head(self._object(digest))
        if head is None:
            raise ArtifactError(FailureReason.ARTIFACT_MISSING, f"artifact {digest} not in {self.url}")
        return int(head["ContentLength"])

    def fetch(self, digest: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._object(digest), str(dest))
        except ClientError as exc:
            raise ArtifactError(FailureReason.ARTIFACT_MISSING, f"artifact {digest} not in {self.url}: {exc}") from None

    def put_log(self, key: str, path: Path) -> str:
        self.client.upload_file(str(path), self.bucket, self._key(f"logs/{key}"))
        return f"logs/{key}"

    def read_log(self, ref: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(ref))["Body"]
            data: bytes = body.read()
            return data
        except ClientError:
            raise ArtifactError("LOG_MISSING", f"no log {ref!r} in {self.url}") from None
