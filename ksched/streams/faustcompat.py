"""Every use of Faust's (and its aiokafka driver's) private internals, in one place, each with why.

faust-streaming 0.x has no public API for these; when it is upgraded, this is the module to check. The rest of
ksched talks to Faust only through its public API (App, Table, agents, tasks, signals, the web router).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

#: aiokafka's fetcher sends no fetch to a broker while any partition's fetched records, younger than this, wait to
#: be taken (its `prefetch_backoff`, 0.1 s by default): a record on another partition then waited for that, and the
#: worker's steps in `./dev bench dag` showed stalls of about 100 ms (completion -> child ready max 84-97 ms, claim
#: -> grant max 114 ms). Shorter alone, a partition left out of a fetch in flight waited for that fetch, which Faust
#: lets the broker hold for 1.5 s (the 1,002-task fan-out took 31-32 s against 16-20 s); so fetches are held at most
#: `FETCH_MAX_WAIT_MS` too. With both (two runs each, alternating with the defaults): the worker's steps max 19-47
#: ms, chain hand-off p99 71-86 ms (77-130), fan-out 10.5-12.8 s (24.9-29.6), fan-in hand-off 75-253 ms (805-883),
#: throughput 182 and 130 tasks/s (150 and 123; by the bench's measure then, which overstated both sides). An idle
#: worker fetches 20 times a second instead of 0.7.
PREFETCH_BACKOFF_S = 0.01
FETCH_MAX_WAIT_MS = 50


def tune_consumer() -> None:
    """Make Faust's consumer read committed records only, and fetch promptly.

    Faust sets `isolation_level=read_committed` only under exactly-once; ksched runs at-least-once but must
    never act on claims from executor transactions that were aborted. The consumer is created inside the
    driver's consumer thread (`_create_worker_consumer`), and aiokafka keeps the level in `_isolation_level` and
    the long poll in `_fetch_max_wait_ms`; its fetcher, made when the consumer starts, reads `_prefetch_backoff`
    as it files each fetch's records (see `PREFETCH_BACKOFF_S`).
    """
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_ksched_patched", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        return tuned(original(self, transport))

    thread_cls._create_worker_consumer = create
    thread_cls._ksched_patched = True


def tuned(consumer: Any) -> Any:
    """`consumer` (an aiokafka consumer not started yet) reading committed records only, and fetching promptly."""
    consumer._isolation_level = "read_committed"
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    start = consumer.start

    async def start_prompt() -> None:
        await start()
        consumer._fetcher._prefetch_backoff = PREFETCH_BACKOFF_S

    consumer.start = start_prompt
    return consumer


#: Input topics whose partitions start from their beginning when their group never committed an offset.
_FROM_BEGINNING: set[str] = set()


def uncommitted_from_beginning(topics: set[str]) -> None:
    """Make a partition of `topics` that its group never committed start from its beginning after a rebalance.

    Faust seeks each assigned partition back to its committed offset when a rebalance ends (`perform_seek`), as
    it drops the records it had fetched meanwhile; aiokafka's `seek_to_committed` leaves a partition with no
    committed offset (or offset 0) where its fetcher stood. A worker that fetched the first records of such a
    partition just before a second worker joined dropped them and went on after them: a submission was never
    decided (found in CI: the inbox record at offset 1 of a fresh partition, its group's first commit 4). The
    consumer's `auto.offset.reset` (earliest) does not help, as the fetcher's position is still valid.
    """
    _FROM_BEGINNING.update(topics)
    consumer_cls: Any = faust_aiokafka.Consumer
    if getattr(consumer_cls, "_ksched_seek_patched", False):
        return
    original = consumer_cls.perform_seek

    async def perform_seek(self: Any) -> None:
        await original(self)
        inputs = [tp for tp in self.assignment() if tp.topic in _FROM_BEGINNING]
        if not inputs:
            return
        committed = await self._thread.call_thread(self._thread._ensure_consumer().seek_to_committed,
                                                   *[faust_aiokafka.ensure_aiokafka_TP(tp) for tp in inputs])
        fresh = [tp for tp, offset in committed.items() if not offset]
        if fresh:
            await self._thread.seek_to_beginning(*fresh)

    consumer_cls.perform_seek = perform_seek
    consumer_cls._ksched_seek_patched = True


def fetches_only_active_partitions() -> None:
    """Make the consumer hand over records of the partitions Faust asked for, and never of any other.

    Faust passes aiokafka its live set of active partitions, and takes out of what comes back the records of
    partitions no longer in it. aiokafka reads an empty set as "every partition", and the set does become empty
    while a fetch waits: recovery pauses the changelog partitions it has read before it resumes the inputs. Records
    of inputs were then handed over (aiokafka's position moved past them) and dropped by Faust: found in CI, the
    triggers that were the first records of their partitions after a worker took them over were never decided
    (1 run in 10 of `test_chaos_streams`'s changelog test; an instrumented worker's log showed the fetch of offset 7
    of an input partition, not active, and its next fetch at offset 8). Each fetch now gets the set as it was when
    asked for, and none when it was empty.
    """
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_ksched_getmany_patched", False):
        return
    original = thread_cls.getmany

    async def getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is not None:  # None: a client-only app, which reads every partition
            active_partitions = frozenset(active_partitions)
            if not active_partitions:
                return {}
        return await original(self, active_partitions, timeout)

    thread_cls.getmany = getmany
    thread_cls._ksched_getmany_patched = True


def commits_across_gaps() -> None:
    """Make one commit pass every gap in a partition's offsets, not one gap a commit.

    The inbox has a gap at each transaction marker (every claim transaction writes one into each partition it
    claimed in). Faust records the gap before a fetched record with the record's own offset in it; once that record
    is acknowledged its offset is then twice in the acknowledged list, and a commit stops at the first repeat
    (`Consumer._new_offset` commits the first run of consecutive offsets). So each commit interval passed one
    marker: after 3,000 tasks the group's committed offsets stood half-way behind an idle worker and crept on ~10
    records a second per partition, and the ticker, which holds ticks back for a partition whose committed offset
    is 3 ticks behind, stopped time for minutes (`./dev bench firing_lag` after a warm-up: due → ready p50 86 s).
    The gap now holds only the offsets no record came for.
    """
    consumer_cls: Any = faust_consumer.Consumer
    if getattr(consumer_cls, "_ksched_gap_patched", False):
        return
    original = consumer_cls._add_gap

    async def add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        await original(self, tp, offset_from, offset_to - 1)  # called with the fetched record's own offset

    consumer_cls._add_gap = add_gap
    consumer_cls._ksched_gap_patched = True


def resume_keeps_what_flows(app: Any) -> None:
    """Make flow control's resume empty the agents' queues only when it ends a suspension.

    Faust suspends flow control when a rebalance begins, and empties the queues then. Every `resume` empties them
    again (mode's `FlowControlEvent`), and recovery calls it several times while the consumer's flow is already
    running: after reading the changelog, after resuming the standby partitions, and after resuming the inputs and
    seeking them to their committed offsets. A record fetched between that seek and the resume went into a queue,
    was emptied out, and was not fetched again, since the fetcher had passed it. Found with the same test: a log showed
    an input record handed to the scheduler agent's queue that the agent never got. A standby's changelog record
    can be lost the same way (the standby applies the later ones). The first resume after a suspension still
    empties the queues of what the previous assignment left in them.
    """
    flow = app.flow_control
    resume = flow.resume

    def resume_if_suspended() -> None:
        if not flow.is_active():
            resume()

    flow.resume = resume_if_suspended


def partition_items(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]]:
    """Every entry of one partition of a RocksDB-backed table.

    A Faust table iterates all its partitions at once; recovery needs one partition's entries, which only the
    RocksDB store's `_db_for_partition` gives.
    """
    db = table.data._db_for_partition(partition)
    for k, v in db.items():
        yield bytes(k), bytes(v)


def partition_db(table: Any, partition: int) -> Any:
    """The RocksDB (rocksdict, raw bytes) of one partition of a RocksDB-backed table, opened if it is not yet.

    Writing it directly skips what Faust does per key (serializers, its key index, the changelog send through its
    aiokafka producer); the caller sends the changelog itself."""
    return table.data._db_for_partition(partition)


def set_persisted_offset(table: Any, topic: str, partition: int, offset: int) -> None:
    """Record in a partition's RocksDB the changelog offset its writes reached, as Faust does when its own producer
    delivers a changelog record (its recovery reads the changelog after it). A partition whose database is closed
    (revoked since) is left alone: opening it again would hold a database Faust has let go."""
    if partition in table.data._dbs:
        table.data.set_persisted_offset(TP(topic, partition), offset)


def committed_offset(app: Any, topic: str, partition: int) -> int | None:
    """The input offset Faust last committed for a partition (the outbox is trimmed below it).

    Faust's consumer tracks it in `_committed_offset` and exposes no getter.
    """
    offset = app.consumer._committed_offset.get(TP(topic, partition))
    return None if offset is None else int(offset)


def also_flush(app: Any, flush: Callable[[], Awaitable[None]]) -> None:
    """Run `flush` whenever Faust flushes its producer before committing input offsets.

    Faust commits offsets only after `app.producer.flush()`; ksched's outputs go through its own librdkafka
    producer, so that flush must wait for it too, or an input could be committed before its outputs are out.
    """
    faust_flush = app.producer.flush

    async def flush_both() -> None:
        await faust_flush()
        await flush()

    app.producer.flush = flush_both


def settling(app: Any) -> bool:
    """True while partitions move or tables are being restored: a key may be missing only for now."""
    return bool(app.rebalancing or getattr(app, "in_recovery", False))


def after_commit(app: Any, fn: Callable[[dict[tuple[str, int], int]], None]) -> None:
    """Call `fn({(topic, partition): offset})` after each successful commit of input offsets.

    Faust tells its table manager (`app.tables.on_commit`) and nothing public; the worker records what it committed
    so that, after a crash, it can tell whether anyone committed after it (see `streams.worker`).
    """
    tables = app.tables
    original = tables.on_commit

    def on_commit(offsets: Any) -> None:
        original(offsets)
        fn({(tp.topic, tp.partition): int(offset) for tp, offset in offsets.items()})

    tables.on_commit = on_commit


def table_partition_dbs(datadir: Path, table: str) -> dict[int, Path]:
    """The RocksDB directory of each partition of `table` under a worker's datadir (Faust names them
    `<tabledir>/<table>-<partition>.db`)."""
    out: dict[int, Path] = {}
    for path in datadir.glob(f"**/{table}-*.db"):
        suffix = path.name[len(table) + 1:-3]
        if suffix.isdigit():
            out[int(suffix)] = path
    return out


def set_changelog_position(db_path: Path, offset: int) -> None:
    """Make Faust take the partition's local RocksDB as reflecting its changelog up to `offset`, so that its
    recovery reads nothing before it. Faust keeps that offset in the partition's own RocksDB under a key of its
    own (`Store.offset_key`, written by `set_persisted_offset`); this opens the database as Faust does, before the
    worker starts."""
    from faust.stores.rocksdb import RocksDBOptions, Store

    db = RocksDBOptions().open(db_path)
    try:
        db.put(Store.offset_key, str(offset).encode())
        db.flush()
    finally:
        db.close()
