"""The Faust app: one agent over the inbox, one RocksDB table of job states, and the leader's ticker.

The agent is a shell around `streams.shell.InboxShell` (which is a shell around the pure
`streams.core.decide`): it hands each record to the shell with a view of the table partition the
record belongs to, and publishes what comes back. Decisions never happen here.

Outputs go out through a librdkafka producer (a few microseconds per message, against about a hundred
through Faust's). Faust commits input offsets only after flushing its producer; that flush is extended
to flush this one too, so an input's offset is committed only once all of its outputs were delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from ksched import kafka
from ksched.config import Settings
from ksched.errors import KschedError
from ksched.schemas.codec import default_codec
from ksched.schemas.events import Tick
from ksched.topics import MAX_STATE_BYTES, app_id, ensure_topics, topic_specs

from .core.model import Params
from .deliveries import Deliveries
from .metrics import Metrics, queue_depths
from .shell import InboxShell, Message

log = logging.getLogger(__name__)


def _read_committed_consumer() -> None:
    """Faust reads with read_committed only under exactly-once; ksched runs at-least-once but must never
    act on claims from aborted executor transactions, so its consumer reads committed data only."""
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_ksched_patched", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._isolation_level = "read_committed"
        return consumer

    thread_cls._create_worker_consumer = create
    thread_cls._ksched_patched = True


@dataclass
class FaustStore:
    """`streams.shell.Store` over the Faust table, for the partition of the event being processed."""

    table: Any
    partition: int

    def get(self, key: bytes) -> bytes | None:
        value = self.table.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self.table[key] = value

    def delete(self, key: bytes) -> None:
        self.table.pop(key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self.table.data._db_for_partition(self.partition)
        for k, v in db.items():
            yield bytes(k), bytes(v)


class OutputError(KschedError):
    """Outputs could not be delivered; the worker stops so that their inputs are processed again."""


@dataclass
class Publisher:
    """The outputs' producer, and the flush Faust waits for before it commits input offsets."""

    settings: Settings
    failures: list[str] = field(default_factory=list)
    deliveries: Deliveries = field(default_factory=Deliveries)

    def __post_init__(self) -> None:
        self.producer = kafka.producer(self.settings, **{"linger.ms": 0, "batch.num.messages": 2000})
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
        if source is not None and messages:
            generation = self.deliveries.sent(*source, len(messages))
            done = partial(self._acknowledged, *source, generation)
        for m in messages:
            if m.topic not in self.known:
                self._ensure(m.topic)
            if m.partition is None:
                self.producer.produce(m.topic, m.value, m.key, on_delivery=done)
            else:
                self.producer.produce(m.topic, m.value, m.key, m.partition, on_delivery=done)
        self.producer.poll(0)

    def _acknowledged(self, partition: int, offset: int, generation: int, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")
        else:
            self.deliveries.acknowledged(partition, offset, generation)

    async def flush(self) -> None:
        remaining = await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, 30.0)
        if remaining or self.failures:
            raise OutputError(f"{remaining} outputs undelivered; failures: {self.failures[:3]}")


@dataclass
class StreamsApp:
    app: Any
    shell: InboxShell
    settings: Settings
    publisher: Publisher
    metrics: Metrics

    def close(self) -> None:
        self.publisher.producer.flush(30)


def create_app(settings: Settings, worker_name: str = "worker", datadir: Path | None = None,
               params: Params | None = None, web_port: int | None = None) -> StreamsApp:
    _read_committed_consumer()
    app: Any = faust.App(
        app_id(settings),
        broker=f"kafka://{settings.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(datadir or settings.home / "streams" / worker_name),
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger=0.001,
        # Job records of big DAG runs are large and very compressible JSON.
        producer_compression_type="lz4",
        producer_max_request_size=MAX_STATE_BYTES,
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_host="127.0.0.1",
        broker_client_id=f"{app_id(settings)}-{worker_name}",
        # Failover: a dead worker's partitions move after `session_timeout_s`; a worker restarted under the
        # same name rejoins at once with its old assignment (static membership, KIP-345).
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        consumer_group_instance_id=f"{app_id(settings)}-{worker_name}",
        canonical_url=f"http://127.0.0.1:{web_port or 6066}",
        logging_config=None,
    )
    metrics = Metrics(settings.partitions)
    shell = InboxShell(settings, default_codec(), params or Params(
        lease_ms=int(settings.lease_s * 1000), lookahead_ms=int(settings.lookahead_s * 1000)), hooks=metrics)
    streams = StreamsApp(app, shell, settings, Publisher(settings), metrics)
    table = _wire(streams, worker_name)
    if web_port is not None:
        from .web import install

        install(app, table, shell, settings, worker_name, metrics)
    return streams


def _wire(streams: StreamsApp, worker_name: str) -> Any:
    app, shell, settings, publisher = streams.app, streams.shell, streams.settings, streams.publisher
    inbox_name = settings.topic("inbox")
    inbox = app.topic(inbox_name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("jobstate", partitions=settings.partitions, key_type=bytes, value_type=bytes)

    faust_flush = app.producer.flush

    async def flush_both() -> None:
        await faust_flush()
        await publisher.flush()

    app.producer.flush = flush_both

    async def scheduler(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            committed = app.consumer._committed_offset.get(TP(inbox_name, msg.partition))
            outputs = shell.process(FaustStore(table, msg.partition), msg.partition, msg.offset, msg.key, msg.value,
                                    committed=committed, delivered=publisher.deliveries.through(msg.partition))
            publisher.publish(outputs, (msg.partition, msg.offset))

    app.agent(inbox, name="scheduler")(scheduler)

    async def on_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == inbox_name}
        publisher.deliveries.forget(partitions)
        shell.assigned(partitions)

    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == inbox_name}
        publisher.deliveries.forget(partitions)
        shell.revoked(partitions)

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)

    app.task(lambda: _quiet_clients())
    app.task(lambda: _ticker(streams, worker_name))
    app.task(lambda: _measure_queues(streams))
    return table


async def _ticker(streams: StreamsApp, worker_name: str) -> None:
    """On the leader only: a tick into every inbox partition at each whole interval."""
    app, settings = streams.app, streams.settings
    interval = settings.tick_interval_s
    if interval <= 0:
        log.warning("ticker disabled (KSCHED_TICK_INTERVAL_S <= 0): time only moves with ticks from elsewhere")
        return
    codec = default_codec()
    inbox_name = settings.topic("inbox")
    while not app.should_stop:
        now = time.time()
        boundary = (int(now / interval) + 1) * interval
        await asyncio.sleep(max(0.0, boundary - now))
        if not app.is_leader():
            continue
        now_ms = round(boundary * 1000)
        streams.publisher.publish([Message(inbox_name, None, codec.encode(Tick(p, now_ms, worker_name)), p)
                                   for p in range(settings.partitions)])


async def _quiet_clients() -> None:
    # After the worker has set up logging: the clients' debug records cost a tenth of the CPU otherwise.
    for name in ("aiokafka", "faust.transport", "faust.topics", "mode.timers"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))


async def _measure_queues(streams: StreamsApp) -> None:
    while not streams.app.should_stop:
        await asyncio.sleep(10)
        try:
            depths = await asyncio.get_running_loop().run_in_executor(None, queue_depths, streams.settings)
        except Exception as exc:  # a metrics read must not stop the worker
            log.debug("queue depth not measured: %s", exc)
            continue
        for (pool, prio), depth in depths.items():
            streams.metrics.queue_depth.labels(pool, prio).set(depth)
