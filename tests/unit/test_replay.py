"""Audit replay over histories built here (retries, a lapsed lease, a DAG failure) and over tampered ones."""

from __future__ import annotations

import collections
from dataclasses import replace
from typing import Any

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.reader import Record
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    AttemptEnded,
    ClaimGranted,
    ClaimTask,
    JobSpec,
    RetryPolicy,
    SubmitJob,
    TaskCompleted,
    TaskReady,
    TaskSpec,
    TaskStarted,
    Tick,
)
from ksched.streams.core.model import JobState, Params
from ksched.streams.jobstore import decode_record, is_job_key
from ksched.streams.replay import MemoryStore, replay
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0

CODEC = default_codec()
SETTINGS = Settings(prefix="r", partitions=2, lease_s=5.0, lookahead_s=0.0)


class History:
    """Builds an inbox as executors and clients would have written it, and decides each record as it arrives,
    as a live worker does (its own shell and stores, records in arrival order across partitions). `log` is that
    worker's decision log: replay, folding the inbox partition by partition on its own, must reproduce it."""

    def __init__(self) -> None:
        self.inbox: list[Record] = []
        self.now = T0
        self.log: list[Any] = []
        self._worker = InboxShell(SETTINGS, CODEC, Params(lease_ms=int(SETTINGS.lease_s * 1000),
                                                          lookahead_ms=int(SETTINGS.lookahead_s * 1000)))
        self._stores: dict[int, MemoryStore] = collections.defaultdict(MemoryStore)

    def add(self, key: str | None, event: Any, partition: int | None = None) -> None:
        p = partition if partition is not None else partition_for(key or "", SETTINGS.partitions)
        offset = sum(1 for r in self.inbox if r.partition == p)
        rec = Record("r.inbox", p, offset, self.now, key.encode() if key else None, CODEC.encode(event))
        self.inbox.append(rec)
        out = self._worker.process(self._stores[p], p, offset, rec.key, rec.value)
        self.log += [CODEC.decode(m.value) for m in out if m.topic == "r.events" and m.value is not None]

    def tick(self, at: int) -> None:
        """Ticks up to `at`, one a second as the ticker produces them (a longer gap means it was away)."""
        for t in [*range(self.now + 1000, at, 1000), at] if at > self.now else [at]:
            self.now = t
            for p in range(SETTINGS.partitions):
                self.add(None, Tick(p, t), p)

    def jobs(self) -> dict[str, JobState]:
        """The worker's state of every job."""
        return {key.decode(): decode_record(raw, store.get).state for store in self._stores.values()
                for key, raw in store.items() if is_job_key(key)}

    def recorded(self, extra: list[Any] = ()) -> list[Record]:  # type: ignore[assignment]
        return [Record("r.events", 0, i, self.now, None, CODEC.encode(d)) for i, d in enumerate([*self.log, *extra])]

    def run(self, ready: TaskReady, code: int = 0, executor: str = "ex1", finish: bool = True) -> ClaimGranted:
        self.add(ready.job_id, ClaimTask(f"{ready.task_id}#{ready.attempt}@{executor}", ready.job_id, ready.run_id,
                                         ready.task_id, ready.attempt, executor, self.now))
        grant = next(d for d in self.log if isinstance(d, ClaimGranted) and d.task_id == ready.task_id
                     and d.attempt == ready.attempt)
        self.add(ready.job_id, TaskStarted(ready.job_id, ready.run_id, ready.task_id, ready.attempt,
                                           grant.fencing_token, executor, self.now))
        if finish:
            self.add(ready.job_id, TaskCompleted(ready.job_id, ready.run_id, ready.task_id, ready.attempt,
                                                 grant.fencing_token, executor, code, self.now, self.now))
        return grant

    def readies(self) -> list[TaskReady]:
        return [d for d in self.log if isinstance(d, TaskReady)]


def rich_history() -> History:
    h = History()
    h.tick(T0)
    retrying = replace(job("retry"), tasks=[replace(job("retry").tasks[0],
                                                    retry=RetryPolicy(max_attempts=3, backoff_ms=1000, jitter=0))])
    h.add("retry", SubmitJob("c1", retrying, T0))
    h.add("cron", SubmitJob("c2", job("cron", "*/10 * * * * *"), T0))
    art = job("x").tasks[0].artifact
    pipeline = JobSpec("pipe", [TaskSpec("build", art), TaskSpec("test", art, depends_on=["build"]),
                                TaskSpec("notify", art, depends_on=["build"], trigger_rule="one_failed")])
    h.add("pipe", SubmitJob("c3", pipeline, T0))
    first = next(r for r in h.readies() if r.job_id == "retry")
    h.run(first, code=1)  # fails: retried after a backoff
    build = next(r for r in h.readies() if r.task_name == "build")
    h.run(build, code=2)  # the DAG fails; notify runs
    h.tick(T0 + 1000)
    second = [r for r in h.readies() if r.job_id == "retry"][-1]
    assert second.attempt == 2
    h.run(second, finish=False)  # its executor dies: the lease lapses
    h.tick(T0 + 7000)
    h.tick(T0 + 9000)
    third = [r for r in h.readies() if r.job_id == "retry"][-1]
    assert third.attempt == 3
    h.run(third)
    h.run(next(r for r in h.readies() if r.task_name == "notify"))
    h.tick(T0 + 10_000)
    h.run(next(r for r in h.readies() if r.job_id == "cron"))
    h.tick(T0 + 20_000)
    return h


def by_job(decisions: list[Any]) -> dict[str, list[Any]]:
    """Decisions per job in the order they were made (jobs decide independently, so only that order counts)."""
    jobs: dict[str, list[Any]] = collections.defaultdict(list)
    for d in decisions:
        jobs[d.job_id].append(d)
    return dict(jobs)


