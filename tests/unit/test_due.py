"""The due-time index: which jobs a tick visits, after moves, removals and compaction."""

from __future__ import annotations

from ksched.streams.core.due import DueIndex


def test_a_tick_takes_the_jobs_due_by_then_earliest_first_and_they_leave_the_index() -> None:
    due = DueIndex()
    for job, wake in (("late", 30), ("early", 10), ("now", 20)):
        due.set(job, wake)
    assert (len(due), due.wake_of("now"), due.wake_of("nope")) == (3, 20, None)
    assert due.pop_due(20) == ["early", "now"]
    assert (len(due), due.wake_of("early"), due.wake_of("late")) == (1, None, 30)
    assert due.pop_due(29) == []
    assert due.pop_due(30) == ["late"]


def test_moving_or_removing_a_job_leaves_no_stale_wake_up() -> None:
    due = DueIndex()
    due.set("moved", 10)
    due.set("moved", 50)
    due.set("gone", 10)
    due.set("gone", None)
    due.set("kept", 40)
    due.set("kept", 40)  # the same instant again: still one wake-up
    assert (len(due), due.wake_of("moved"), due.wake_of("gone")) == (2, 50, None)
    assert due.pop_due(45) == ["kept"]
    assert due.pop_due(100) == ["moved"]
    assert due.pop_due(100) == []


def test_many_moves_compact_the_heap_without_losing_a_job() -> None:
    due = DueIndex()
    for t in range(3000):  # one job moved 3,000 times: the heap is compacted, not grown without bound
        due.set("busy", 10_000 - t)
    due.set("other", 5)
    assert len(due._heap) <= 4 * len(due) + 1024 + 1
    assert due.pop_due(7_001) == ["other", "busy"]  # busy last woke at 10,000 - 2,999
    assert len(due) == 0
