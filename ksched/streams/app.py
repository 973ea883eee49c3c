"""The Faust app: one agent over the inbox, one RocksDB table of job states, and the leader's ticker.

The agent is a shell around `streams.shell.InboxShell` (which is a shell around the pure
`streams.core.decide`): it hands each record to the shell with a view of the table partition the
record belongs to, and publishes what comes back. Decisions never happen here.

Outputs go out through `publisher.Publisher`; Faust's private internals are used only through `faustcompat`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from ksched.config import Settings
from ksched.errors import ConfigError
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.topics import MAX_STATE_BYTES, app_id, changelog_topic

from . import faustcompat
from .core.model import Params
from .jobstore import Message
from .localstate import CommitRecord
from .metrics import Metrics, queue_depths
from .publisher import Publisher
from .shell import InboxShell, decision_params
from .ticker import run_ticker

log = logging.getLogger(__name__)


@dataclass
class Changelog:
    """The table's changelog, produced through the outputs' librdkafka producer rather than Faust's: a record
    through Faust's aiokafka producer cost about a hundred microseconds of the worker's one busy thread, and a
    bulk registration writes one per job. Faust's flush before it commits input offsets waits for this producer
    too (`faustcompat.also_flush`), so an input is committed only once its state reached the changelog, as before.
    Each partition's last delivered offset is recorded in its RocksDB, as Faust does (its recovery reads on from
    there)."""

    table: Any
    topic: str
    publisher: Publisher
    _delivered: dict[int, int] = field(default_factory=dict)

    def send(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.publisher.send_state(Message(self.topic, key, value, partition), self._on_delivery)

    def _on_delivery(self, err: Any, msg: Any) -> None:  # in whichever thread polls or flushes the producer
        if err is not None:
            self.publisher.failures.append(f"{msg.topic()}: {err}")
        else:
            self._delivered[msg.partition()] = max(self._delivered.get(msg.partition(), -1), msg.offset())

    def persist(self) -> None:
        """Write the delivered offsets into their partitions' RocksDB (on the event loop's thread)."""
        while self._delivered:
            partition, offset = self._delivered.popitem()
            faustcompat.set_persisted_offset(self.table, self.topic, partition, offset)


@dataclass
class FaustStore:
    """`streams.jobstore.Store` over one partition of the Faust table: its RocksDB, and the changelog."""

    table: Any
    partition: int
    changelog: Changelog

    def __post_init__(self) -> None:
        self._db = faustcompat.partition_db(self.table, self.partition)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value)
        self.changelog.send(self.partition, key, value)

    def delete(self, key: bytes) -> None:
        if self._db.get(key) is not None:
            self._db.delete(key)
            self.changelog.send(self.partition, key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return faustcompat.partition_items(self.table, self.partition)


#: RocksDB settings of each partition's store. Faust's defaults (64 MiB write buffers, up to three per partition,
#: a 2 GiB block cache per partition) keep a worker's whole state in memtables until it reaches gigabytes: RSS grew
#: with every registered job (8.6 KiB per job at 20,000 jobs). Small write buffers flush to SST files early; the
#: block cache keeps the hot blocks (the job store keeps recent records decoded above it).
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
    "block_cache_size": 8 * 1024 * 1024,
}


@dataclass
class StreamsApp:
    app: Any
    shell: InboxShell
    settings: Settings
    publisher: Publisher
    metrics: Metrics

    def close(self) -> None:
        self.publisher.flush_all(30)


def faust_credentials(settings: Settings) -> Any:
    """The librdkafka-style security settings as Faust (aiokafka) takes them, or None for a plaintext cluster."""
    conf = settings.kafka_config()
    protocol = conf.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        import ssl

        context = ssl.create_default_context(cafile=conf.get("ssl.ca.location"))
        if conf.get("ssl.certificate.location"):
            context.load_cert_chain(conf["ssl.certificate.location"], conf.get("ssl.key.location"),
                                    conf.get("ssl.key.password"))
        if conf.get("ssl.endpoint.identification.algorithm", "https") == "none":
            context.check_hostname = False
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"security.protocol: {protocol!r} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    return faust.SASLCredentials(username=conf.get("sasl.username"), password=conf.get("sasl.password"),
                                 mechanism=conf.get("sasl.mechanism", "PLAIN"), ssl_context=context)


def create_app(settings: Settings, worker_name: str = "worker", datadir: Path | None = None,
               params: Params | None = None, web_port: int | None = None, web_host: str = "127.0.0.1",
               web_url: str | None = None) -> StreamsApp:
    """`web_host` is where the API listens (loopback unless told otherwise); `web_url` is where the other
    workers reach it when they forward a request about a job this worker owns (default: host and port)."""
    faustcompat.tune_consumer()
    faustcompat.uncommitted_from_beginning({settings.topic("inbox"), settings.topic("commands")})
    faustcompat.fetches_only_active_partitions()
    faustcompat.commits_across_gaps()
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
        table_standby_replicas=settings.standby_replicas,
        producer_acks=-1,
        producer_linger=0.001,
        # No compression of the changelog: with a key per task, records are small, and aiokafka compresses on the
        # worker's event loop (lz4 was a quarter of its samples while jobs were registered in bulk; without it
        # registration went from 306 to 377 jobs/s, `bench recovery --jobs 20000 --cases lone`, one run each).
        producer_compression_type=None,
        producer_max_request_size=MAX_STATE_BYTES,
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_host=web_host,
        broker_client_id=f"{app_id(settings)}-{worker_name}",
        # Failover: a dead worker's partitions move after `session_timeout_s`; a worker restarted under the
        # same name rejoins at once with its old assignment (static membership, KIP-345).
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        consumer_group_instance_id=f"{app_id(settings)}-{worker_name}",
        canonical_url=web_url or f"http://{web_host}:{web_port or 6066}",
        broker_credentials=faust_credentials(settings),
        logging_config=None,
    )
    faustcompat.resume_keeps_what_flows(app)
    metrics = Metrics(settings.partitions)
    shell = InboxShell(settings, default_codec(), params or decision_params(settings), hooks=metrics)
    streams = StreamsApp(app, shell, settings, Publisher(settings), metrics)
    table = _wire(streams, worker_name)
    # What this worker committed, so that after a crash it can tell whether its local state is still the newest.
    faustcompat.after_commit(app, CommitRecord(Path(app.conf.datadir), settings.topic("inbox")).committed)
    if web_port is not None:
        from .web import install

        install(app, table, shell, settings, worker_name, metrics)
    return streams


def _wire(streams: StreamsApp, worker_name: str) -> Any:
    app, shell, settings, publisher = streams.app, streams.shell, streams.settings, streams.publisher
    inbox_name = settings.topic("inbox")
    inbox = app.topic(inbox_name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("jobstate", partitions=settings.partitions, key_type=bytes, value_type=bytes,
                      options=dict(ROCKSDB_OPTIONS))

    changelog = Changelog(table, changelog_topic(settings), publisher)

    async def flush() -> None:
        await publisher.flush()
        changelog.persist()

    faustcompat.also_flush(app, flush)

    async def scheduler(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            committed = faustcompat.committed_offset(app, inbox_name, msg.partition)
            store = FaustStore(table, msg.partition, changelog)
            outputs = shell.process(store, msg.partition, msg.offset, msg.key, msg.value,
                                    committed=committed, delivered=publisher.deliveries.through(msg.partition))
            publisher.publish(outputs, (msg.partition, msg.offset))
            changelog.persist()

    app.agent(inbox, name="scheduler")(scheduler)

    # Clients write commands to their own topic, so the broker's ACLs can let them submit without letting them
    # write executor reports; the forwarder copies each into the inbox partition of its job (the inbox stays the
    # one history replay reads). A command forwarded twice is one command: its command id is remembered.
    commands = app.topic(settings.topic("commands"), key_type=bytes, value_type=bytes,
                         partitions=settings.partitions)

    async def forwarder(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            owner = partition_for(msg.key.decode(errors="replace"), settings.partitions) if msg.key else None
            publisher.publish([Message(inbox_name, msg.key, msg.value, owner)])

    app.agent(commands, name="forwarder")(forwarder)

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
    app.task(lambda: run_ticker(settings, worker_name, app.is_leader, lambda: app.should_stop, publisher.send))
    app.task(lambda: _measure_queues(streams))
    app.task(lambda: _views_out(streams))
    return table


async def _views_out(streams: StreamsApp) -> None:
    """Views held for coalescing go out after the publisher's view linger even when no record comes to publish
    them."""
    while not streams.app.should_stop:
        await asyncio.sleep(streams.publisher.view_linger_s / 2)
        streams.publisher.views_due()


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
