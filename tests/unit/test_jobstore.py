"""The job store's layout: a job record, its definitions and the tasks of large runs under keys of their own; an
event writes only what it changed; a crash between the job record and the other keys is never read half-written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, TaskSpec
from ksched.streams import jobstore
from ksched.streams.core.model import JobState
from ksched.streams.jobstore import JobRecord, JobStore, decode_record, is_job_key, spec_key, task_key
from ksched.streams.replay import MemoryStore
from tests.samples import DIGEST
from tests.sim import Sim

REF = ArtifactRef(DIGEST, "x.sh", 10)


def fan(job_id: str, n: int) -> JobSpec:
    once = RetryPolicy(max_attempts=1)
    middle = [TaskSpec(f"t{i:03d}", REF, depends_on=["start"], retry=once) for i in range(n - 2)]
    return JobSpec(job_id, [TaskSpec("start", REF, retry=once), *middle,
                            TaskSpec("end", REF, depends_on=[t.name for t in middle], retry=once)])


@dataclass
class Recording(MemoryStore):
    """Counts the writes; `crash_after` puts, the rest are lost (as the changelog's prefix after a kill -9)."""

    writes: list[bytes] = field(default_factory=list)
    crash_after: int | None = None

    def put(self, key: bytes, value: bytes) -> None:
        if self.crash_after is not None and len(self.writes) >= self.crash_after:
            return
        self.writes.append(key)
        super().put(key, value)

    def delete(self, key: bytes) -> None:
        self.writes.append(key)
        super().delete(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted(self.data.items())


def states(n: int) -> tuple[Sim, list[JobState]]:
    """A fan job of n tasks: submitted (start ready), start claimed, start completed (the middle ready)."""
    sim = Sim()
    sim.submit(fan("f", n))
    out = [sim.state]
    grant = sim.run(sim.readies()[0])
    assert grant is not None
    out.append(sim.state)
    return sim, [s for s in out if s is not None]


def test_a_small_job_is_one_record_per_event_its_definition_included() -> None:
    sim, (submitted, *_) = states(5)
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, submitted, []), None)
    assert store.writes == [b"f"]  # a submission of a small job is one write
    store.writes.clear()
    JobStore().save(store, 0, "f", JobRecord(1, sim.state, []), submitted)  # type: ignore[arg-type]
    assert store.writes == [b"f"]
    assert decode_record(store.get(b"f") or b"").state == sim.state  # nothing kept apart


def test_a_large_definition_is_kept_apart_and_written_before_the_record() -> None:
    _, (submitted, *_) = states(10)
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, submitted, []), None)
    assert store.writes[0] == spec_key("f", 1).encode() and store.writes[-1] == b"f"


def test_an_event_of_a_large_run_writes_the_job_record_and_only_the_tasks_it_changed() -> None:
    sim, (submitted, *_) = states(40)
    store, jobs = Recording(), JobStore()
    jobs.save(store, 0, "f", JobRecord(0, submitted, []), None)
    assert len(store.writes) == 1 + 1 + 40  # the record, the definition, every task of the new run
    (run_id,) = submitted.runs
    # The start task ran: it changed, and the 38 middle tasks became ready; `end` did not change.
    store.writes.clear()
    after = sim.state
    assert after is not None
    jobs.save(store, 0, "f", JobRecord(1, after, []), submitted)
    written = set(store.writes)
    assert b"f" in written and task_key("f", run_id, "end").encode() not in written
    assert len(written) == 1 + 1 + 38
    # One middle task claimed: the record and that task.
    grant_state = after
    sim.claim(sim.readies()[-1])
    store.writes.clear()
    jobs.save(store, 0, "f", JobRecord(2, sim.state, []), grant_state)  # type: ignore[arg-type]
    assert store.writes == [b"f", task_key("f", run_id, sim.readies()[-1].task_id.rsplit("/", 1)[1]).encode()]
    assert decode_record(store.get(b"f") or b"", store.get).state == sim.state