def test_a_history_with_retries_a_lapsed_lease_and_a_dag_failure_replays_to_the_workers_decisions() -> None:
    h = rich_history()
    result = replay(SETTINGS, h.inbox, h.recorded())
    assert result.ok, (result.violations, result.missing_from_log, result.not_reproduced)
    assert by_job(result.decisions) == by_job(h.log)  # the same decisions, field for field, in the same order
    ended = [(d.attempt, d.outcome) for d in result.decisions if isinstance(d, AttemptEnded) and d.job_id == "retry"]
    assert ended == [(1, "FAILED"), (2, "LOST"), (3, "SUCCEEDED")]
    assert [r.state for r in result.jobs["retry"].runs.values()] == ["SUCCEEDED"]
    assert [r.state for r in result.jobs["pipe"].runs.values()] == ["FAILED"]
    assert {n: t.state for n, t in next(iter(result.jobs["pipe"].runs.values())).tasks.items()} == {
        "build": "FAILED", "test": "UPSTREAM_FAILED", "notify": "SUCCEEDED"}


def test_replay_rebuilds_the_workers_state_whatever_order_the_partitions_come_in() -> None:
    h = rich_history()
    forward, backward = replay(SETTINGS, h.inbox), replay(SETTINGS, list(reversed(h.inbox)))
    assert forward.jobs == h.jobs()
    assert backward.digest() == forward.digest()


def test_replay_until_an_instant_stops_there() -> None:
    h = rich_history()
    early = replay(SETTINGS, h.inbox, until_ms=T0 + 1000)
    assert by_job(early.decisions) == by_job([d for d in h.log if d.at_ms <= T0 + 1000])
    (run,) = early.jobs["retry"].runs.values()
    (task,) = run.tasks.values()
    assert (run.state, task.state, task.number) == ("RUNNING", "RUNNING", 2)


def test_a_doubled_success_in_the_log_fails_the_replay_and_names_the_events() -> None:
    h = rich_history()
    real = next(d for d in h.log if isinstance(d, AttemptEnded) and d.outcome == "SUCCEEDED")
    forged = replace(real, event_id=real.event_id.replace("#", "#9"), attempt=9)
    result = replay(SETTINGS, h.inbox, h.recorded([forged]))
    assert not result.ok
    (violation,) = [v for v in result.violations if v.invariant == "at most one success per task"]
    assert set(violation.events) == {real.event_id, forged.event_id}
    assert result.not_reproduced == [forged.event_id]


def test_a_process_started_without_a_grant_is_named() -> None:
    h = rich_history()
    ready = next(r for r in h.readies() if r.job_id == "cron")
    h.add("cron", TaskStarted("cron", ready.run_id, ready.task_id, ready.attempt, 999, "rogue", h.now))
    result = replay(SETTINGS, h.inbox, h.recorded())
    assert any(v.invariant == "no run without a claim" and "999" in v.detail for v in result.violations)


def test_an_occurrence_decided_twice_is_named() -> None:
    h = rich_history()
    from ksched.schemas.events import RunTriggered

    fired = next(d for d in h.log if isinstance(d, RunTriggered) and d.job_id == "cron")
    twin = replace(fired, event_id=fired.event_id + "-again")
    result = replay(SETTINGS, h.inbox, h.recorded([twin]))
    assert any(v.invariant == "occurrence decided once" for v in result.violations)




def test_decisions_of_records_past_the_committed_offsets_may_still_be_missing_from_the_log() -> None:
    """Workers stopped after the last records arrived: their decisions are pending, not a divergence."""
    h = rich_history()
    logged = h.recorded()
    cron = partition_for("cron", SETTINGS.partitions)
    cut = sum(1 for r in h.inbox if r.partition == cron)
    h.add("cron", TaskCompleted("cron", "x", "x", 1, 1, "ex1", 0, h.now, h.now))  # a stale report: decides nothing
    h.tick(T0 + 30_000)  # fires the cron job, but no worker decided it
    everything = replay(SETTINGS, h.inbox, logged)
    assert everything.missing_from_log and not everything.ok
    decided = {p: sum(1 for r in h.inbox if r.partition == p) for p in range(SETTINGS.partitions)}
    decided[cron] = cut
    pending = replay(SETTINGS, h.inbox, logged, decided=decided)
    assert pending.ok, pending.missing_from_log
    assert pending.pending_records == sum(1 for r in h.inbox if r.partition == cron) - cut
    assert pending.pending_decisions > 0


def test_a_report_past_the_committed_offsets_is_not_held_to_a_log_read_before_its_grant() -> None:
    """Replay of a running installation reads the log's end before the inbox: a claim, its grant and the
    start report that all came after that end are in the inbox it reads but the grant is not in the log. Past
    the committed offsets, that is pending, not a process started without a grant."""
    h = rich_history()
    logged = h.recorded()  # the log as read, before what follows was decided
    cron = partition_for("cron", SETTINGS.partitions)
    decided = {p: sum(1 for r in h.inbox if r.partition == p) for p in range(SETTINGS.partitions)}
    h.tick(T0 + 30_000)  # fires the cron job again
    ready = [r for r in h.readies() if r.job_id == "cron"][-1]
    h.run(ready)  # claimed, granted, started, completed: all past the committed offset of its partition
    assert replay(SETTINGS, h.inbox, logged, decided=decided).ok
    held = replay(SETTINGS, h.inbox, logged, decided={**decided, cron: 10**9})  # as if all were committed
    assert any(v.invariant == "no run without a claim" for v in held.violations)
