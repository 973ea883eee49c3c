"""The executor's secret store: what a task's `env_from: {NAME: secret:<name>}` resolves to, at start.

The history, views, API and logs hold only the references; the values exist in this store and in the
environment of the attempt's process. A directory of the executor's host (one file per secret, its content the
value, a trailing newline dropped) or an S3 prefix (one object per secret). The directory is hidden from jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ksched.errors import SecretError

PREFIX = "secret:"


class SecretStore(Protocol):
    def get(self, name: str) -> str:
        """The secret's value; SecretError if there is none."""


class DirectorySecrets:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, name: str) -> str:
        path = self.root / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise SecretError(f"no secret {name!r} in {self.root}")
        return path.read_text().removesuffix("\n")


class S3Secrets:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None, client: Any | None = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def get(self, name: str) -> str:
        from botocore.exceptions import ClientError

        key = f"{self.prefix}/{name}" if self.prefix else name
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError:
            raise SecretError(f"no secret {name!r} in s3://{self.bucket}/{self.prefix}") from None
        return bytes(body).decode().removesuffix("\n")


def open_secrets(url: str, s3_endpoint_url: str = "") -> SecretStore | None:
    """`""`: none; a path or `file:///dir`: a directory; `s3://bucket/prefix`: objects."""
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Secrets(parsed.netloc, parsed.path, s3_endpoint_url or None)
    return DirectorySecrets(Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve())


def resolve(env_from: Mapping[str, str], store: SecretStore | None) -> dict[str, str]:
    """The environment `env_from` stands for; SecretError naming the first that cannot be resolved."""
    if env_from and store is None:
        raise SecretError(f"the task needs secrets ({', '.join(sorted(env_from))}) and this executor has no "
                          "secret store (ksched executor --secrets)")
    out = {}
    for var, ref in env_from.items():
        if not ref.startswith(PREFIX):
            raise SecretError(f"{var}: {ref!r} is not a secret reference")
        assert store is not None
        out[var] = store.get(ref[len(PREFIX):])
    return out