def test_the_record_is_as_big_for_a_large_run_as_for_a_small_one() -> None:
    sizes = {}
    for n in (10, 1000):
        sim, _ = states(n)
        sim.claim(sim.readies()[-1])
        sizes[n] = len(jobstore.encode_record(JobRecord(3, sim.state, [])))  # type: ignore[arg-type]
    assert sizes[1000] < 2 * sizes[10], sizes


def test_a_crash_after_the_job_record_is_read_through_its_journal_and_healed_by_the_next_write() -> None:
    sim, (submitted, *_) = states(40)
    after = sim.state
    assert after is not None
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, submitted, []), None)
    store.crash_after = len(store.writes) + 1  # the job record is written, none of the 38 tasks
    JobStore().save(store, 0, "f", JobRecord(1, after, []), submitted)
    store.crash_after = None
    (run_id,) = after.runs
    lost = task_key("f", run_id, "start").encode()
    assert store.get(lost) is not None and b"SUCCEEDED" not in (store.get(lost) or b"")  # the key is stale
    restarted = JobStore()
    rec = restarted.load(store, 0, "f")
    assert rec is not None and rec.state == after  # the journal lays the lost writes over the stale keys
    # The next write of the job carries them again, so they survive the journal being replaced. (The next state
    # is decided from the loaded one, as the shell does: unchanged tasks keep its objects.)
    sim.state = rec.state
    sim.claim(sim.readies()[-1])
    store.writes.clear()
    restarted.save(store, 0, "f", JobRecord(2, sim.state, []), rec.state)  # type: ignore[arg-type]
    assert lost in store.writes and len(store.writes) == 1 + 1 + 38
    assert decode_record(store.get(b"f") or b"", store.get).state == sim.state
    raw = store.get(b"f") or b""
    assert JobStore().load(_without_journal(store, raw), 0, "f") == JobRecord(2, sim.state, [])  # type: ignore[arg-type]


def _without_journal(store: MemoryStore, raw: bytes) -> MemoryStore:
    import json

    data = json.loads(raw)
    data.pop("j", None)
    copy = MemoryStore(dict(store.data))
    copy.put(b"f", json.dumps(data).encode())
    return copy


def test_a_crash_before_the_job_record_leaves_the_old_state_and_unreferenced_fresh_keys() -> None:
    _sim, (submitted, *_) = states(40)
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, submitted, []), None)
    # A second run of a new revision: its definition and its 40 tasks are fresh keys, written before the record.
    later = replace(submitted, spec=fan("f", 40), revision=2, revisions={1: submitted.spec},
                    runs={**submitted.runs, "f@2": replace(next(iter(submitted.runs.values())), run_id="f@2",
                                                            revision=2)})
    store.crash_after = len(store.writes) + 41  # the definition and the tasks, not the record
    JobStore().save(store, 0, "f", JobRecord(1, later, []), submitted)
    assert store.get(spec_key("f", 2).encode()) is not None
    assert JobStore().load(store, 0, "f") == JobRecord(0, submitted, [])


def test_keys_of_runs_the_state_dropped_and_of_unused_revisions_are_deleted() -> None:
    _sim, (submitted, *_) = states(40)
    store, jobs = Recording(), JobStore()
    jobs.save(store, 0, "f", JobRecord(0, submitted, []), None)
    (run_id,) = submitted.runs
    gone = replace(submitted, runs={}, spec=fan("f", 20), revision=2)
    jobs.save(store, 0, "f", JobRecord(1, gone, []), submitted)
    keys = set(store.data)
    assert not any(k.startswith(f"f\0t\0{run_id}/".encode()) for k in keys)
    assert spec_key("f", 1).encode() not in keys and spec_key("f", 2).encode() in keys
    assert [k for k in keys if is_job_key(k)] == [b"f"]
    assert decode_record(store.get(b"f") or b"", store.get).state == gone


def test_a_revision_that_an_active_run_still_uses_keeps_its_definition() -> None:
    _sim, (submitted, *_) = states(40)
    store, jobs = Recording(), JobStore()
    jobs.save(store, 0, "f", JobRecord(0, submitted, []), None)
    updated = replace(submitted, revisions={1: submitted.spec}, spec=fan("f", 30), revision=2)
    store.writes.clear()
    jobs.save(store, 0, "f", JobRecord(1, updated, []), submitted)
    assert store.writes == [spec_key("f", 2).encode(), b"f"]
    assert JobStore().load(store, 0, "f") == JobRecord(1, updated, [])


