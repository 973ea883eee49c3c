"""The leader's ticker against a real broker: a partition whose consumer group is behind gets at most
`KSCHED_TICK_BACKLOG` unconsumed ticks; once the group has consumed them it is ticked again. (A new leader's
ticker knows nothing of the ticks written before it: it may add up to that many more.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from ksched import kafka
from ksched.streams.publisher import Publisher
from ksched.streams.ticker import run_ticker
from ksched.topics import app_id, ensure_topics
from tests.support import settings_for

pytestmark = [pytest.mark.broker]


def test_a_partition_behind_is_held_at_the_backlog_and_ticked_again_once_consumed(bootstrap: str,
                                                                                  tmp_path: Path) -> None:
    s = settings_for(bootstrap, tmp_path, tick_interval_s=0.5, tick_backlog=3)
    ensure_topics(s)
    inbox = s.topic("inbox")
    group = kafka.consumer(s, group=app_id(s))  # stands in for the streams workers: it commits, never reads
    publisher = Publisher(s)

    def ends() -> list[int]:
        return [group.get_watermark_offsets(TopicPartition(inbox, p), timeout=10)[1] for p in range(s.partitions)]

    def commit(offsets: dict[int, int]) -> None:
        group.commit(offsets=[TopicPartition(inbox, p, o) for p, o in offsets.items()], asynchronous=False)

    async def scenario() -> tuple[list[int], list[int]]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_ticker(s, "t", lambda: True, stop.is_set, publisher.send))
        await asyncio.sleep(4.0)  # 8 intervals
        held = await asyncio.to_thread(ends)
        await asyncio.to_thread(commit, {0: 3})  # partition 0's workers consumed its ticks; the others did not
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.wait_for(task, 5)
        publisher.flush_all(10)
        return held, await asyncio.to_thread(ends)

    try:
        commit({p: 0 for p in range(s.partitions)})  # the workers are at the start and stay there
        held, after = asyncio.run(scenario())
        assert held == [3] * s.partitions
        assert after == [6] + [3] * (s.partitions - 1)  # three more into partition 0, then held again
    finally:
        group.close()
        publisher.flush_all(10)
