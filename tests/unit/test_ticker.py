"""The ticker holds a partition's ticks while its workers have not consumed the last few (`streams.ticker`)."""

from __future__ import annotations

from ksched.streams.ticker import TickBacklog


def written(backlog: TickBacklog, partition: int, *offsets: int) -> None:
    for offset in offsets:
        backlog.sent(partition)
        backlog.delivered(partition, offset)


def test_partitions_whose_ticks_were_consumed_are_ticked() -> None:
    b = TickBacklog(limit=3)
    written(b, 0, 10, 11, 12)
    written(b, 1, 5, 6, 7)
    assert b.due([0, 1], {0: 13, 1: 8}) == [0, 1]


def test_a_partition_with_limit_unconsumed_ticks_is_held_until_they_are_consumed() -> None:
    b = TickBacklog(limit=3)
    written(b, 0, 10, 20, 30)
    written(b, 1, 5)
    assert b.due([0, 1], {0: 10, 1: 6}) == [1]
    assert b.due([0, 1], {0: 21, 1: 6}) == [0, 1]  # two of three consumed: one unconsumed


def test_ticks_still_in_flight_count_even_when_the_offsets_cannot_be_read() -> None:
    b = TickBacklog(limit=2)
    b.sent(0)
    b.sent(0)
    assert b.due([0, 1], None) == [1]
    b.delivered(0, None)  # failed: not in the partition
    assert b.due([0, 1], None) == [0, 1]


def test_unknown_committed_offsets_hold_nothing_back() -> None:
    b = TickBacklog(limit=1)
    written(b, 0, 1, 2, 3)
    assert b.due([0], None) == [0]
    assert b.due([0], {}) == [0]  # the group never committed the partition


def test_no_limit_ticks_every_partition() -> None:
    b = TickBacklog(limit=0)
    written(b, 0, 1, 2, 3, 4, 5)
    assert b.due([0], {0: 0}) == [0]


def test_what_is_remembered_stays_bounded_while_the_offsets_cannot_be_read() -> None:
    b = TickBacklog(limit=3)
    written(b, 0, *range(10_000))
    assert b.due([0], {0: 0}) == []
    assert b.due([0], {0: 9_998}) == [0]
