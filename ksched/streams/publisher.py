"""The outputs' producer: a librdkafka producer (a few microseconds per message, against about a hundred
through Faust's), its delivery reports feeding `Deliveries`, and the flush Faust waits for before it commits
input offsets, so an input's offset is committed only once all of its outputs were delivered.

Views (the compacted `jobs`, `runs` and `tasks` topics) are coalesced per key until the flush before the next
commit (at most `view_linger_s`, about a commit interval), as Kafka Streams' record cache does: a task that is
offered, claimed, started and done within that time writes its view once, not four times. The decision log, views
and the changelog then linger in their producer until that flush too (`background_linger_ms`), so a view lags its
decision by about a commit interval, twice that at most.
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
#: How long the decision log, views, dead letters and the changelog linger in their producer at most to share
#: requests: the commit interval (nothing waits for them but the commit, whose flush sends them at once), within
#: these bounds. The broker's cost is per request (1.2-1.6 ms of CPU each on a 2-core machine), and librdkafka sends
#: one produce request per partition (librdkafka#1700), so each linger window costs a request per partition written.
#: Background requests per record in the throughput bench: 0.088 at a 20 ms linger, 0.036-0.045 at 500 ms.
BACKGROUND_LINGER_MS = (20, 1000)


def background_linger_ms(commit_interval_s: float) -> int:
    low, high = BACKGROUND_LINGER_MS
    return int(min(high, max(low, commit_interval_s * 1000)))
#: How long a view is held for coalescing at most: the commit interval (the flush before a commit sends every
#: view held), within these bounds. At 0.1 s (what it was) a task that waited longer than that for its grant wrote
#: its view at each step.
VIEW_LINGER_S = (0.1, 1.0)


def view_linger_s(commit_interval_s: float) -> float:
    low, high = VIEW_LINGER_S
    return min(high, max(low, commit_interval_s))


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
        self.view_linger_s = view_linger_s(self.settings.commit_interval_s)
        self.coalesced = 0  # views replaced by a later one before they went out
        conf = {"batch.num.messages": 2000, "message.max.bytes": max(MAX_OUTPUT_BYTES, MAX_STATE_BYTES) + 65536}
        # Two producers: what an executor or the next decision waits for (ready, control, the inbox) goes out at
        # once; the record of what happened (decision log, views, dead letters) lingers a few ms to share requests
        # (the broker's cost is per request more than per record).
        self.producer = kafka.producer(self.settings, **{"linger.ms": 0, **conf})
        linger = background_linger_ms(self.settings.commit_interval_s)
        self.background = kafka.producer(self.settings, **{"linger.ms": linger, **conf})
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
        """Produce the views held for coalescing if the oldest has waited `view_linger_s` (called on every publish
        and by the worker's timer)."""
        if self._views and time.monotonic() - self._views_since >= self.view_linger_s:
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
