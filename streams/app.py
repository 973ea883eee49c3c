"""The Faust app: one agent over the inbox, one RocksDB table of job states, and the leader's ticker.

The agent is a shell around `streams.shell.InboxShell` (which is a shell around the pure
`streams.core.decide`): it hands each record to the shell with a view of the table partition the
record belongs to, and publishes what comes back. Decisions never happen here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from ksched.config import Settings
from ksched.events import Tick
from ksched.topics import app_id
from schemas.codec import default_codec

from .core.model import Params
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


@dataclass
class StreamsApp:
    app: Any
    shell: InboxShell
    settings: Settings


def create_app(settings: Settings, worker_name: str = "worker", datadir: Path | None = None,
               params: Params | None = None, web_port: int | None = None) -> StreamsApp:
    _read_committed_consumer()
    datadir = datadir or settings.home / "streams" / worker_name
    app: Any = faust.App(
        app_id(settings),
        broker=f"kafka://{settings.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(datadir),
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
        logging_config=None,
    )
    shell = InboxShell(settings, default_codec(), params or Params(lease_ms=int(settings.lease_s * 1000)))
    inbox_name = settings.topic("inbox")
    inbox = app.topic(inbox_name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("jobstate", partitions=settings.partitions, key_type=bytes, value_type=bytes)

    async def publish(messages: list[Message]) -> None:
        for m in messages:
            await app.producer.send(m.topic, m.key, m.value, m.partition, None, None)

    async def scheduler(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            committed = app.consumer._committed_offset.get(TP(inbox_name, msg.partition))
            out = shell.process(FaustStore(table, msg.partition), msg.partition, msg.offset, msg.key, msg.value,
                                committed=committed)
            await publish(out)

    app.agent(inbox, name="scheduler")(scheduler)

    async def on_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        shell.assigned({tp.partition for tp in assigned if tp.topic == inbox_name})

    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        shell.revoked({tp.partition for tp in revoked if tp.topic == inbox_name})

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)

    async def ticker() -> None:
        """On the leader only: a tick into every inbox partition at each whole interval."""
        interval = settings.tick_interval_s
        if interval <= 0:
            log.warning("ticker disabled (KSCHED_TICK_INTERVAL_S <= 0): time only moves with ticks from elsewhere")
            return
        codec = default_codec()
        name = f"{worker_name}"
        while not app.should_stop:
            now = time.time()
            boundary = (int(now / interval) + 1) * interval
            await asyncio.sleep(max(0.0, boundary - now))
            if not app.is_leader():
                continue
            now_ms = round(boundary * 1000)
            for p in range(settings.partitions):
                await app.producer.send(inbox_name, None, codec.encode(Tick(p, now_ms, name)), p, None, None)

    app.task(ticker)
    return StreamsApp(app, shell, settings)
