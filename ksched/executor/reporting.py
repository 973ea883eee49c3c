"""What the executor tells the scheduler outside its claim transactions, and the logs it stores.

Owns the reports producer (to the inbox, keyed by job id): an attempt's start, its end (completed or failed, with
the reference of its capped log in the artifact store), the hand-back of an attempt it will not run, and the
renewals of claims that wait long for their answer; and the heartbeats, one record per inbox partition naming every
attempt it runs of that partition's jobs (produced to that partition, so a job's reports stay in order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ksched import kafka
from ksched.artifacts import EMPTY_LOG, ArtifactStore
from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    ClaimTask,
    DeadLetter,
    ExecutorHeartbeat,
    FailureReason,
    HeldAttempt,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
)

from .claims import claim_records
from .ledger import Pending, now_ms
from .runtime import Attempt, Ended
from .sandbox import Process, cap_log

log = logging.getLogger(__name__)


#: Attempts named in one heartbeat record at most (about 100 bytes each).
HEARTBEAT_BATCH = 1000


def retryable(ended: Ended) -> bool:
    """Whether an attempt the executor ended is worth another attempt: one handed back, or one that timed out
    after it started (one that timed out before it could start was never run)."""
    return ended.reason == FailureReason.EXECUTOR_STOPPED or (
        ended.reason == FailureReason.TIMEOUT and ended.started_at_ms is not None)


class Reporter:
    def __init__(self, settings: Settings, executor_id: str, store: ArtifactStore, log_limit_bytes: int) -> None:
        self.id = executor_id
        self.store = store
        self.log_limit_bytes = log_limit_bytes
        self.codec = default_codec()
        self.inbox = settings.topic("inbox")
        self.partitions = settings.partitions
        self.dlq = settings.topic("dlq")
        self._producer = kafka.producer(settings)

    def started(self, attempt: Attempt, proc: Process) -> None:
        r, g = attempt.ready, attempt.grant
        self._send(TaskStarted(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token, self.id,
                               proc.started_at_ms, proc.pid))

    def ended(self, ended: Ended, offer_id: str = "", offer_pool: str = "") -> None:
        """Store the attempt's log, then report how it ended (a completion with the slot it offers, if any)."""
        attempt = ended.attempt
        r, g = attempt.ready, attempt.grant
        log_ref = self._upload_log(attempt.key, ended.log_path) if ended.log_path is not None else ""
        if ended.reason:
            self.failed(attempt, ended.reason, ended.message, retryable=retryable(ended),
                        started=ended.started_at_ms, exit_code=ended.exit_code, log_ref=log_ref,
                        finished=ended.finished_at_ms)
        else:
            assert ended.exit_code is not None and ended.started_at_ms is not None
            self._send(TaskCompleted(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token, self.id,
                                     ended.exit_code, ended.started_at_ms, ended.finished_at_ms, log_ref,
                                     offer_id, offer_pool))

    def failed(self, attempt: Attempt, reason: str, message: str, *, retryable: bool, started: int | None,
               exit_code: int | None, log_ref: str = "", finished: int | None = None) -> None:
        r, g = attempt.ready, attempt.grant
        self._send(TaskFailed(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token, self.id, reason, message,
                              retryable, finished or now_ms(), exit_code, started, log_ref))

    def heartbeats(self, attempts: list[Attempt], wall_ms: int) -> int:
        """One heartbeat per inbox partition for the attempts running of its jobs; returns how many records."""
        by_partition: dict[int, list[HeldAttempt]] = {}
        for a in attempts:
            r, g = a.ready, a.grant
            by_partition.setdefault(partition_for(r.job_id, self.partitions), []).append(
                HeldAttempt(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token))
        sent = 0
        for p, held in sorted(by_partition.items()):
            for i in range(0, len(held), HEARTBEAT_BATCH):  # a record stays far below the inbox's maximum size
                beat = ExecutorHeartbeat(self.id, p, wall_ms, held[i:i + HEARTBEAT_BATCH])
                self._producer.produce(self.inbox, key=self.id.encode(), value=self.codec.encode(beat), partition=p)
                sent += 1
        self._producer.poll(0)
        return sent

    def renewals(self, pending: list[Pending], wall_ms: int) -> int:
        """The claims again, marked as renewals: a scheduler this slow to answer must not let their grants lapse.
        Packed per inbox partition like the claims (a scheduler this slow is behind on its inbox); how many
        records."""
        renewed = [ClaimTask(p.claim_id, p.ready.job_id, p.ready.run_id, p.ready.task_id, p.ready.attempt, self.id,
                             wall_ms, renewal=True) for p in pending]
        records = claim_records(renewed, self.partitions, self.codec.encode)
        for r in records:
            self._producer.produce(self.inbox, key=r.key, value=r.value, partition=r.partition)
        self._producer.poll(0)
        return len(records)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)

    def _upload_log(self, key: str, path: Path) -> str:
        try:
            if path.stat().st_size == 0:
                return EMPTY_LOG
            cap_log(path, self.log_limit_bytes)
            return self.store.put_log(f"{key}.log", path)
        except Exception as exc:  # a lost log must not lose the attempt's outcome
            log.warning("could not store the log of %s: %s", key, exc)
            return ""

    def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                    reason: str) -> None:
        log.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason)
        record = DeadLetter(topic, partition, offset, reason, now_ms(), key, value)
        self._producer.produce(self.dlq, key=key, value=self.codec.encode(record))
        self._producer.poll(0)

    def _send(self, event: Any) -> None:
        self._producer.produce(self.inbox, key=event.job_id.encode(), value=self.codec.encode(event))
        self._producer.poll(0)
