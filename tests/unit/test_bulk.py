"""Bulk registration: the client packs submissions into `SubmitJobs` records per owning partition, and the shell
decides each as if it had come alone (`ksched.bulk`, `streams.shell.InboxShell._submissions`)."""

from __future__ import annotations

import pytest

from ksched.bulk import bulk_records
from ksched.config import Settings
from ksched.errors import JobSpecError
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import DeadLetter, JobAccepted, JobRejected, SubmitJob, SubmitJobs
from ksched.streams.jobstore import Message
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0

CODEC = default_codec()
SETTINGS = Settings(prefix="t", partitions=4)


def cmds(n: int, cron: str = "0 3 * * *") -> list[SubmitJob]:
    return [SubmitJob(f"c{i}", job(f"job{i:03d}", cron), T0) for i in range(n)]


def decoded(msgs: list[Message], topic: str) -> list[object]:
    return [CODEC.decode(m.value) for m in msgs if m.topic == topic and m.value is not None]


def test_submissions_are_packed_per_owning_partition_in_their_order() -> None:
    records = list(bulk_records(cmds(50), 4, CODEC.encode, max_jobs=7))
    assert sum(r.jobs for r in records) == 50
    seen: list[str] = []
    for r in records:
        bulk = CODEC.decode(r.value)
        assert isinstance(bulk, SubmitJobs) and bulk.partition == r.partition and len(bulk.submissions) <= 7
        assert {partition_for(c.job.job_id, 4) for c in bulk.submissions} == {r.partition}
        assert partition_for(r.key, 4) == r.partition  # a forwarder routing by key keeps it there
        seen += [c.job.job_id for c in bulk.submissions]
    assert sorted(seen) == [f"job{i:03d}" for i in range(50)]
    for p in range(4):
        mine = [j for j in seen if partition_for(j, 4) == p]
        assert mine == sorted(mine)


def test_a_record_over_the_size_limit_is_split_and_a_single_submission_over_it_is_an_error() -> None:
    one = len(CODEC.encode(SubmitJobs(0, cmds(1))))
    records = list(bulk_records(cmds(40), 1, CODEC.encode, max_jobs=40, max_bytes=one * 6))
    assert sum(r.jobs for r in records) == 40 and len(records) > 6
    assert all(len(r.value) <= one * 6 for r in records)
    with pytest.raises(JobSpecError, match="the inbox takes at most"):
        list(bulk_records(cmds(1), 1, CODEC.encode, max_bytes=one - 1))


def test_each_job_of_a_bulk_record_is_decided_and_stored_as_if_submitted_alone() -> None:
    sh, store = InboxShell(SETTINGS, CODEC), MemoryStore()
    (record, *_) = [r for r in bulk_records(cmds(40), 4, CODEC.encode) if r.partition == 1]
    bulk = CODEC.decode(record.value)
    out = sh.process(store, 1, 5, record.key, record.value)
    accepted = [e for e in decoded(out, "t.events") if isinstance(e, JobAccepted)]
    assert sorted(e.job_id for e in accepted) == sorted(c.job.job_id for c in bulk.submissions)
    assert all(store.get(c.job.job_id.encode()) is not None for c in bulk.submissions)
    assert all(m.partition == 1 for m in out)
    assert sh.process(store, 1, 5, record.key, record.value) == []  # redelivered: every job skips it
    assert sh.counters.duplicates == len(bulk.submissions)


def test_a_job_another_partition_owns_is_forwarded_there_alone() -> None:
    sh = InboxShell(SETTINGS, CODEC)
    mine, theirs = [c for c in cmds(20) if partition_for(c.job.job_id, 4) == 0][:2], \
        next(c for c in cmds(20) if partition_for(c.job.job_id, 4) == 2)
    out = sh.process(MemoryStore(), 0, 9, b"k", CODEC.encode(SubmitJobs(0, [mine[0], theirs, mine[1]])))
    assert Message("t.inbox", theirs.job.job_id.encode(), CODEC.encode(theirs), 2) in out
    assert len([e for e in decoded(out, "t.events") if isinstance(e, JobAccepted)]) == 2


def test_an_invalid_submission_is_rejected_and_dead_lettered_with_its_own_bytes_the_rest_accepted() -> None:
    sh = InboxShell(SETTINGS, CODEC)
    good = [c for c in cmds(30) if partition_for(c.job.job_id, 4) == 3][:2]
    bad = next(SubmitJob("cb", job(f"bad{i}", "99 * * * *"), T0) for i in range(100)
               if partition_for(f"bad{i}", 4) == 3)
    out = sh.process(MemoryStore(), 3, 4, b"k", CODEC.encode(SubmitJobs(3, [good[0], bad, good[1]])))
    (dl,) = decoded(out, "t.dlq")
    assert isinstance(dl, DeadLetter) and dl.offset == 4 and "invalid cron expression" in dl.reason
    assert dl.key == bad.job.job_id.encode() and CODEC.decode(dl.value) == bad
    events = decoded(out, "t.events")
    assert [e.job_id for e in events if isinstance(e, JobRejected)] == [bad.job.job_id]
    assert len([e for e in events if isinstance(e, JobAccepted)]) == 2


def test_a_job_named_twice_in_one_record_is_decided_twice_in_order() -> None:
    sh, store = InboxShell(SETTINGS, CODEC), MemoryStore()
    first = next(c for c in cmds(10) if partition_for(c.job.job_id, 4) == 0)
    second = SubmitJob("again", job(first.job.job_id, "0 4 * * *"), T0)
    out = sh.process(store, 0, 1, b"k", CODEC.encode(SubmitJobs(0, [first, second])))
    revisions = [e.revision for e in decoded(out, "t.events") if isinstance(e, JobAccepted)]
    assert revisions == [1, 2]
