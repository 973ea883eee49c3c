"""Metrics as a hook on the shell: the shell reports each applied decision; this turns them into Prometheus
series. A failing hook is logged and never stops the agent.

    ksched_firing_lag_seconds        scheduled instant -> process started, first attempt of a fired run
    ksched_handoff_seconds           last parent's process ended -> child's process started (DAG)
    ksched_ready_queue_depth{pool,priority}  ready records not yet claimed by that pool's executors
    ksched_running_tasks             claimed or running tasks in this worker's partitions (counted per job, and
                                     dropped with a partition when it is revoked)
    ksched_retries_total             retries scheduled
    ksched_dead_letters_total        inbox records dead-lettered
    ksched_inbox_records_total       inbox records processed
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.events import PRIORITIES, RetryScheduled, TaskCompleted, TaskFailed, TaskStarted, TaskState, Trigger

from .core.model import JobState, split_task_id
from .core.views import run_view

log = logging.getLogger(__name__)
_LIVE = (TaskState.CLAIMED, TaskState.RUNNING)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ShellHooks:
    """What the shell tells observers. The default does nothing."""

    def applied(self, event: Any, before: JobState | None, after: JobState | None, emits: list[Any]) -> None:
        pass

    def dead_lettered(self) -> None:
        pass

    def processed(self) -> None:
        pass

    def revoked(self, partitions: set[int]) -> None:
        """This worker no longer owns these inbox partitions: their jobs are another worker's to report."""


def _live(state: JobState | None) -> int:
    if state is None:
        return 0
    # From the runs' views (cached, and counted from the changes): not a count over every task at every decision.
    return sum(run_view(state, r).task_counts.get(s, 0) for r in state.runs.values() for s in _LIVE)


class Metrics(ShellHooks):
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions  # of the inbox, to tell which jobs a revoked partition takes away
        #: Claimed or running tasks per job (jobs with none are left out), and their sum. Each decision sets its
        #: job's count from the state it leaves, so a job this worker took over with tasks already running is
        #: counted right from its next decision on, and never below zero.
        self._live: dict[str, int] = {}
        self._live_total = 0
        self.registry = CollectorRegistry()
        self.firing_lag = Histogram("ksched_firing_lag_seconds", "Scheduled instant to process start (first attempt)",
                                    buckets=_BUCKETS, registry=self.registry)
        self.handoff = Histogram("ksched_handoff_seconds", "Last parent ended to child process started",
                                 buckets=_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("ksched_ready_queue_depth", "Ready records not yet claimed", ["pool", "priority"],
                                 registry=self.registry)
        self.running = Gauge("ksched_running_tasks", "Claimed or running tasks in this worker's partitions",
                             registry=self.registry)
        self.retries = Counter("ksched_retries_total", "Retries scheduled", registry=self.registry)
        self.dead_letters = Counter("ksched_dead_letters_total", "Inbox records dead-lettered",
                                    registry=self.registry)
        self.records = Counter("ksched_inbox_records_total", "Inbox records processed", registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.split(";")[0]

    def processed(self) -> None:
        self.records.inc()

    def dead_lettered(self) -> None:
        self.dead_letters.inc()

    def applied(self, event: Any, before: JobState | None, after: JobState | None, emits: list[Any]) -> None:
        try:
            self._observe(event, before, after, emits)
        except Exception:  # a metrics bug must never stop scheduling
            log.exception("metrics hook failed")

    def revoked(self, partitions: set[int]) -> None:
        try:
            for job_id in [j for j in self._live if partition_for(j, self.partitions) in partitions]:
                self._live_total -= self._live.pop(job_id)
            self.running.set(self._live_total)
        except Exception:
            log.exception("metrics hook failed")

    def _observe(self, event: Any, before: JobState | None, after: JobState | None, emits: list[Any]) -> None:
        job = after or before
        if job is not None:
            live = _live(after)
            self._live_total += live - (self._live.pop(job.job_id, 0))
            if live:
                self._live[job.job_id] = live
            self.running.set(self._live_total)
        for e in emits:
            if isinstance(e.record, RetryScheduled) and e.channel == "events":
                self.retries.inc()
        # A start is in the start report, or in the end report of an attempt that ended before its start was
        # reported (the executor folds the two).
        if (isinstance(event, TaskStarted | TaskCompleted | TaskFailed) and event.started_at_ms is not None
                and after is not None and before is not None):
            self._started(event, before, after)

    def _started(self, event: TaskStarted | TaskCompleted | TaskFailed, before: JobState, after: JobState) -> None:
        run_id, name = split_task_id(event.task_id)
        run = after.runs.get(run_id)
        old = before.runs.get(run_id)
        task = old.tasks.get(name) if old is not None else None
        if (run is None or task is None or task.state != TaskState.CLAIMED or task.attempt is None
                or (task.attempt.number, task.attempt.fencing_token) != (event.attempt, event.fencing_token)):
            return  # unknown, a start already seen, or a report of another attempt
        assert event.started_at_ms is not None
        spec = after.task_spec(run, name)
        if not spec.depends_on:
            at_instant = run.trigger in (Trigger.CRON, Trigger.CATCHUP) or (
                run.trigger == Trigger.ONCE and after.spec_for(run.revision).schedule.at_ms is not None)
            if event.attempt == 1 and at_instant:
                self.firing_lag.observe(max(0.0, (event.started_at_ms - run.scheduled_for_ms) / 1000))
            return
        ends = [a.finished_at_ms for p in spec.depends_on for a in run.tasks[p].attempts[-1:] if a.finished_at_ms]
        if ends and event.attempt == 1:
            self.handoff.observe(max(0.0, (event.started_at_ms - max(ends)) / 1000))


def queue_depths(settings: Settings) -> dict[tuple[str, str], int]:
    """Per (executor pool, priority), "" being the default pool: end offsets of the ready topic minus what that
    pool's executor group has committed. Pools are found by their ready topics (created on first use).

    The committed offsets are read by a consumer of the pool's group that never joins it (`committed` is an
    OffsetFetch), not by the admin client: librdkafka's admin ListConsumerGroupOffsets dereferences a null
    consumer group when the coordinator answers NOT_COORDINATOR (librdkafka issue 5040), which killed the
    worker with SIGSEGV whenever a broker restarted."""
    from confluent_kafka import TopicPartition

    from ksched import kafka
    from ksched.topics import pools_in, ready_topic

    pools = pools_in(settings, kafka.admin(settings).list_topics(timeout=10).topics)
    depths = {}
    for pool in sorted(pools):
        group = f"{settings.prefix}-executors" + (f"-{pool}" if pool else "")
        topics = {prio: ready_topic(settings, prio, pool) for prio in PRIORITIES}
        consumer = kafka.consumer(settings, group=group)
        try:
            request = [TopicPartition(t, i) for t in topics.values() for i in range(settings.ready_partitions)]
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(request, timeout=10)}
            for prio, topic in topics.items():
                total = 0
                for i in range(settings.ready_partitions):
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, i), timeout=5)
                    done = committed.get((topic, i), -1)
                    total += max(0, high - max(low, done if done >= 0 else low))
                depths[(pool, prio)] = total
        finally:
            consumer.close()
    return depths
