"""The patches of Faust's internals (`ksched.streams.faustcompat`), against stand-ins for its consumer."""

from __future__ import annotations

import asyncio
import collections
import inspect
from typing import Any

import aiokafka
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import TopicPartition
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from intervaltree import IntervalTree

from ksched.streams import faustcompat


class _Thread:
    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[TopicPartition] = []

    def _ensure_consumer(self) -> Any:
        return self

    async def seek_to_committed(self, *tps: TopicPartition) -> dict[TopicPartition, int | None]:
        return {tp: self.committed.get(tp) for tp in tps}

    async def call_thread(self, fn: Any, *args: Any) -> Any:
        return await fn(*args)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.to_beginning += tps


def test_an_input_partition_never_committed_starts_from_its_beginning_after_a_rebalance() -> None:
    faustcompat.uncommitted_from_beginning({"t.inbox"})
    consumer: Any = object.__new__(faust_aiokafka.Consumer)
    thread = _Thread({TopicPartition("t.inbox", 0): 7, TopicPartition("t.inbox", 1): None,
                      TopicPartition("t.inbox", 2): 0, TopicPartition("t.jobstate-changelog", 1): None})
    assigned = {TP("t.inbox", 0), TP("t.inbox", 1), TP("t.inbox", 2), TP("t.jobstate-changelog", 1)}
    consumer.__dict__.update(_thread=thread, assignment=lambda: assigned, _read_offset={}, _committed_offset={})
    assert getattr(faust_aiokafka.Consumer, "_ksched_seek_patched", False)
    # Faust's own seek runs first (the stand-in's `seek_to_committed` with no partitions seeks none), then ours.
    asyncio.run(faust_aiokafka.Consumer.perform_seek(consumer))
    # Partitions 1 (never committed) and 2 (committed 0, which aiokafka does not seek to) start over; a
    # changelog partition is the tables' business and is left alone.
    assert sorted(thread.to_beginning) == [TopicPartition("t.inbox", 1), TopicPartition("t.inbox", 2)]


def test_the_worker_consumer_reads_committed_records_and_fetches_promptly() -> None:
    faustcompat.tune_consumer()
    assert getattr(faust_aiokafka.AIOKafkaConsumerThread, "_ksched_patched", False)

    async def made() -> Any:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1500)
        # The attributes aiokafka's start() hands its fetcher, and the one the fetcher reads per fetch.
        assert consumer._fetch_max_wait_ms == 1500 and consumer._isolation_level == "read_uncommitted"
        assert "prefetch_backoff" in inspect.signature(Fetcher.__init__).parameters
        assert "self._prefetch_backoff" in inspect.getsource(Fetcher._get_actions_per_node) + inspect.getsource(
            Fetcher)
        consumer.start = _fake_start(consumer)  # no broker: start only makes the fetcher
        tuned = faustcompat.tuned(consumer)
        await tuned.start()
        await consumer._client.close()
        consumer._closed = True  # never connected: nothing else to close
        return tuned

    consumer = asyncio.run(made())
    assert consumer._isolation_level == "read_committed"
    assert consumer._fetch_max_wait_ms == faustcompat.FETCH_MAX_WAIT_MS
    assert consumer._fetcher._prefetch_backoff == faustcompat.PREFETCH_BACKOFF_S


def _fake_start(consumer: Any) -> Any:
    async def start() -> None:
        consumer._fetcher = type("FetcherStandIn", (), {"_prefetch_backoff": 0.1})()

    return start


