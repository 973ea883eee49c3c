"""Bounded fuzzing of the trust boundary: whatever bytes or records reach the inbox, the shell neither raises nor
needs its guard (a decision that raised would be dead-lettered as "deciding ... failed")."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import hypothesis
import hypothesis.strategies as st

from ksched.config import Settings
from ksched.instants import iso
from ksched.schemas.codec import default_codec
from ksched.schemas.events import INBOX_TYPES, ArtifactRef, JobSpec, Schedule, SubmitJob, TaskSpec, Tick
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import DIGEST
from tests.sim import T0

CODEC = default_codec()
SETTINGS = Settings(prefix="f", partitions=1)
FUZZ = hypothesis.settings(max_examples=150, deadline=None, database=None,
                           suppress_health_check=[hypothesis.HealthCheck.too_slow])

job_ids = st.sampled_from(["a", "b"])
names = st.sampled_from(["main", "x", "y", "z"])
instants = st.integers(T0 - 10_000, T0 + 600_000) | st.sampled_from([T0, T0 + 1000, T0 + 2000, T0 + 30_000])
small = st.integers(-3, 40)
crons = st.sampled_from([None, "* * * * * *", "*/5 * * * * *", "0 0 * * *", "61 * * * *", "@hourly", "nonsense"])


def tasks() -> st.SearchStrategy[list[TaskSpec]]:
    spec = st.builds(TaskSpec, name=names, artifact=st.just(ArtifactRef(DIGEST, "x", 1)),
                     depends_on=st.lists(names, max_size=3), trigger_rule=st.sampled_from(
                         ["all_success", "all_done", "one_success", "one_failed", "none_failed", "bogus"]),
                     timeout_ms=small)
    return st.lists(spec, min_size=0, max_size=4)


wild_jobs = st.builds(JobSpec, job_id=job_ids, tasks=tasks(),
                      schedule=st.builds(Schedule, cron=crons, at_ms=st.none() | instants,
                                         timezone=st.sampled_from(["UTC", "Europe/Berlin", "Mars/Olympus"])),
                      max_active_runs=small)
main = TaskSpec("main", ArtifactRef(DIGEST, "x", 1))
valid_jobs = st.builds(
    JobSpec, job_id=job_ids,
    tasks=st.sampled_from([[main], [main, TaskSpec("x", main.artifact, depends_on=["main"]),
                                    TaskSpec("y", main.artifact, depends_on=["main"], trigger_rule="one_failed")]]),
    schedule=st.sampled_from([Schedule(), Schedule(cron="* * * * * *"), Schedule(at_ms=T0 + 1000)]),
    max_active_runs=st.integers(0, 2))
jobs = st.one_of(valid_jobs, valid_jobs, valid_jobs, wild_jobs)
RUN_IDS = [f"{j}@{iso(at)}" for j in "ab" for at in (T0, T0 + 1000, T0 + 2000)]


def inbox_event(cls: type) -> st.SearchStrategy[Any]:
    """Any instance of an inbox record, its ids drawn from small sets so that events meet each other."""
    if cls is SubmitJob:
        return st.builds(SubmitJob, command_id=st.sampled_from(["c1", "c2", "c3"]), job=jobs,
                         submitted_at_ms=st.sampled_from([T0, T0 + 1000]) | instants)
    if cls is Tick:
        return st.builds(Tick, partition=st.just(0), now_ms=instants, ticker=st.just("w"))
    hints = typing.get_type_hints(cls)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if f.name == "job_id":
            fields[f.name] = job_ids
        elif f.name in ("run_id",):
            fields[f.name] = st.sampled_from([*RUN_IDS, "b@x"])
        elif f.name == "task_id":
            fields[f.name] = st.sampled_from([f"{r}/{n}" for r in RUN_IDS for n in ("main", "x")] + ["nonsense"])
        elif kind is int or kind == (int | None):
            fields[f.name] = instants if f.name.endswith("_ms") else st.integers(0, 3) | small
        elif f.name == "executor_id":
            fields[f.name] = st.sampled_from(["e1", "e2"])
        elif kind is str:
            fields[f.name] = st.text(max_size=12)
    return st.builds(cls, **fields)


# Submissions and ticks weigh more: without a job, most commands and reports only meet "unknown job".
events = st.one_of([inbox_event(SubmitJob)] * 4 + [inbox_event(Tick)] * 4 + [inbox_event(c) for c in INBOX_TYPES])


def feed(records: list[bytes]) -> list[str]:
    shell, store = InboxShell(SETTINGS, CODEC), MemoryStore()
    reasons = []
    for offset, raw in enumerate(records):
        for m in shell.process(store, 0, offset, None, raw):
            if m.topic == "f.dlq":
                reasons.append(CODEC.decode(m.value).reason)  # type: ignore[attr-defined]
    return reasons


@FUZZ
@hypothesis.given(st.lists(events, min_size=1, max_size=30))
def test_any_sequence_of_inbox_records_is_decided_without_an_exception(seq: list[Any]) -> None:
    records = []
    for event in seq:
        try:
            records.append(CODEC.encode(event))
        except Exception:  # a value Avro cannot carry cannot reach the inbox either
            hypothesis.assume(False)
    assert [r for r in feed(records) if r.startswith("deciding ")] == []


@FUZZ
@hypothesis.given(st.binary(max_size=300), st.integers(0, 299), st.binary(max_size=8))
def test_damaged_records_are_dead_lettered_and_never_raise(noise: bytes, at: int, patch: bytes) -> None:
    valid = CODEC.encode(SubmitJob("c1", JobSpec("a", [TaskSpec("main", ArtifactRef(DIGEST, "x", 1))]), T0))
    damaged = valid[:at] + patch + valid[at + len(patch):]
    reasons = feed([noise, valid[:10] + noise, damaged, b"\xc3\x01" + noise])
    assert [r for r in reasons if r.startswith("deciding ")] == []
