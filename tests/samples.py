"""Synthetic instances of every record type, built from the field types (for codec and parity tests)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, Schedule, TaskSpec

DIGEST = "sha256:" + "ab" * 32


def sample_value(tp: Any, name: str, seed: int) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return sample_value(inner, name, seed)
    if tp is str:
        return f"{name}-{seed}"
    if tp is int:
        return 1_700_000_000_000 + seed if name.endswith("_ms") else seed + 1
    if tp is float:
        return 1.5
    if tp is bool:
        return True
    if tp is bytes:
        return b"\x00\xc3\x01raw" + bytes([seed % 256])
    if origin is list:
        return [sample_value(typing.get_args(tp)[0], name, seed), sample_value(typing.get_args(tp)[0], name, seed + 1)]
    if origin is dict:
        return {"k1": sample_value(typing.get_args(tp)[1], name, seed)}
    if dataclasses.is_dataclass(tp):
        return sample(tp, seed)
    raise TypeError(f"no sample for {tp}")


def sample(cls: Any, seed: int = 1) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample_value(hints[f.name], f.name, seed) for f in dataclasses.fields(cls)})


def job(job_id: str = "j1", cron: str | None = None, **schedule: Any) -> JobSpec:
    task = TaskSpec("main", ArtifactRef(DIGEST, "hello.sh", 10), retry=RetryPolicy(max_attempts=1))
    return JobSpec(job_id=job_id, tasks=[task], schedule=Schedule(cron=cron, **schedule))
