"""The inbox shell: dead letters, forwarding, redelivery, the outbox after a crash, and the due index."""

from __future__ import annotations

from typing import Any

import pytest

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ClaimTask, DeadLetter, JobAccepted, SubmitJob, TaskReady, Tick
from ksched.streams import shell as shell_mod
from ksched.streams.core.model import Params
from ksched.streams.deliveries import Deliveries
from ksched.streams.jobstore import JobRecord, Message, changes, decode_record, encode_record
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0

CODEC = default_codec()
SETTINGS = Settings(prefix="t", partitions=4)


def make() -> InboxShell:
    return InboxShell(SETTINGS, CODEC)


def submit(job_id: str, cron: str | None = None, command: str = "c1") -> tuple[int, bytes]:
    return partition_for(job_id, 4), CODEC.encode(SubmitJob(command, job(job_id, cron), T0))


def decoded(msgs: list[Message], topic: str) -> list[object]:
    return [CODEC.decode(m.value) for m in msgs if m.topic == topic and m.value is not None]


def test_a_submission_is_decided_and_its_outputs_go_to_their_topics_and_partitions() -> None:
    sh, store = make(), MemoryStore()
    p, raw = submit("once")
    out = sh.process(store, p, 0, b"once", raw)
    assert [type(e).__name__ for e in decoded(out, "t.events")] == ["JobAccepted", "RunTriggered", "TaskReady"]
    assert all(m.partition == p for m in out if m.topic in ("t.events", "t.jobs", "t.runs", "t.tasks"))
    assert isinstance(decoded(out, "t.ready.normal")[0], TaskReady)
    assert store.get(b"once") is not None


def test_an_undecodable_record_is_dead_lettered_with_its_reason_and_bytes() -> None:
    sh, store = make(), MemoryStore()
    out = sh.process(store, 1, 7, b"k", b"\x00junk")
    (dl,) = decoded(out, "t.dlq")
    assert isinstance(dl, DeadLetter)
    assert (dl.source_topic, dl.partition, dl.offset, dl.key, dl.value) == ("t.inbox", 1, 7, b"k", b"\x00junk")
    assert "expected magic C3 01" in dl.reason


def test_a_record_that_is_not_an_inbox_record_is_dead_lettered() -> None:
    sh = make()
    raw = CODEC.encode(JobAccepted("e", "c", "j", 1, job("j"), T0))
    (dl,) = decoded(sh.process(MemoryStore(), 0, 0, b"j", raw), "t.dlq")
    assert "is not an inbox record" in dl.reason  # type: ignore[attr-defined]


def test_an_invalid_job_from_a_raw_client_is_dead_lettered_and_rejected() -> None:
    sh = make()
    p = partition_for("bad", 4)
    raw = CODEC.encode(SubmitJob("c", job("bad", "99 * * * *"), T0))
    out = sh.process(MemoryStore(), p, 3, b"bad", raw)
    (dl,) = decoded(out, "t.dlq")
    assert "invalid cron expression" in dl.reason and dl.value == raw  # type: ignore[attr-defined]
    assert [type(e).__name__ for e in decoded(out, "t.events")] == ["JobRejected"]


def test_a_record_in_the_wrong_partition_is_forwarded_to_the_owner() -> None:
    sh = make()
    p, raw = submit("once")
    wrong = (p + 1) % 4
    out = sh.process(MemoryStore(), wrong, 0, b"whatever", raw)
    assert out == [Message("t.inbox", b"once", raw, p)]


def test_a_redelivered_record_is_applied_once() -> None:
    sh, store = make(), MemoryStore()
    p, raw = submit("once")
    sh.process(store, p, 5, b"once", raw)
    assert sh.process(store, p, 5, b"once", raw) == []
    assert sh.counters.duplicates == 1


def test_after_a_crash_the_outbox_is_published_again_before_anything_else() -> None:
    store = MemoryStore()
    p, raw = submit("once")
    first = make().process(store, p, 0, b"once", raw)  # state and outbox written; say the outputs were lost
    restarted = make()
    restarted.assigned({p})
    out = restarted.process(store, p, 0, b"once", raw)  # redelivered: skipped, but the outbox goes out again
    assert sorted(decoded(out, "t.events"), key=repr) == sorted(decoded(first, "t.events"), key=repr)
    assert decoded(out, "t.ready.normal") == decoded(first, "t.ready.normal")
    assert restarted.process(store, p, 1, None, CODEC.encode(Tick(p, T0 + 1000))) == []


