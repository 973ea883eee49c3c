"""The leader's ticker: a `Tick` into every inbox partition at each whole interval, but never more than a few
unconsumed ones into a partition whose workers are behind.

Why hold ticks back: a tick fires what is due by its own time, so a tick queued behind a backlog (a bulk
registration, a worker taking over) fires its occurrences as if on time, minutes late; executors then claim them,
are granted them and refuse them as too late, each a round trip through the inbox the workers are already behind
on. With at most `limit` ticks outstanding per partition, the tick written once the workers have caught up jumps
the partition clock ahead: the late-tick path records the occurrences of the gap in one decision per job (as
missed or caught up, per the job's misfire policy) and renews leases (`clock.PartitionClocks.advance`).

`TickBacklog` is the rule (no Kafka, no clock); `run_ticker` moves the data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ksched import kafka
from ksched.config import Settings
from ksched.schemas.codec import default_codec
from ksched.schemas.events import Tick
from ksched.topics import app_id

from .jobstore import Message

log = logging.getLogger(__name__)

#: How long before a tick's boundary the group's committed offsets are read at most (they are committed every
#: `KSCHED_COMMIT_INTERVAL_S`, so a fresher read would not tell much more); the read may take most of it.
READ_AHEAD_S = 0.4
#: Committed offsets read this long ago still hold ticks back when a read fails (a loaded broker answers slowly);
#: past it the ticker ticks as if the workers were caught up rather than stop time. Short: after a broker outage the
#: group's coordinator may not answer for a while, and offsets from before the outage would hold every tick back.
STALE_AFTER_S = 3.0


@dataclass
class TickBacklog:
    """The ticks written into each partition that its consumer group may not have consumed yet."""

    #: At most this many unconsumed ticks per partition (0: no limit).
    limit: int
    _in_flight: dict[int, int] = field(default_factory=dict)
    _written: dict[int, deque[int]] = field(default_factory=dict)

    def sent(self, partition: int) -> None:
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1

    def delivered(self, partition: int, offset: int | None) -> None:
        """The broker answered for a tick sent to `partition`: stored at `offset`, or failed (None)."""
        self._in_flight[partition] = max(0, self._in_flight.get(partition, 0) - 1)
        if offset is not None:
            # Bounded: past `limit` unconsumed ticks none are written, so only while the committed offsets cannot be
            # read do more arrive, and then the newest ones are what counts.
            self._written.setdefault(partition, deque(maxlen=self.limit + 16)).append(offset)

    def due(self, partitions: Iterable[int], committed: dict[int, int] | None) -> list[int]:
        """The partitions that get the next tick. `committed`: the group's committed offset per partition (the
        next record it will read), None when it could not be read; a partition it does not name is not held back
        for its written ticks (nothing is known of them), only for those still in flight."""
        out = []
        for p in partitions:
            written = self._written.get(p)
            if written is not None and committed is not None and p in committed:
                while written and written[0] < committed[p]:
                    written.popleft()
            unconsumed = self._in_flight.get(p, 0)
            if committed is not None and p in committed and written:
                unconsumed += len(written)
            if self.limit <= 0 or unconsumed < self.limit:
                out.append(p)
        return out


def _log_held(held_since: dict[int, int], partitions: list[int], due: list[int], now_ms: int, limit: int) -> None:
    for p in partitions:
        if p not in due and p not in held_since:
            held_since[p] = now_ms
            log.warning("inbox partition %d is %d ticks behind: holding its ticks until it catches up", p, limit)
        elif p in due and p in held_since:
            log.info("inbox partition %d caught up: ticking again after %.1f s held", p,
                     (now_ms - held_since.pop(p)) / 1000)


def committed_offsets(consumer: Any, topic: str, partitions: list[int], timeout_s: float) -> dict[int, int] | None:
    """The group's committed offset per partition (partitions with none left out), None if they could not be read."""
    from confluent_kafka import TopicPartition

    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    except Exception as exc:  # never stop time because the offsets could not be read: tick as if caught up
        log.debug("committed offsets of %s not read: %s", topic, exc)
        return None
    return {tp.partition: int(tp.offset) for tp in found if tp.error is None and tp.offset >= 0}


async def run_ticker(settings: Settings, worker_name: str, is_leader: Callable[[], bool],
                     should_stop: Callable[[], bool], publish: Callable[[list[Message], Any], None]) -> None:
    """On the leader only: a tick into every inbox partition at each whole interval (see the module's doc).
    `publish(messages, on_delivery)` produces them, calling `on_delivery(err, msg)` for each."""
    interval = settings.tick_interval_s
    if interval <= 0:
        log.warning("ticker disabled (KSCHED_TICK_INTERVAL_S <= 0): time only moves with ticks from elsewhere")
        return
    codec = default_codec()
    inbox = settings.topic("inbox")
    partitions = list(range(settings.partitions))
    backlog = TickBacklog(settings.tick_backlog)
    reader = kafka.consumer(settings, group=app_id(settings)) if settings.tick_backlog > 0 else None
    loop = asyncio.get_running_loop()

    def on_delivery(err: Any, msg: Any) -> None:
        backlog.delivered(msg.partition(), None if err is not None else msg.offset())

    read_ahead = min(READ_AHEAD_S, interval * 0.4)
    held_since: dict[int, int] = {}
    last_read: tuple[float, dict[int, int]] | None = None
    try:
        while not should_stop():
            now = time.time()
            boundary = (int(now / interval) + 1) * interval
            await asyncio.sleep(max(0.0, boundary - read_ahead - now))
            committed = None
            if reader is not None and is_leader():
                read = await loop.run_in_executor(None, committed_offsets, reader, inbox, partitions,
                                                  max(0.05, read_ahead * 0.9))
                if read is not None:
                    last_read = (time.monotonic(), read)
                elif last_read is not None and time.monotonic() - last_read[0] > STALE_AFTER_S:
                    last_read = None
                committed = None if last_read is None else last_read[1]
            await asyncio.sleep(max(0.0, boundary - time.time()))
            if not is_leader():
                continue
            now_ms = round(boundary * 1000)
            due = backlog.due(partitions, committed)
            _log_held(held_since, partitions, due, now_ms, settings.tick_backlog)
            for p in due:
                backlog.sent(p)
            publish([Message(inbox, None, codec.encode(Tick(p, now_ms, worker_name)), p) for p in due], on_delivery)
    finally:
        if reader is not None:
            reader.close()
