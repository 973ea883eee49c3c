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


_TEXT = "aé€😀 \x00z"


def random_value(tp: Any, name: str, rng: Any, depth: int = 0) -> Any:
    """A value of `tp` with the shapes Avro encodes differently: None in optionals, empty and long lists and maps
    (a count past 63 takes two bytes), empty, long and non-ASCII text, ints at the edges of the varint's lengths
    and of an Avro int's range. Below the top record, lists, maps and text stay short (nested long lists multiply)."""
    big = depth == 0
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return None if rng.random() < 0.4 else random_value(inner, name, rng, depth)
    if tp is str:
        return "".join(rng.choice(_TEXT) for _ in range(rng.choice((0, 1, 5, 63, 64, 300) if big else (0, 1, 5))))
    if tp is int:  # within an Avro int: a field declared long is tested at its edges on its own
        return rng.choice((0, 1, -1, 63, 64, -64, -65, 8191, 8192, (1 << 31) - 1, -(1 << 31),
                           rng.randrange(-(1 << 31), 1 << 31)))
    if tp is float:
        return rng.choice((0.0, -1.5, 1e300, float("inf"), 3))
    if tp is bool:
        return rng.random() < 0.5
    if tp is bytes:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 3, 200))))
    if origin is list:
        count = rng.choice((0, 1, 3, 64) if big else (0, 1, 3))
        return [random_value(typing.get_args(tp)[0], name, rng, depth + 1) for _ in range(count)]
    if origin is tuple:
        return tuple(random_value(typing.get_args(tp)[0], name, rng, depth + 1) for _ in range(rng.choice((0, 2))))
    if origin is dict:
        return {f"k{i}{_TEXT[i % len(_TEXT)]}": random_value(typing.get_args(tp)[1], name, rng, depth + 1)
                for i in range(rng.choice((0, 1, 70) if big else (0, 1, 3)))}
    if dataclasses.is_dataclass(tp):
        return random_sample(tp, rng, depth + 1)
    raise TypeError(f"no value for {tp}")


def random_sample(cls: Any, rng: Any, depth: int = 0) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: random_value(hints[f.name], f.name, rng, depth) for f in dataclasses.fields(cls)})
