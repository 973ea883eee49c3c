"""`ksched analytics`: keeps the analytics topics current from the decision log and the run and task views.

At least once, and idempotent: rows are keyed by their primary key and a sink upserts them, so a record read
twice (after a crash between producing and committing) rewrites the same row. Input offsets are committed only
after the batch's rows were acknowledged. A batch writes each changed row once (`rows.coalesce`). Tombstones of
views are not forwarded: analytics keeps history that the views trim. A record that cannot be decoded is
counted and skipped (the streams workers already dead-lettered whatever reached them undecodable).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from ksched import kafka
from ksched.config import Settings
from ksched.errors import KschedError
from ksched.schemas.codec import Codec, default_codec
from ksched.topics import MAX_OUTPUT_BYTES, analytics_topic, analytics_topic_specs, ensure_topics

from .rows import Row, coalesce, rows_for

log = logging.getLogger(__name__)
SOURCES = ("runs", "tasks", "events")


@dataclass
class Counters:
    records: int = 0
    rows: int = 0
    undecodable: int = 0
    batches: int = 0


@dataclass
class Projector:
    settings: Settings
    group: str = ""
    batch: int = 2000
    codec: Codec = field(default_factory=default_codec)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.group = self.group or f"{self.settings.prefix}-analytics"
        self._kinds = {self.settings.topic(k): k for k in SOURCES}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def rows_of(self, messages: list[Any]) -> list[Row]:
        rows: list[Row] = []
        for m in messages:
            value = m.value()
            if value is None:
                continue  # a view's tombstone: the analytics tables keep the history
            try:
                event = self.codec.decode(value)
            except KschedError as exc:
                self.counters.undecodable += 1
                log.warning("%s[%d]@%d: skipped, %s", m.topic(), m.partition(), m.offset(), exc)
                continue
            rows += rows_for(self._kinds[m.topic()], event, m.partition(), m.offset())
        return coalesce(rows)

    def run(self, once: bool = False) -> Counters:
        """Project until stopped; with `once`, until every source partition is read up to where it ended
        when this began (a batch catch-up: a live installation never goes quiet)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        ensure_topics(self.settings, extra=analytics_topic_specs(self.settings))
        consumer = kafka.consumer(self.settings, group=self.group)
        producer = kafka.producer(self.settings, **{"linger.ms": 5, "message.max.bytes": MAX_OUTPUT_BYTES + 65536})
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")

        ends: dict[tuple[str, int], int] = {}
        if once:
            tps = [TopicPartition(t, p) for t in self._kinds
                   for p in sorted(consumer.list_topics(t, timeout=15).topics[t].partitions)]
            for tp in tps:
                ends[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(tp, timeout=15)[1]
            start = consumer.committed(tps, timeout=15)
            for tp in start:  # nothing new since the last projection
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    ends.pop((tp.topic, tp.partition))
            consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                             for tp in start])
            self._drop_done(consumer, ends)
        else:
            consumer.subscribe(list(self._kinds))
        try:
            while not self._stop.is_set() and not (once and not ends):
                messages = [m for m in consumer.consume(self.batch, 0.5) if m.error() is None]
                if messages:
                    rows = self.rows_of(messages)
                    for r in rows:
                        producer.produce(analytics_topic(self.settings, r.table.name), r.value_bytes(),
                                         r.key_bytes(), on_delivery=delivered)
                        producer.poll(0)
                    if producer.flush(30) or failures:
                        raise KschedError(f"analytics rows undelivered: {failures[:3] or 'flush timed out'}")
                    consumer.commit(asynchronous=False)
                    self.counters.records += len(messages)
                    self.counters.rows += len(rows)
                    self.counters.batches += 1
                if once:
                    self._drop_done(consumer, ends)
        finally:
            consumer.close()
        return self.counters

    @staticmethod
    def _drop_done(consumer: Any, ends: dict[tuple[str, int], int]) -> None:
        """Forget the partitions read up to their end (a position past the end's control records counts)."""
        from confluent_kafka import TopicPartition

        if not ends:
            return
        for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
            if ends[(tp.topic, tp.partition)] == 0 or tp.offset >= ends[(tp.topic, tp.partition)]:
                ends.pop((tp.topic, tp.partition), None)


def main(settings: Settings, once: bool = False, group: str = "") -> int:
    projector = Projector(settings, group=group)
    signal.signal(signal.SIGTERM, lambda *_: projector.stop())
    signal.signal(signal.SIGINT, lambda *_: projector.stop())
    log.info("analytics: projecting %s into %s", ", ".join(settings.topic(k) for k in SOURCES),
             settings.topic("analytics.*"))
    c = projector.run(once)
    log.info("analytics stopped: %d records read, %d rows written in %d batches, %d undecodable skipped",
             c.records, c.rows, c.batches, c.undecodable)
    return 0
