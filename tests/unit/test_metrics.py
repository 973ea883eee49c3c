"""Metrics as the shell reports them: known inbox records through the real shell, exact values read back from
the Prometheus registry (not just the names of the series)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
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
from ksched.streams.metrics import Metrics
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0

CODEC = default_codec()
SETTINGS = Settings(prefix="m", partitions=4)


class Worker:
    """One streams worker's shell with metrics, fed inbox records partition by partition."""

    def __init__(self) -> None:
        self.metrics = Metrics(SETTINGS.partitions)
        self.shell = InboxShell(SETTINGS, CODEC, hooks=self.metrics)
        self.stores: dict[int, MemoryStore] = {}
        self.offsets: dict[int, int] = {}
        self.log: list[Any] = []

    def send(self, event: Any, job_id: str | None = None, partition: int | None = None) -> list[Any]:
        p = partition if partition is not None else partition_for(job_id or "", SETTINGS.partitions)
        offset = self.offsets.get(p, 0)
        self.offsets[p] = offset + 1
        value = event if isinstance(event, bytes) else CODEC.encode(event)
        out = self.shell.process(self.stores.setdefault(p, MemoryStore()), p, offset,
                                 job_id.encode() if job_id else None, value)
        made = [CODEC.decode(m.value) for m in out if m.topic == "m.events" and m.value is not None]
        self.log += made
        return made

    def tick(self, at: int) -> None:
        for p in range(SETTINGS.partitions):
            self.send(Tick(p, at), partition=p)

    def ready(self, task_id_part: str) -> TaskReady:
        return [d for d in self.log if isinstance(d, TaskReady) and task_id_part in d.task_id][-1]

    def claim(self, ready: TaskReady, executor: str = "ex1") -> ClaimGranted:
        made = self.send(ClaimTask(f"{ready.task_id}#{ready.attempt}", ready.job_id, ready.run_id, ready.task_id,
                                   ready.attempt, executor, T0), ready.job_id)
        return next(d for d in made if isinstance(d, ClaimGranted))

    def start(self, g: ClaimGranted, at: int) -> None:
        self.send(TaskStarted(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id, at), g.job_id)

    def complete(self, g: ClaimGranted, code: int, started: int, finished: int) -> None:
        self.send(TaskCompleted(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id, code,
                                started, finished), g.job_id)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def two_jobs_in_two_partitions() -> tuple[str, str]:
    names = [f"job{i}" for i in range(100)]
    first = names[0]
    second = next(n for n in names if partition_for(n, 4) != partition_for(first, 4))
    return first, second


def test_a_fresh_worker_reports_zero_everywhere() -> None:
    w = Worker()
    assert w.value("ksched_running_tasks") == 0
    assert w.value("ksched_inbox_records_total") == 0
    assert w.value("ksched_firing_lag_seconds_count") == 0