def _drive(split: bool, runs_apart: bool = False) -> list[JobState]:
    """A 30-task fan job through the shell: submitted, then claim, start and completion of ready tasks, with a
    fresh shell (cold load from the store) every few events; the state after every event."""
    from ksched.config import Settings
    from ksched.schemas.codec import default_codec
    from ksched.schemas.events import ClaimGranted, ClaimTask, SubmitJob, TaskCompleted, TaskReady, TaskStarted
    from ksched.streams.shell import InboxShell

    codec = default_codec()
    settings = Settings(prefix="t", partitions=1)
    saved = jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS, jobstore.SPLIT_RUNS
    if not split:
        jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS, jobstore.SPLIT_RUNS = 1 << 30, False, 1 << 30
    elif runs_apart:
        jobstore.SPLIT_RUNS = 0  # every run under a key of its own
    try:
        store = MemoryStore()
        sh = InboxShell(settings, codec)
        seen: list[JobState] = []
        offset = 0

        def send(e: object) -> list[object]:
            nonlocal offset, sh
            out = sh.process(store, 0, offset, b"f", codec.encode(e))
            offset += 1
            if offset % 5 == 0:
                sh = InboxShell(settings, codec)
            seen.append(decode_record(store.get(b"f") or b"", store.get).state)
            return [codec.decode(m.value) for m in out if m.value is not None and m.topic != "t.events"]

        ready = [r for r in send(SubmitJob("c1", fan("f", 30), 0)) if isinstance(r, TaskReady)]
        for _ in range(3):
            nxt = []
            for r in ready[:4]:
                assert isinstance(r, TaskReady)
                (g,) = [x for x in send(ClaimTask(f"{r.task_id}#1", "f", r.run_id, r.task_id, 1, "ex1", 5))
                        if isinstance(x, ClaimGranted)]
                send(TaskStarted("f", r.run_id, r.task_id, 1, g.fencing_token, "ex1", 6))
                nxt += [x for x in send(TaskCompleted("f", r.run_id, r.task_id, 1, g.fencing_token, "ex1", 0, 7, 7))
                        if isinstance(x, TaskReady)]
            ready = nxt or ready[4:]
        return seen
    finally:
        jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS, jobstore.SPLIT_RUNS = saved


def test_the_same_history_gives_the_same_states_in_either_layout() -> None:
    """The shell with per-entity keys against one record per job, cold loads included: equal after every event."""
    split, whole, apart = _drive(True), _drive(False), _drive(True, runs_apart=True)
    assert len(split) == 28 and split == whole and apart == whole
    done = [t.state for t in next(iter(split[-1].runs.values())).tasks.values()]
    assert done.count("SUCCEEDED") >= 5


def test_rewrite_writes_the_record_and_every_key_it_refers_to_as_they_are() -> None:
    _, (submitted, *_) = states(40)
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, submitted, []), None)
    before = dict(store.data)
    store.writes.clear()
    assert JobStore().rewrite(store, "f", submitted) == 1 + 1 + 40
    assert sorted(store.writes) == sorted(before) and store.data == before


def _many_runs(n_runs: int, tasks: int = 3) -> JobState:
    """A job holding `n_runs` active runs (as a per-second job whose runs queue while the worker catches up)."""
    _, (submitted, *_) = states(tasks)
    (run,) = submitted.runs.values()
    return replace(submitted, runs={f"f@{i}": replace(run, run_id=f"f@{i}") for i in range(n_runs)})


def _changed(state: JobState, run_id: str) -> JobState:
    return replace(state, runs={**state.runs, run_id: replace(state.runs[run_id], state="CANCELLED")})