def test_each_fetch_gets_the_active_partitions_as_they_were_and_none_when_there_are_none() -> None:
    """aiokafka reads an empty partition set as "every partition", and Faust hands it its live set, which recovery
    empties while a fetch waits; the fetch must get a copy, and no fetch is made for none."""
    faustcompat.fetches_only_active_partitions()
    asked: list[Any] = []

    async def call_thread(fn: Any, consumer: Any, active: Any, **kwargs: Any) -> dict[str, Any]:
        asked.append(active)
        return {"records": active}

    thread: Any = object.__new__(faust_aiokafka.AIOKafkaConsumerThread)
    thread.__dict__.update(call_thread=call_thread, _ensure_consumer=lambda: type("C", (), {"_max_poll_records": 9}))
    live = {TP("t.inbox", 0), TP("t-jobstate-changelog", 0)}
    asyncio.run(faust_aiokafka.AIOKafkaConsumerThread.getmany(thread, live, 1.0))
    live.clear()  # recovery pauses what it has read while the fetch waits
    assert asked == [{TP("t.inbox", 0), TP("t-jobstate-changelog", 0)}], "the fetch kept the set it was asked with"

    assert asyncio.run(faust_aiokafka.AIOKafkaConsumerThread.getmany(thread, set(), 1.0)) == {}
    assert len(asked) == 1, "no fetch for an empty set"
    asyncio.run(faust_aiokafka.AIOKafkaConsumerThread.getmany(thread, None, 1.0))  # a client-only app: all
    assert asked[-1] is None


def test_resuming_flow_empties_the_queues_only_after_a_suspension() -> None:
    from types import SimpleNamespace

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    flow = FlowControlEvent(initially_suspended=True)
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    faustcompat.resume_keeps_what_flows(SimpleNamespace(flow_control=flow))

    queue.put_nowait("left from before")
    flow.resume()  # ends the suspension: what was left goes
    assert queue.empty() and flow.is_active()
    queue.put_nowait("fetched since")
    flow.resume()  # recovery resumes again while records flow: they stay
    assert queue.qsize() == 1
    flow.suspend()  # a rebalance
    flow.resume()
    assert queue.empty()


class _Acks:
    """Faust's consumer's bookkeeping of acknowledged offsets and gaps, with its real methods."""

    _new_offset = faust_consumer.Consumer._new_offset

    def __init__(self) -> None:
        self._acked: dict[TP, list[int]] = collections.defaultdict(list)
        self._acked_index: dict[TP, set[int]] = collections.defaultdict(set)
        self._gap: dict[TP, IntervalTree] = collections.defaultdict(IntervalTree)
        self._committed_offset: dict[TP, int | None] = collections.defaultdict(lambda: None)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        await faust_consumer.Consumer._add_gap(self, tp, offset_from, offset_to)


def test_one_commit_passes_every_transaction_marker_behind_it() -> None:
    faustcompat.commits_across_gaps()
    acks, tp = _Acks(), TP("inbox", 0)
    acks._committed_offset[tp] = 101  # the next offset to read
    read = 100

    async def fetched_and_acked(offset: int) -> None:  # as Faust's `_drain_messages` and `ack` do
        nonlocal read
        if offset - read > 1:
            await acks._add_gap(tp, read + 1, offset)
        read = offset
        acks._acked[tp].append(offset)
        acks._acked_index[tp].add(offset)

    async def main() -> None:
        # Records 101-104, a claim transaction's marker at 105, records 106-109, a marker at 110, 111-114.
        for offset in [101, 102, 103, 104, 106, 107, 108, 109, 111, 112, 113, 114]:
            await fetched_and_acked(offset)

    asyncio.run(main())
    assert acks._new_offset(tp) == 115  # unpatched: 107, then 112, then 115, one commit interval each
    assert acks._acked[tp] == []


def test_the_worker_app_is_built_with_the_patches_against_lost_records(tmp_path: Any) -> None:
    """The patches above guard the worker only if `create_app` applies them. In a fresh interpreter: the tests
    above apply the class-level ones themselves. No broker is reached."""
    import subprocess
    import sys

    script = f"""
from pathlib import Path
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlQueue
from ksched.config import Settings
from ksched.streams.app import create_app

streams = create_app(Settings(bootstrap_servers="127.0.0.1:9", prefix="tunit", home=Path({str(tmp_path)!r})), "w")
flow = streams.app.flow_control
flow.resume()  # ends the initial suspension
queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
queue.put_nowait("fetched")
flow.resume()  # while records flow
print(sorted(k for k in ("_ksched_getmany_patched", "_ksched_patched")
             if getattr(faust_aiokafka.AIOKafkaConsumerThread, k, False)),
      getattr(faust_aiokafka.Consumer, "_ksched_seek_patched", False), queue.qsize(),
      getattr(faust_aiokafka.Consumer, "_ksched_gap_patched", False))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "['_ksched_getmany_patched', '_ksched_patched'] True 1 True", out.stdout
