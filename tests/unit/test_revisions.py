"""A one-off job runs once per revision, however close together its revisions come."""

from __future__ import annotations

from dataclasses import replace

from ksched.schemas.events import RunTriggered, SubmitJob, TaskReady
from tests.samples import job
from tests.sim import T0, Sim


def test_a_second_revision_submitted_in_the_same_tick_as_the_first_runs_too() -> None:
    sim = Sim()
    first = job("once")
    sim.submit(first)
    sim.submit(replace(first, description="second revision"))  # same partition clock: the same instant
    runs = sim.logged(RunTriggered)
    assert [(r.run_id, r.revision) for r in runs] == [(f"once@{_iso(T0)}", 1), (f"once@{_iso(T0)}.r2", 2)]
    assert [r.run_id for r in sim.readies()] == [runs[0].run_id, runs[1].run_id]


def test_two_concurrent_submissions_of_different_content_each_run_once_and_a_repeat_changes_nothing() -> None:
    sim = Sim()
    a, b = job("race"), replace(job("race"), description="b")
    sim.send(SubmitJob("from-alice", a, T0))
    sim.send(SubmitJob("from-bob", b, T0))
    sim.send(SubmitJob("from-bob", b, T0))  # delivered twice
    sim.send(SubmitJob("from-alice", a, T0))  # delivered twice
    assert [(r.revision, r.run_id) for r in sim.logged(RunTriggered)] == [
        (1, f"race@{_iso(T0)}"), (2, f"race@{_iso(T0)}.r2")]
    assert len([e for e in sim.emits if e.channel == "ready" and isinstance(e.record, TaskReady)]) == 2


def test_a_later_revision_at_a_later_instant_keeps_the_plain_run_id() -> None:
    sim = Sim()
    sim.submit(job("later"))
    sim.tick(T0 + 1000)
    sim.submit(replace(job("later"), description="v2"))
    assert [r.run_id for r in sim.logged(RunTriggered)] == [f"later@{_iso(T0)}", f"later@{_iso(T0 + 1000)}"]


def _iso(ms: int) -> str:
    from ksched.instants import iso

    return iso(ms)