def test_a_job_holding_many_runs_keeps_them_apart_and_an_event_writes_only_the_runs_it_changed() -> None:
    many = _many_runs(40)
    store, jobs = Recording(), JobStore()
    jobs.save(store, 0, "f", JobRecord(0, many, []), None)
    assert len(store.writes) == 40 + 1 and store.writes[-1] == b"f"  # the runs (fresh) first, then the record
    small = len(jobstore.encode_record(JobRecord(0, _many_runs(9), [])))
    assert len(store.get(b"f") or b"") < 2 * small  # the record keeps the runs' ids, not the runs
    one = _changed(many, "f@7")
    store.writes.clear()
    jobs.save(store, 0, "f", JobRecord(1, one, []), many)
    assert store.writes == [b"f", jobstore.run_key("f", "f@7").encode()]
    assert decode_record(store.get(b"f") or b"", store.get).state == one
    assert JobStore().load(store, 0, "f") == JobRecord(1, one, [])


def test_a_crash_after_the_record_of_a_job_holding_many_runs_is_read_through_its_journal() -> None:
    many = _many_runs(12, tasks=40)  # runs kept apart, each with its tasks under keys of their own
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, many, []), None)
    one = _changed(many, "f@3")
    store.crash_after = len(store.writes) + 1  # the record only; the run's key keeps its old value
    JobStore().save(store, 0, "f", JobRecord(1, one, []), many)
    store.crash_after = None
    assert b"CANCELLED" not in (store.get(jobstore.run_key("f", "f@3").encode()) or b"")
    restarted = JobStore()
    rec = restarted.load(store, 0, "f")
    assert rec is not None and rec.state == one
    # The next write carries the journal's run as it was written (its tasks still under keys of their own).
    two = _changed(rec.state, "f@5")
    restarted.save(store, 0, "f", JobRecord(2, two, []), rec.state)
    import json

    run3 = json.loads(store.get(jobstore.run_key("f", "f@3").encode()) or b"")
    assert run3["state"] == "CANCELLED" and run3["tasks"] == "$split"
    assert JobStore().load(_without_journal(store, store.get(b"f") or b""), 0, "f") == JobRecord(2, two, [])


def test_when_a_job_holds_few_runs_again_their_keys_are_deleted_and_the_record_holds_them() -> None:
    many = _many_runs(20)
    store, jobs = Recording(), JobStore()
    jobs.save(store, 0, "f", JobRecord(0, many, []), None)
    few = replace(many, runs={rid: r for rid, r in list(many.runs.items())[-3:]})
    jobs.save(store, 0, "f", JobRecord(1, few, []), many)
    assert [k for k in store.data if b"\0u\0" in k] == []
    assert decode_record(store.get(b"f") or b"").state == few  # nothing to fetch: all in the record
    again = _many_runs(20)
    jobs.save(store, 0, "f", JobRecord(2, again, []), few)
    assert len([k for k in store.data if b"\0u\0" in k]) == 20
    assert JobStore().load(store, 0, "f") == JobRecord(2, again, [])


def test_rewrite_of_a_job_holding_many_runs_writes_each_run_key_again() -> None:
    many = _many_runs(12)
    store = Recording()
    JobStore().save(store, 0, "f", JobRecord(0, many, []), None)
    before = dict(store.data)
    store.writes.clear()
    assert JobStore().rewrite(store, "f", many) == 1 + 12
    assert sorted(store.writes) == sorted(before) and store.data == before


def test_records_are_written_as_json_dumps_writes_them() -> None:
    """The store's encoder is the C encoder `json.dumps` builds, built once: its output must not differ."""
    import json

    samples: list[object] = [
        {"s": "é\u2028\"\\\n", "n": [1, -2, 3.5, 1e300, 0.1], "t": True, "f": False, "z": None, "e": {}, "l": []},
        [float("inf"), float("nan"), {"nested": [{"k": "v"}]}],
        "plain", 7, None,
    ]
    for obj in samples:
        assert jobstore._json(obj) == json.dumps(obj, separators=(",", ":"))
    try:
        jobstore._json({"x": object()})
    except TypeError as err:
        assert "not JSON serializable" in str(err)
    else:
        raise AssertionError("an object JSON cannot hold was encoded")
