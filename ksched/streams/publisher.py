"""The outputs' producer: a librdkafka producer (a few microseconds per message, against about a hundred
through Faust's), its delivery reports feeding `Deliveries`, and the flush Faust waits for before it commits
input offsets, so an input's offset is committed only once all of its outputs were delivered.

Views (the compacted `jobs`, `runs` and `tasks` topics) are coalesced per key for `VIEW_LINGER_S` (and always
until the flush before a commit), as Kafka Streams' record cache does: a task that is offered, claimed, started
and done within that time writes its view once, not four times. A view so lags its decision by that much at most.
A crash loses the views not yet flushed; the shell's recovery publishes the current views of every job decided
past the committed offset. Tombstones of retired runs go out at once (they are in the outbox,
whose entries are dropped when their outputs are acknowledged).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ksched import kafka
from ksched.config import Settings
from ksched.errors import KschedError
from ksched.topics import MAX_OUTPUT_BYTES, MAX_STATE_BYTES, ensure_topics, topic_specs

from .deliveries import Deliveries
from .jobstore import Message

#: Views held for coalescing at most: past this many, they go out before the next flush.
MAX_PENDING_VIEWS = 20_000
#: How long the decision log, views, dead letters and the changelog linger in their producer to share requests.
#: Nothing waits for them but the commit, whose flush sends them at once. The broker's cost is per request (about
#: 1.6 ms of CPU each on a 2-core machine); at 5 ms this producer sent a request nearly every window under load:
#: produce requests per task in the throughput bench went from 4.2 to 2.9 at 20 ms (JMX, one run each).
BACKGROUND_LINGER_MS = 20
#: How long a view is held for coalescing at most (a view lags its decision by this much at most).
VIEW_LINGER_S = 0.1


class OutputError(KschedError):
    """Outputs could not be delivered; the worker stops so that their inputs are processed again."""


@dataclass
class Publisher:
    """The outputs' producer, and the flush Faust waits for before it commits input offsets."""

    settings: Settings
    failures: list[str] = field(default_factory=list)
    deliveries: Deliveries = field(default_factory=Deliveries)

    def __post_init__(self) -> None:
        self.view_topics = {self.settings.topic(t) for t in ("jobs", "runs", "tasks")}
        self._views: dict[tuple[str, bytes | None], Message] = {}
        self._views_since = 0.0  # when the oldest view held was added (monotonic)
        self.coalesced = 0  # views replaced by a later one before they went out
        conf = {"batch.num.messages": 2000, "message.max.bytes": max(MAX_OUTPUT_BYTES, MAX_STATE_BYTES) + 65536}
        # Two producers: what an executor or the next decision waits for (ready, control, the inbox) goes out at
        # once; the record of what happened (decision log, views, dead letters) lingers a few ms to share requests
        # (the broker's cost is per request more than per record).
        self.producer = kafka.producer(self.settings, **{"linger.ms": 0, **conf})
        self.background = kafka.producer(self.settings, **{"linger.ms": BACKGROUND_LINGER_MS, **conf})
        self.background_topics = self.view_topics | {self.settings.topic(t) for t in ("events", "dlq")}
        # Topics known to exist (the worker created them at start). A task of a new executor pool needs the
        # pool's ready topics: they are created on first use rather than failing every later commit.
        self.known = {spec.name for spec in topic_specs(self.settings)}

    def _ensure(self, topic: str) -> None:
        ready = self.settings.topic("ready.")
        parts = topic[len(ready):].split(".") if topic.startswith(ready) else []
        ensure_topics(self.settings, pools=(parts[0],) if len(parts) == 2 else ())
        self.known.add(topic)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def publish(self, messages: list[Message], source: tuple[int, int] | None = None) -> None:
        """Produce `messages`, the outputs of the inbox record at `source` (partition, offset) if given."""
        done = self._delivered
        now = [m for m in messages if m.topic not in self.view_topics or m.value is None]
        if len(now) < len(messages):
            if not self._views:
                self._views_since = time.monotonic()
            for m in messages:
                if m.topic in self.view_topics and m.value is not None:
                    self.coalesced += (m.topic, m.key) in self._views
                    self._views[(m.topic, m.key)] = m
            if len(self._views) >= MAX_PENDING_VIEWS:
                self._produce_views()
        self.views_due()
        if source is not None and now:
            generation = self.deliveries.sent(*source, len(now))
            done = partial(self._acknowledged, *source, generation)
        self._produce(now, done)

    def send(self, messages: list[Message], on_delivery: Any) -> None:
        """Produce `messages` (not views) now, with a delivery callback of the caller's."""
        self._produce(messages, on_delivery)

    def send_state(self, message: Message, on_delivery: Any) -> None:
        """Produce a record of the state's changelog: it lingers with the decision log (nothing waits for it but
        the commit, whose flush sends it at once)."""
        if message.partition is None:
            raise ValueError("a changelog record goes to its table partition's own changelog partition")
        self.background.produce(message.topic, message.value, message.key, message.partition,
                                on_delivery=on_delivery)

    def views_due(self) -> None:
        """Produce the views held for coalescing if the oldest has waited `VIEW_LINGER_S` (called on every publish
        and by the worker's timer)."""
        if self._views and time.monotonic() - self._views_since >= VIEW_LINGER_S:
            self._produce_views()

    def _produce_views(self) -> None:
        views, self._views = list(self._views.values()), {}
        self._produce(views, self._delivered)

    def _produce(self, messages: list[Message], done: Any) -> None:
        for m in messages:
            if m.topic not in self.known:
                self._ensure(m.topic)
            producer = self.background if m.topic in self.background_topics else self.producer
            if m.partition is None:
                producer.produce(m.topic, m.value, m.key, on_delivery=done)
            else:
                producer.produce(m.topic, m.value, m.key, m.partition, on_delivery=done)
        self.producer.poll(0)
        self.background.poll(0)

    def _acknowledged(self, partition: int, offset: int, generation: int, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")
        else:
            self.deliveries.acknowledged(partition, offset, generation)

    def flush_all(self, timeout_s: float) -> int:
        """Flush both producers; how many messages are still undelivered."""
        return int(self.producer.flush(timeout_s)) + int(self.background.flush(timeout_s))

    async def flush(self) -> None:
        self._produce_views()
        remaining = await asyncio.get_running_loop().run_in_executor(None, self.flush_all, 30.0)
        if remaining or self.failures:
            raise OutputError(f"{remaining} outputs undelivered; failures: {self.failures[:3]}")