def test_counters_gauges_and_histograms_follow_the_decisions() -> None:
    w = Worker()
    flaky = replace(job("flaky"), tasks=[replace(job("flaky").tasks[0], retry=RetryPolicy(max_attempts=2,
                                                                                          backoff_ms=0, jitter=0))])
    w.send(SubmitJob("c1", flaky, T0), "flaky")
    w.send(SubmitJob("c2", job("cron", "*/10 * * * * *"), T0), "cron")
    art = job().tasks[0].artifact
    w.send(SubmitJob("c3", JobSpec("dag", [TaskSpec("a", art), TaskSpec("b", art, depends_on=["a"])]), T0), "dag")
    w.send(b"\x00not avro", "junk")
    assert w.value("ksched_inbox_records_total") == 4
    assert w.value("ksched_dead_letters_total") == 1
    assert w.value("ksched_running_tasks") == 0

    g1 = w.claim(w.ready("flaky@"))
    assert w.value("ksched_running_tasks") == 1  # claimed counts as running
    w.start(g1, T0 + 100)
    assert w.value("ksched_running_tasks") == 1
    w.complete(g1, 1, T0 + 100, T0 + 200)  # fails: a retry is scheduled and offered at once (no backoff)
    assert w.value("ksched_retries_total") == 1
    assert w.value("ksched_running_tasks") == 0
    g2 = w.claim(w.ready("flaky@"))
    w.start(g2, T0 + 300)
    assert (g2.attempt, w.value("ksched_running_tasks")) == (2, 1)

    ga = w.claim(w.ready("dag@"))
    w.start(ga, T0 + 1000)
    assert w.value("ksched_running_tasks") == 2
    w.complete(ga, 0, T0 + 1000, T0 + 1500)
    gb = w.claim(w.ready("/b"))
    w.start(gb, T0 + 1900)  # 0.4 s after its parent ended
    assert w.value("ksched_handoff_seconds_count") == 1
    assert w.value("ksched_handoff_seconds_sum") == 0.4
    assert w.value("ksched_handoff_seconds_bucket", le="0.5") == 1
    assert w.value("ksched_handoff_seconds_bucket", le="0.2") == 0

    w.tick(T0 + 10_000)  # the cron job fires its 08:00:10 occurrence
    gc = w.claim(w.ready("cron@"))
    w.start(gc, T0 + 10_250)
    w.start(gc, T0 + 10_250)  # a duplicate report is not observed twice
    assert w.value("ksched_firing_lag_seconds_count") == 1  # one-off and DAG runs have no instant to be late for
    assert w.value("ksched_firing_lag_seconds_sum") == 0.25
    assert w.value("ksched_running_tasks") == 3  # flaky#2, dag/b, cron
    assert w.value("ksched_inbox_records_total") == 4 + 5 + 5 + 4 + 3  # every record sent, ticks included
    assert w.value("ksched_retries_total") == 1


def test_the_running_tasks_of_revoked_partitions_leave_the_gauge_and_a_rejoining_partition_never_goes_negative(
) -> None:
    w = Worker()
    one, other = two_jobs_in_two_partitions()
    grants = {}
    for name in (one, other):
        w.send(SubmitJob(f"c-{name}", job(name), T0), name)
        grants[name] = w.claim(w.ready(f"{name}@"))
        w.start(grants[name], T0)
    assert w.value("ksched_running_tasks") == 2

    p_one = partition_for(one, SETTINGS.partitions)
    w.shell.revoked({p_one})  # a rebalance gives `one`'s partition to another worker
    assert w.value("ksched_running_tasks") == 1

    w.shell.assigned({p_one})  # and back: the attempt still runs, but this worker has not heard of it since
    g = grants[one]
    w.complete(g, 0, T0, T0 + 5)
    assert w.value("ksched_running_tasks") == 1  # `other`'s task; `one`'s end is not taken off a count it left

    w.shell.revoked(set(range(SETTINGS.partitions)))
    assert w.value("ksched_running_tasks") == 0


def test_a_start_reported_with_the_attempts_end_is_observed_once() -> None:
    """A quick attempt's executor reports its start in its completion: firing lag and hand-off count it then."""
    w = Worker()
    w.send(SubmitJob("c2", job("cron", "*/10 * * * * *"), T0), "cron")
    art = job().tasks[0].artifact
    w.send(SubmitJob("c3", JobSpec("dag", [TaskSpec("a", art), TaskSpec("b", art, depends_on=["a"])]), T0), "dag")
    ga = w.claim(w.ready("dag@"))
    w.complete(ga, 0, T0 + 1000, T0 + 1500)  # no start report
    gb = w.claim(w.ready("/b"))
    w.complete(gb, 0, T0 + 1800, T0 + 1900)
    assert (w.value("ksched_handoff_seconds_count"), w.value("ksched_handoff_seconds_sum")) == (1, 0.3)
    w.tick(T0 + 10_000)
    gc = w.claim(w.ready("cron@"))
    w.start(gc, T0 + 10_200)
    w.complete(gc, 0, T0 + 10_200, T0 + 12_000)  # its start was reported already: not observed again
    assert (w.value("ksched_firing_lag_seconds_count"), w.value("ksched_firing_lag_seconds_sum")) == (1, 0.2)
