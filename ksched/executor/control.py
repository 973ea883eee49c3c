"""This executor's control channel: the answers to its claims and the cancel requests for its attempts.

Owns the consumer of its partition of the control topic, assigned at the end offset before any claim is made,
so no answer is skipped. A ready record keyed by this executor comes just before the grant that takes up a slot
it offered with a completion (`supervision`); the grant finds it in the ledger. A grant for a waiting claim (or
an offer) hands the attempt to the runtime; one for a claim given up on, or arriving while the executor drains,
is handed straight back; a repeat is ignored (`ledger.answer_grant` decides). A rejection settles its claim; a
cancel carrying the attempt's fencing token ends it early.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from confluent_kafka import OFFSET_END, TopicPartition
from confluent_kafka import Message as KMessage

from ksched import kafka
from ksched.config import Settings
from ksched.errors import CodecError
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import CancelRequested, ClaimGranted, ClaimRejected, FailureReason, TaskReady

from .ledger import GrantAnswer, Ledger, Stats
from .reporting import Reporter
from .runtime import Runtime

log = logging.getLogger(__name__)


class Control:
    def __init__(self, settings: Settings, executor_id: str, ledger: Ledger, stats: Stats, reporter: Reporter) -> None:
        self.settings = settings
        self.id = executor_id
        self.ledger = ledger
        self.stats = stats
        self.reporter = reporter
        self.codec = default_codec()
        self._consumer = kafka.consumer(settings, group=f"{settings.prefix}-control-{self.id}",
                                        **{"fetch.wait.max.ms": kafka.FETCH_WAIT_MS})

    def assign(self) -> None:
        topic = self.settings.topic("control")
        partition = partition_for(self.id, self.settings.control_partitions)
        _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        # An explicit offset, resolved before any claim is made, so no answer to our claims is skipped.
        self._consumer.assign([TopicPartition(topic, partition, high if high >= 0 else OFFSET_END)])

    def run(self, runtime: Runtime, closed: threading.Event) -> None:
        """The control thread: until `closed`, turn each record for this executor into its action."""
        while not closed.is_set():
            m = self._consumer.poll(0.1)
            if m is None or m.error() is not None:
                continue
            try:
                event = self.codec.decode(m.value())
            except CodecError as err:
                self._refuse(m, str(err))
                continue
            if isinstance(event, TaskReady):
                if m.key() == self.id.encode():  # the grant of an offer of ours follows it
                    self.ledger.handed(event)
                continue
            if not isinstance(event, ClaimGranted | ClaimRejected | CancelRequested):
                self._refuse(m, f"{type(event).SCHEMA} is not a control record")
                continue
            if event.executor_id != self.id:
                continue
            if isinstance(event, ClaimGranted):
                self._on_grant(event, runtime)
            elif isinstance(event, ClaimRejected):
                if self.ledger.reject(event.claim_id):
                    self.stats.rejected += 1
            elif isinstance(event, CancelRequested):
                self._on_cancel(event, runtime)

    def _refuse(self, m: KMessage, reason: str) -> None:
        """A record that is not a control record: every executor reads every control partition, so the one
        its key names (keys are executor ids) dead-letters it, once; other executors pass it by."""
        if m.key() == self.id.encode():
            self.reporter.dead_letter(str(m.topic()), int(m.partition() or 0), int(m.offset() or 0), m.key(),
                                      m.value(), reason)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()

    def _on_grant(self, grant: ClaimGranted, runtime: Runtime) -> None:
        answer = self.ledger.answer(grant)
        attempt = answer.attempt
        if attempt is None:
            return  # a repeated grant for an attempt this executor already took on, or not for a claim of ours
        if answer.what is GrantAnswer.ABANDONED:
            waited = time.monotonic() - answer.claimed_at
            self.reporter.failed(attempt, FailureReason.CLAIM_ABANDONED,
                                 f"executor {self.id} gave up waiting for this grant after {waited:.0f} s",
                                 retryable=True, started=None, exit_code=None)
        elif answer.what is GrantAnswer.STOPPING:
            self.reporter.failed(attempt, FailureReason.EXECUTOR_STOPPED, f"executor {self.id} is shutting down",
                                 retryable=True, started=None, exit_code=None)
        else:
            self.stats.granted += 1
            if grant.claim_id.rpartition("/offer@")[1]:
                self.stats.handed += 1
            runtime.submit(attempt)

    def _on_cancel(self, req: CancelRequested, runtime: Runtime) -> None:
        attempt = self.ledger.attempt(f"{req.task_id}#{req.attempt}")
        if attempt is None or attempt.grant.fencing_token != req.fencing_token:
            return
        runtime.end_early(attempt, FailureReason.CANCELLED, req.reason or "cancelled")