def test_republishing_never_lets_an_older_view_overwrite_a_newer_one() -> None:
    store = MemoryStore()
    p, raw = submit("once")
    sh = make()
    first = sh.process(store, p, 0, b"once", raw)  # outbox entry 0 holds the READY views
    ready = decoded(first, "t.ready.normal")[0]
    claim = ClaimTask("cl", "once", ready.run_id, ready.task_id, 1, "ex1", T0)  # type: ignore[attr-defined]
    sh.process(store, p, 1, b"once", CODEC.encode(claim))  # the state (and the published view) is CLAIMED
    # The state is newer than the outbox entry that will be replayed, as after a crash between the two.
    rec = decode_record(store.get(b"once") or b"", store.get)
    store.put(b"once", encode_record(JobRecord(rec.applied, rec.state, [(0, first)])))
    restarted = make()
    restarted.assigned({p})
    out = restarted.process(store, p, 2, None, CODEC.encode(Tick(p, T0 + 1000)), committed=0)
    task_views = decoded(out, "t.tasks")
    assert task_views and task_views[-1].state == "CLAIMED"  # type: ignore[attr-defined]
    assert [type(e).__name__ for e in decoded(out, "t.events")] == ["JobAccepted", "RunTriggered", "TaskReady"]


def test_outputs_of_inputs_before_the_restart_position_are_not_published_again() -> None:
    store = MemoryStore()
    p, raw = submit("once")
    make().process(store, p, 0, b"once", raw)
    restarted = make()
    restarted.assigned({p})
    # Consumption restarts at offset 1: the submission's outputs were flushed before that commit.
    assert restarted.process(store, p, 1, None, CODEC.encode(Tick(p, T0 + 1000)), committed=1) == []


def test_outbox_entries_below_the_committed_offset_are_dropped_when_the_job_is_written() -> None:
    sh, store = make(), MemoryStore()
    p, raw = submit("once")
    ready = decoded(sh.process(store, p, 0, b"once", raw), "t.ready.normal")[0]
    assert [o for o, _ in decode_record(store.get(b"once") or b"", store.get).outbox] == [0]
    claim = ClaimTask("cl", "once", ready.run_id, ready.task_id, 1, "ex1", T0)  # type: ignore[attr-defined]
    sh.process(store, p, 1, b"once", CODEC.encode(claim), committed=1)
    assert [o for o, _ in decode_record(store.get(b"once") or b"", store.get).outbox] == [1]


def test_outbox_entries_whose_outputs_were_delivered_are_dropped_before_the_commit() -> None:
    """The broker acknowledged every output of offsets 0..1 (nothing committed yet): those entries go; the
    entry of offset 2, whose outputs are not acknowledged, stays."""
    sh, store = make(), MemoryStore()
    p, raw = submit("once")
    ready = decoded(sh.process(store, p, 0, b"once", raw), "t.ready.normal")[0]
    claim = ClaimTask("cl", "once", ready.run_id, ready.task_id, 1, "ex1", T0)  # type: ignore[attr-defined]
    sh.process(store, p, 1, b"once", CODEC.encode(claim), delivered=None)
    assert [o for o, _ in decode_record(store.get(b"once") or b"", store.get).outbox] == [0, 1]
    sh.process(store, p, 2, b"once", CODEC.encode(claim), committed=0, delivered=1)  # the same claim: regranted
    assert [o for o, _ in decode_record(store.get(b"once") or b"", store.get).outbox] == [2]


def test_deliveries_advance_only_over_inputs_whose_outputs_are_all_acknowledged() -> None:
    d = Deliveries()
    g = d.sent(0, 10, 2)
    d.sent(0, 11, 1)
    d.sent(1, 10, 1)
    d.acknowledged(0, 11, g)  # a later input's output first: nothing before it is known to be out
    assert d.through(0) is None
    d.acknowledged(0, 10, g)
    assert d.through(0) is None  # one of offset 10's two outputs is still out
    d.acknowledged(0, 10, g)
    assert (d.through(0), d.through(1)) == (11, None)


def test_deliveries_of_a_partition_forgotten_meanwhile_do_not_count() -> None:
    d = Deliveries()
    old = d.sent(0, 5, 1)
    d.forget({0})  # reassigned: offset 5 is processed again and its outputs sent again
    new = d.sent(0, 5, 1)
    d.acknowledged(0, 5, old)
    assert d.through(0) is None
    d.acknowledged(0, 5, new)
    assert d.through(0) == 5


