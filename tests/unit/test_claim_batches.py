"""A claim transaction's claims go to the inbox as one `ClaimTasks` record per owning partition
(`executor.claims.claim_records`), and the shell decides each claim as if it had come alone
(`streams.shell.InboxShell._batch`)."""

from __future__ import annotations

from ksched.executor.claims import CLAIMS_PER_RECORD, claim_records
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ClaimGranted, ClaimRejected, ClaimTask, ClaimTasks, SubmitJob, TaskReady
from ksched.streams.jobstore import Message, decode_record
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0
from tests.unit.test_bulk import SETTINGS, decoded

CODEC = default_codec()


def ready_jobs(n: int, partition: int) -> tuple[InboxShell, MemoryStore, list[TaskReady]]:
    """`n` one-off jobs of one partition submitted (each ready now)."""
    sh, store = InboxShell(SETTINGS, CODEC), MemoryStore()
    ids = [j for j in (f"job{i:03d}" for i in range(400)) if partition_for(j, 4) == partition][:n]
    ready: list[TaskReady] = []
    for offset, job_id in enumerate(ids):
        raw = CODEC.encode(SubmitJob(f"c{offset}", job(job_id), T0))
        out = sh.process(store, partition, offset, job_id.encode(), raw)
        ready += [r for r in decoded(out, "t.ready.normal") if isinstance(r, TaskReady)]
    assert len(ready) == n
    return sh, store, ready


def claim(r: TaskReady, executor: str = "ex1", n: int = 1) -> ClaimTask:
    return ClaimTask(f"{r.task_id}#{r.attempt}@{executor}/{n}", r.job_id, r.run_id, r.task_id, r.attempt, executor, T0)


def test_claims_are_packed_per_owning_partition_in_their_order_and_one_alone_stays_a_claim() -> None:
    claims = [ClaimTask(f"cl{i}", f"job{i:03d}", f"job{i:03d}@1", f"job{i:03d}@1/main", 1, "ex1", T0)
              for i in range(300)]
    records = claim_records(claims, 4, CODEC.encode)
    seen: list[ClaimTask] = []
    for r in records:
        batch = CODEC.decode(r.value)
        assert isinstance(batch, ClaimTasks) and batch.partition == r.partition
        assert 1 < len(batch.claims) <= CLAIMS_PER_RECORD
        assert {partition_for(c.job_id, 4) for c in batch.claims} == {r.partition}
        assert r.key == batch.claims[0].job_id.encode()
        seen += batch.claims
    assert sorted(seen, key=lambda c: c.claim_id) == sorted(claims, key=lambda c: c.claim_id)
    for p in range(4):
        assert [c for c in seen if partition_for(c.job_id, 4) == p] == [c for c in claims
                                                                          if partition_for(c.job_id, 4) == p]
    (alone,) = claim_records(claims[:1], 4, CODEC.encode)
    assert CODEC.decode(alone.value) == claims[0] and alone.key == b"job000"
    assert alone.partition == partition_for("job000", 4)


def test_each_claim_of_a_batch_is_granted_and_stored_as_if_it_had_come_alone() -> None:
    sh, store, ready = ready_jobs(5, 1)
    claims = [claim(r) for r in ready]
    out = sh.process(store, 1, 100, b"k", CODEC.encode(ClaimTasks(1, claims)))
    grants = [g for g in decoded(out, "t.control") if isinstance(g, ClaimGranted)]
    assert sorted((g.task_id, g.claim_id) for g in grants) == sorted((c.task_id, c.claim_id) for c in claims)
    batched = {r.job_id: decode_record(store.get(r.job_id.encode()) or b"").state for r in ready}
    # The same claims sent one record each: the same states.
    sh2, store2, ready2 = ready_jobs(5, 1)
    for offset, r in enumerate(ready2, start=100):
        sh2.process(store2, 1, offset, r.job_id.encode(), CODEC.encode(claim(r)))
    assert batched == {r.job_id: decode_record(store2.get(r.job_id.encode()) or b"").state for r in ready2}
    # Delivered again (after a crash): every job skips it.
    assert sh.process(store, 1, 100, b"k", CODEC.encode(ClaimTasks(1, claims))) == []


def test_a_claim_of_a_job_another_partition_owns_is_forwarded_there_alone() -> None:
    sh, store, ready = ready_jobs(2, 0)
    theirs = ClaimTask("cl-x", "elsewhere", "elsewhere@1", "elsewhere@1/main", 1, "ex1", T0)
    assert partition_for("elsewhere", 4) != 0
    out = sh.process(store, 0, 50, b"k", CODEC.encode(ClaimTasks(0, [claim(ready[0]), theirs, claim(ready[1])])))
    assert Message("t.inbox", b"elsewhere", CODEC.encode(theirs), partition_for("elsewhere", 4)) in out
    assert len([g for g in decoded(out, "t.control") if isinstance(g, ClaimGranted)]) == 2


def test_two_claims_of_one_attempt_in_one_batch_are_decided_in_order() -> None:
    sh, store, (r,) = ready_jobs(1, 2)
    first, second = claim(r, "ex1"), claim(r, "ex2")
    out = sh.process(store, 2, 10, b"k", CODEC.encode(ClaimTasks(2, [first, second])))
    (grant,) = [g for g in decoded(out, "t.control") if isinstance(g, ClaimGranted)]
    (rejected,) = [g for g in decoded(out, "t.control") if isinstance(g, ClaimRejected)]
    assert grant.claim_id == first.claim_id and rejected.claim_id == second.claim_id


def test_renewals_in_a_batch_keep_each_grants_lease_as_alone() -> None:
    """An executor waiting on a slow scheduler renews its claims packed the same way (`Reporter.renewals`)."""
    from dataclasses import replace

    def renewed(batched: bool) -> dict[str, object]:
        sh, store, ready = ready_jobs(3, 3)
        claims = [claim(r) for r in ready]
        sh.process(store, 3, 100, b"k", CODEC.encode(ClaimTasks(3, claims)))
        later = [replace(c, at_ms=T0 + 20_000, renewal=True) for c in claims]
        if batched:
            sh.process(store, 3, 101, b"k", CODEC.encode(ClaimTasks(3, later)))
        else:
            for offset, c in enumerate(later, start=101):
                sh.process(store, 3, offset, c.job_id.encode(), CODEC.encode(c))
        return {r.job_id: decode_record(store.get(r.job_id.encode()) or b"").state for r in ready}

    before = renewed(batched=True)
    assert before == renewed(batched=False)
    sh, store, ready = ready_jobs(3, 3)
    sh.process(store, 3, 100, b"k", CODEC.encode(ClaimTasks(3, [claim(r) for r in ready])))
    granted = {r.job_id: decode_record(store.get(r.job_id.encode()) or b"").state for r in ready}
    assert before != granted  # the leases moved
