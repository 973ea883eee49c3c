"""Where outputs go: each channel of the core's emits to its topic, key and partition; a record that cannot be
decided to the dead-letter topic, with the reason and its original bytes; a record in the wrong partition
to the partition that owns its job."""

from __future__ import annotations

import hashlib
import logging

from ksched.config import Settings
from ksched.schemas.codec import Codec
from ksched.schemas.events import DeadLetter
from ksched.topics import MAX_RECORD_BYTES, POOL_LABEL, ready_topic

from .core import emit as channels
from .jobstore import Message

log = logging.getLogger(__name__)

#: What a dead letter keeps of an original too large to keep whole.
DLQ_HEAD_BYTES = 1024


class Router:
    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self.inbox = settings.topic("inbox")
        self._topics = {
            channels.EVENTS: settings.topic("events"), channels.CONTROL: settings.topic("control"),
            channels.CATALOG: settings.topic("jobs"), channels.RUNS: settings.topic("runs"),
            channels.TASKS: settings.topic("tasks"), channels.DLQ: settings.topic("dlq"),
        }
        #: Compacted views: not kept in the outbox (after a crash the job's current views are published).
        self.view_topics = {self._topics[c] for c in (channels.CATALOG, channels.RUNS, channels.TASKS)}
        self.run_views = {self._topics[c] for c in (channels.RUNS, channels.TASKS)}

    def message(self, partition: int, emit: channels.Emit) -> Message:
        """An emit of a decision made in `partition` (a DLQ emit goes through `dead_letter` instead)."""
        if emit.channel == channels.READY:
            pool = emit.record.labels.get(POOL_LABEL, "")
            return Message(ready_topic(self.settings, emit.record.priority, pool), emit.key.encode(),
                           self.codec.encode(emit.record))
        if emit.channel == channels.CONTROL:
            return Message(self._topics[channels.CONTROL], emit.key.encode(), self.codec.encode(emit.record))
        record = None if emit.record is None else self.codec.encode(emit.record)
        # State topics and the decision log are co-partitioned with the inbox: same partition as the job.
        return Message(self._topics[emit.channel], emit.key.encode(), record, partition)

    def forward(self, job_id: str, value: bytes | None, owner: int) -> Message:
        """A record written to the wrong partition (a client with another partitioner), to its job's own."""
        return Message(self.inbox, job_id.encode(), value, owner)

    def dead_letter(self, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str,
                    at_ms: int) -> Message:
        """The record with the reason, and its original bytes when they fit in a dead letter; a larger original
        is named by its size and sha256, and its first bytes are kept."""
        if value is not None and len(value) > MAX_RECORD_BYTES:
            reason += (f" (original: {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}; "
                       f"its first {DLQ_HEAD_BYTES} bytes are kept)")
            value = value[:DLQ_HEAD_BYTES]
        log.warning("dead-lettered %s[%d]@%d: %s", self.inbox, partition, offset, reason)
        record = DeadLetter(self.inbox, partition, offset, reason, at_ms, key, value)
        return Message(self._topics[channels.DLQ], key, self.codec.encode(record), partition)