def test_a_tick_decides_only_for_jobs_that_are_due(monkeypatch: pytest.MonkeyPatch) -> None:
    sh, store = make(), MemoryStore()
    p = 0
    registered = [j for j in (f"job{i}" for i in range(4000)) if partition_for(j, 4) == p][:500]
    for n, job_id in enumerate(registered):
        cron = "* * * * * *" if n == 0 else "0 0 1 1 *"  # one per-second job, the rest yearly
        sh.process(store, p, n, job_id.encode(), CODEC.encode(SubmitJob(f"c{n}", job(job_id, cron), T0)))
    calls: list[str] = []
    real = shell_mod.core.decide

    def counting(state, event, now, params):  # type: ignore[no-untyped-def]
        calls.append(state.job_id if state else "?")
        return real(state, event, now, params)

    monkeypatch.setattr(shell_mod.core, "decide", counting)
    out = sh.process(store, p, 10_000, None, CODEC.encode(Tick(p, T0 + 1000)))
    assert calls == [registered[0]]
    assert [type(e).__name__ for e in decoded(out, "t.events")] == ["RunTriggered", "TaskReady"]


def test_the_due_index_is_rebuilt_when_a_partition_is_assigned_again() -> None:
    store = MemoryStore()
    p, raw = submit("cronjob", "* * * * * *")
    make().process(store, p, 0, b"cronjob", raw)
    fresh = make()
    fresh.assigned({p})
    out = fresh.process(store, p, 1, None, CODEC.encode(Tick(p, T0 + 1000)))
    assert any(isinstance(e, TaskReady) for e in decoded(out, "t.events"))


def test_claims_arrive_through_the_same_inbox() -> None:
    sh, store = make(), MemoryStore()
    p, raw = submit("once")
    ready = decoded(sh.process(store, p, 0, b"once", raw), "t.ready.normal")[0]
    assert isinstance(ready, TaskReady)
    claim = ClaimTask("cl", "once", ready.run_id, ready.task_id, 1, "ex1", T0)
    out = sh.process(store, p, 1, b"once", CODEC.encode(claim))
    grant = decoded([m for m in out if m.topic == "t.control"], "t.control")[0]
    assert type(grant).__name__ == "ClaimGranted"
    assert [m.key for m in out if m.topic == "t.control"] == [b"ex1"]


def test_recovery_ignores_the_stores_own_bookkeeping_keys() -> None:
    store = MemoryStore()
    p, raw = submit("cronjob", "* * * * * *")
    make().process(store, p, 0, b"cronjob", raw)
    store.put(b"__faust\x00offset__", b"68")  # Faust's persisted changelog offset lives in the same DB
    fresh = make()
    fresh.assigned({p})
    assert fresh.process(store, p, 1, None, CODEC.encode(Tick(p, T0 + 1000)))


def test_job_records_round_trip_including_earlier_revisions_and_the_outbox() -> None:
    from dataclasses import replace

    from tests.sim import Sim

    sim = Sim()
    sim.submit(job("rt", "*/10 * * * * *"))
    sim.tick(T0 + 10_000)
    state = replace(sim.state, revisions={1: sim.state.spec}, revision=2)  # type: ignore[arg-type]
    rec = JobRecord(7, state, [(7, [Message("t.events", b"k", b"\x00v", 1), Message("t.x", None, None)])])
    for _ in range(2):  # the second time from the encoder's cache
        # The definitions live under keys of their own; the record's journal holds them for this write.
        assert decode_record(encode_record(rec, changes(None, rec.state))) == rec


def test_after_a_gap_in_ticks_leases_are_renewed_instead_of_lapsing() -> None:
    """The worker was down (no ticks for 20 s) while an executor ran its attempt and heartbeated; the first
    tick after the gap renews the lease, and only a later silence of a whole lease loses the attempt."""
    from ksched.schemas.events import AttemptEnded, ClaimGranted, TaskHeartbeat, TaskStarted

    sh, store = make(), MemoryStore()
    p, raw = submit("leased")
    offsets = iter(range(100))
    out = sh.process(store, p, next(offsets), b"leased", raw)
    ready = next(e for e in decoded(out, "t.events") if isinstance(e, TaskReady))
    claim = ClaimTask("c#1", "leased", ready.run_id, ready.task_id, 1, "ex1", T0)
    out = sh.process(store, p, next(offsets), b"leased", CODEC.encode(claim))
    grant = next(e for e in decoded(out, "t.events") if isinstance(e, ClaimGranted))
    sh.process(store, p, next(offsets), b"leased", CODEC.encode(
        TaskStarted("leased", ready.run_id, ready.task_id, 1, grant.fencing_token, "ex1", T0)))
    sh.process(store, p, next(offsets), None, CODEC.encode(Tick(p, T0)))

    def tick(at: int) -> list[object]:
        return [e for e in decoded(sh.process(store, p, next(offsets), None, CODEC.encode(Tick(p, at))), "t.events")
                if isinstance(e, AttemptEnded)]

    assert tick(T0 + 20_000) == []  # 20 s without ticks: a lease is 10 s, but the scheduler was the one away
    hb = TaskHeartbeat("leased", ready.run_id, ready.task_id, 1, grant.fencing_token, "ex1", T0 + 21_000)
    sh.process(store, p, next(offsets), b"leased", CODEC.encode(hb))
    for s in range(21, 31):
        assert tick(T0 + s * 1000) == []
    lapsed = [e for s in range(31, 33) for e in tick(T0 + s * 1000)]  # then ticking on, with no heartbeat
    assert [e.outcome for e in lapsed] == ["LOST"]  # type: ignore[attr-defined]


def test_views_are_coalesced_per_key_until_the_flush_and_decisions_go_out_at_once() -> None:
    """The publisher holds view records (last one per key wins) and produces decisions and tombstones at once."""
    from ksched.streams.publisher import Publisher

    pub = Publisher(Settings(prefix="t", partitions=4, bootstrap_servers="127.0.0.1:9"))
    pub.producer.purge()
    pub.background.purge()
    # The records produced, counted as they are handed over: librdkafka's queue length also counts the error
    # events of the unreachable bootstrap, which arrive whenever they do.
    produced: list[tuple[str, bytes | None]] = []
    pub.producer = pub.background = _Recorder(produced)
    decision = Message("t.events", b"j", b"\x00decision", 1)
    first, second = Message("t.tasks", b"j@1/a", b"\x00v1", 1), Message("t.tasks", b"j@1/a", b"\x00v2", 1)
    tombstone = Message("t.runs", b"j@0", None, 1)
    pub.publish([decision, first, tombstone], (1, 0))
    pub.publish([second, Message("t.runs", b"j@1", b"\x00r", 1)], (1, 1))
    assert produced == [("t.events", b"j"), ("t.runs", b"j@0")]  # the decision and the tombstone
    assert pub.coalesced == 1 and list(pub._views.values()) == [second, Message("t.runs", b"j@1", b"\x00r", 1)]
    pub._produce_views()
    assert produced[2:] == [("t.tasks", b"j@1/a"), ("t.runs", b"j@1")] and not pub._views


class _Recorder:
    """Stands in for a librdkafka producer: records the (topic, key) of what it is given."""

    def __init__(self, produced: list[tuple[str, bytes | None]]) -> None:
        self.produced = produced

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *args: Any, **kwargs: Any) -> None:
        self.produced.append((topic, key))

    def poll(self, timeout: float) -> int:
        return 0


def test_a_partition_taken_over_rebuilds_its_due_index_from_the_records_heads_without_decoding_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each record's head carries the wake-up the shell computed; recovery reads it instead of decoding the job,
    unless the job has outputs to publish again or was written past the restart position."""
    from ksched.streams import jobstore

    settings = Settings(prefix="t", partitions=1)
    store, sh = MemoryStore(), InboxShell(settings, CODEC)
    inputs: list[tuple[bytes | None, object]] = [
        (b"daily", SubmitJob("c1", job("daily", "0 0 * * *"), T0)),
        (b"sec", SubmitJob("c2", job("sec", "* * * * * *"), T0)),
        (b"once", SubmitJob("c3", job("once"), T0)),
        (None, Tick(0, T0 + 1000)),
    ]
    offset = 0
    for key, event in inputs:
        out = sh.process(store, 0, offset, key, CODEC.encode(event), delivered=offset)
        offset += 1
        for ready in decoded(out, "t.ready.normal"):  # claimed: a lease deadline to wake at
            claim = ClaimTask(f"cl{offset}", ready.job_id, ready.run_id, ready.task_id, 1, "ex1", T0)  # type: ignore[attr-defined]
            sh.process(store, 0, offset, ready.job_id.encode(), CODEC.encode(claim), delivered=offset)  # type: ignore[attr-defined]
            offset += 1
    expected = dict(sh.due_index(0)._wake)
    assert set(expected) == {"daily", "sec", "once"}

    def recover(committed: int, head: bool, lookahead_ms: int = 0) -> tuple[dict[str, int], int]:
        decodes = 0
        real = jobstore.decode_record

        def counting(raw: bytes, fetch: object = None) -> object:
            nonlocal decodes
            decodes += 1
            return real(raw, fetch) if fetch is not None else real(raw)  # type: ignore[arg-type]

        monkeypatch.setattr(jobstore, "decode_record", counting)
        if not head:
            monkeypatch.setattr(jobstore, "_HEAD", __import__("re").compile(rb"(?!)"))
        fresh = InboxShell(settings, CODEC, Params(lookahead_ms=lookahead_ms))
        fresh.assigned({0})
        other = CODEC.encode(SubmitJob("c9", job("other", "0 0 1 1 *"), T0))
        fresh.process(MemoryStore(dict(store.data)), 0, offset, b"other", other,
                      committed=committed)
        monkeypatch.undo()
        index = dict(fresh.due_index(0)._wake)
        index.pop("other", None)
        return index, decodes

    by_head, decoded_with_head = recover(offset, head=True)
    by_decoding, decoded_without = recover(offset, head=False)
    assert by_head == by_decoding == expected
    assert decoded_with_head == 0 and decoded_without == 3
    # Written past the restart position: decoded (it may have to be written again and its views republished).
    _, decoded_replaying = recover(0, head=True)
    assert decoded_replaying == 3
    # Under another look-ahead the wake-ups written are not this worker's: decoded, and computed anew.
    ahead, decoded_ahead = recover(offset, head=True, lookahead_ms=500)
    assert decoded_ahead == 3 and ahead["sec"] == expected["sec"] - 500


def test_an_executors_heartbeat_for_a_partition_is_decided_as_each_attempts_own_heartbeat() -> None:
    from ksched.schemas.events import ArtifactRef, ClaimGranted, ExecutorHeartbeat, HeldAttempt, JobSpec, TaskHeartbeat
    from ksched.schemas.events import TaskSpec as Spec
    from tests.samples import DIGEST

    ref = ArtifactRef(DIGEST, "x.sh", 10)
    spec = JobSpec("par", [Spec("a", ref), Spec("b", ref)])  # two attempts of one job on one executor
    p = partition_for("par", 4)
    elsewhere = next(f"other{i}" for i in range(100) if partition_for(f"other{i}", 4) != p)

    def claimed() -> tuple[InboxShell, MemoryStore, list[HeldAttempt]]:
        sh, store = make(), MemoryStore()
        out = sh.process(store, p, 0, b"par", CODEC.encode(SubmitJob("c1", spec, T0)))
        held = []
        for i, r in enumerate(decoded(out, "t.ready.normal"), start=1):
            claim = ClaimTask(f"cl{i}", "par", r.run_id, r.task_id, 1, "ex1", T0)  # type: ignore[attr-defined]
            (grant,) = decoded(sh.process(store, p, i, b"par", CODEC.encode(claim)), "t.control")
            assert isinstance(grant, ClaimGranted)
            held.append(HeldAttempt("par", grant.run_id, grant.task_id, 1, grant.fencing_token))
        assert len(held) == 2
        return sh, store, held

    sh, store, held = claimed()
    before = decode_record(store.get(b"par") or b"").state
    foreign = HeldAttempt(elsewhere, f"{elsewhere}@x", f"{elsewhere}@x/main", 1, 1)
    beat = ExecutorHeartbeat("ex1", p, T0 + 5_000, [*held, foreign])
    out = sh.process(store, p, 3, b"ex1", CODEC.encode(beat))
    (fwd,) = [m for m in out if m.topic == "t.inbox"]
    assert fwd.partition == partition_for(elsewhere, 4) and fwd.key == elsewhere.encode()
    assert CODEC.decode(fwd.value) == TaskHeartbeat(elsewhere, f"{elsewhere}@x", f"{elsewhere}@x/main", 1, 1, "ex1",
                                                   T0 + 5_000)
    after = decode_record(store.get(b"par") or b"").state
    assert after != before  # the leases moved
    # The same as the two heartbeats sent one by one.
    sh2, store2, held2 = claimed()
    for i, h in enumerate(held2):
        sh2.process(store2, p, 3 + i, b"par", CODEC.encode(
            TaskHeartbeat("par", h.run_id, h.task_id, 1, h.fencing_token, "ex1", T0 + 5_000)))
    assert decode_record(store2.get(b"par") or b"").state == after
    # Delivered again (a redelivery after a crash): applied once.
    assert sh.process(store, p, 3, b"ex1", CODEC.encode(beat)) == [fwd]
    assert decode_record(store.get(b"par") or b"").state == after


def test_only_jobs_with_work_at_hand_stay_decoded_and_a_sleeping_one_is_read_again_when_it_wakes() -> None:
    sh, store = make(), MemoryStore()
    jobs = {"daily": "0 0 3 * * *", "persecond": "* * * * * *", "once": None}
    for p in range(4):  # the partitions' clocks (until a partition has one, every job stays decoded)
        sh.process(store, p, 0, b"t", CODEC.encode(Tick(p, T0)))
    for offset, (job_id, cron) in enumerate(jobs.items(), start=1):
        p, raw = submit(job_id, cron)
        sh.process(store, p, offset, job_id.encode(), raw)
    cached = {job_id for _, job_id in sh.jobs._records}
    assert cached == {"persecond", "once"}  # "once" has its run active; "daily" sleeps until 03:00 tomorrow
    p, raw = submit("daily", jobs["daily"])
    assert sh.process(store, p, 1, b"daily", raw) == []  # still known as applied: read from the table
    tomorrow = T0 + 20 * 3600 * 1000  # 04:00 the next day
    out = sh.process(store, p, 10, b"t", CODEC.encode(Tick(p, tomorrow)))
    assert [r.job_id for r in decoded(out, "t.ready.normal")] == ["daily"]  # type: ignore[attr-defined]
    assert (p, "daily") in sh.jobs._records  # its run is active now


def test_keep_warm_keeps_active_jobs_and_those_waking_soon() -> None:
    from ksched.streams.core.decide import keep_warm
    from tests.sim import Sim

    sim = Sim()
    sim.submit(job("j", "0 0 3 * * *"))
    assert sim.state is not None
    assert not keep_warm(sim.state, T0 + 3_600_000, T0, 60_000)
    assert keep_warm(sim.state, T0 + 60_000, T0, 60_000)
    assert not keep_warm(sim.state, None, T0, 60_000) and not keep_warm(None, T0, T0, 60_000)
    once = Sim()
    once.submit(job("o"))
    assert keep_warm(once.state, None, T0, 60_000)  # its run is active


def test_a_long_outbox_is_kept_under_keys_of_its_own_written_once_and_deleted_when_done() -> None:
    """A busy job's outbox holds the outputs of every input since the last known delivery; kept in the job record it
    was rewritten with every event (40 KB a write in a 1,002-task fan-out). Past `OUTBOX_INLINE` entries each entry
    gets a key of its own: the record keeps offsets, an entry leaving the outbox is deleted, and a worker taking the
    partition over still publishes every entry again."""
    from dataclasses import replace

    from ksched.streams import jobstore

    sh, store = make(), MemoryStore()
    p, raw = submit("busy", "* * * * * *")
    sh.process(store, p, 0, b"busy", raw)
    for i in range(1, 101):  # nothing is known to be delivered: the outbox keeps its last entries
        sh.process(store, p, i, None, CODEC.encode(Tick(p, T0 + 1000 * i)))
    stored = store.get(b"busy") or b""
    rec = decode_record(stored, store.get)
    assert len(rec.outbox) > jobstore.OUTBOX_INLINE and rec.apart == {o for o, _ in rec.outbox}
    apart_keys = {k for k in store.data if k.startswith(b"busy\x00x\x00")}
    assert apart_keys == {jobstore.outbox_key("busy", o).encode() for o, _ in rec.outbox}  # none left behind
    inline = jobstore.encode_record(replace(rec, apart=frozenset()))
    assert decode_record(inline, store.get) == rec  # the same outbox, whichever way it is stored
    assert 4 * len(stored) < len(inline)
    restarted = make()
    restarted.assigned({p})
    first = rec.outbox[0][0]
    out = restarted.process(store, p, 101, None, CODEC.encode(Tick(p, T0 + 101_000)), committed=first)
    events = [m for m in out if m.topic == "t.events"]
    assert len(events) >= sum(1 for _, msgs in rec.outbox for m in msgs if m.topic == "t.events")
