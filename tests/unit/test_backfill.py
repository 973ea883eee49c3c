"""Backfill in the pure core: a cron job's past occurrences fired as runs of their own, within max_active and
the job's overlap policy, each once however often the backfill is asked for."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from ksched.schemas.events import (
    BackfillAccepted,
    BackfillFinished,
    BackfillJob,
    JobRejected,
    PauseJob,
    ResumeJob,
    RunTriggered,
    Trigger,
    TriggerJob,
)
from ksched.streams.core.backfill import merge, subtract
from ksched.streams.core.decide import backfill_run_id
from ksched.streams.core.schedule import next_fire, to_ms
from tests.samples import job
from tests.sim import T0, Sim

MIN = 60_000
DAY = 24 * 60 * MIN


def hourly(overlap: str = "allow", **kw: object) -> Sim:
    sim = Sim()
    sim.now = T0 + 10 * DAY
    spec = job("j1", "0 * * * *")
    sim.submit(replace(spec, schedule=replace(spec.schedule, overlap=overlap), **kw))  # type: ignore[arg-type]
    return sim


def backfill(sim: Sim, frm: int, to: int, max_active: int = 1, cid: str = "b1") -> list[object]:
    return [e.record for e in sim.send(BackfillJob(cid, "j1", frm, to, sim.now, max_active))]


def triggered(sim: Sim) -> list[RunTriggered]:
    return [r for r in sim.logged(RunTriggered) if r.trigger == Trigger.BACKFILL]


def finish_all(sim: Sim) -> None:
    """Run every ready task to success, until nothing is ready any more."""
    done: set[str] = set()
    while True:
        ready = [r for r in sim.readies() if r.task_id not in done]
        if not ready:
            return
        for r in ready:
            done.add(r.task_id)
            sim.run(r)


def test_ranges_subtract_and_merge() -> None:
    assert subtract(0, 100, ()) == ((0, 100),)
    assert subtract(0, 100, ((10, 20), (50, 60))) == ((0, 9), (21, 49), (61, 100))
    assert subtract(0, 100, ((-5, 200),)) == ()
    assert subtract(30, 40, ((10, 20), (50, 60))) == ((30, 40),)
    assert merge(((10, 20),), 21, 30) == ((10, 30),)
    assert merge(((10, 20), (40, 50)), 15, 45) == ((10, 50),)
    assert merge(((40, 50),), 0, 5) == ((0, 5), (40, 50))


def test_a_backfill_fires_each_occurrence_of_its_range_with_its_own_run_id_max_active_at_once() -> None:
    sim = hourly()
    frm, to = T0, T0 + 5 * 60 * MIN  # six hourly instants, T0 a whole hour
    out = backfill(sim, frm, to, max_active=2)
    accepted = [e for e in out if isinstance(e, BackfillAccepted)]
    assert accepted and accepted[0].ranges == [[frm, to]]
    assert [r.run_id for r in triggered(sim)] == [backfill_run_id("j1", T0), backfill_run_id("j1", T0 + 60 * MIN)]
    assert [r.scheduled_for_ms for r in triggered(sim)] == [T0, T0 + 60 * MIN]
    # Each finished run makes room for the next one, never more than two at once.
    while len(sim.logged(BackfillFinished)) == 0:
        active = [r for r in sim.state.runs.values() if r.trigger == Trigger.BACKFILL  # type: ignore[union-attr]
                  and r.state in ("RUNNING", "QUEUED")]
        assert 1 <= len(active) <= 2
        sim.run(next(r for r in sim.readies() if r.run_id == active[0].run_id))
    assert [r.scheduled_for_ms for r in triggered(sim)] == [T0 + h * 60 * MIN for h in range(6)]
    (done,) = sim.logged(BackfillFinished)
    assert done.runs == 6 and sim.state is not None and sim.state.backfills == ()


def test_a_repeated_or_overlapping_backfill_fires_only_what_no_earlier_one_did() -> None:
    sim = hourly()
    backfill(sim, T0, T0 + 2 * 60 * MIN, max_active=5)
    finish_all(sim)
    assert len(triggered(sim)) == 3
    again = backfill(sim, T0, T0 + 2 * 60 * MIN, max_active=5, cid="b2")  # the same range, a new command
    assert [e.ranges for e in again if isinstance(e, BackfillAccepted)] == [[]]
    assert len(triggered(sim)) == 3 and len(sim.logged(BackfillFinished)) == 2
    backfill(sim, T0 + 60 * MIN, T0 + 4 * 60 * MIN, max_active=5, cid="b3")  # overlaps: only 3h and 4h are new
    assert [r.scheduled_for_ms for r in triggered(sim)][3:] == [T0 + 3 * 60 * MIN, T0 + 4 * 60 * MIN]
    # The same command delivered twice is decided once.
    before = len(sim.emits)
    backfill(sim, T0 + 60 * MIN, T0 + 4 * 60 * MIN, max_active=5, cid="b3")
    assert len(sim.emits) == before


def test_overlap_forbid_runs_one_backfill_run_at_a_time_and_none_beside_another_run() -> None:
    sim = hourly("forbid")
    backfill(sim, T0, T0 + 3 * 60 * MIN, max_active=4)
    assert len(triggered(sim)) == 1  # forbid: one at a time whatever max_active says
    finish_all(sim)
    assert len(triggered(sim)) == 4 and len(sim.logged(BackfillFinished)) == 1


def test_overlap_forbid_holds_a_backfill_while_another_run_of_the_job_is_active() -> None:
    sim = hourly("forbid")
    sim.send(TriggerJob("t1", "j1", sim.now))
    backfill(sim, T0, T0 + 60 * MIN, max_active=2)
    assert triggered(sim) == []  # waits for the manual run (neither skipped nor replacing it)
    sim.run(sim.readies()[0])
    assert len(triggered(sim)) == 1


def test_a_paused_job_holds_its_backfill_until_resumed() -> None:
    sim = hourly()
    sim.send(PauseJob("p1", "j1", sim.now))
    backfill(sim, T0, T0 + 60 * MIN, max_active=2)
    assert triggered(sim) == []
    sim.send(ResumeJob("r1", "j1", sim.now))
    assert len(triggered(sim)) == 2


def test_bad_backfills_are_rejected_with_the_reason() -> None:
    sim = hourly()
    cases = {(T0 + MIN, T0, 1): "from is after to", (T0, sim.now + DAY, 1): "to is in the future",
             (T0, T0 + MIN, 0): "max_active"}
    for i, ((frm, to, n), why) in enumerate(cases.items()):
        out = backfill(sim, frm, to, n, cid=f"bad{i}")
        assert why in next(e.reason for e in out if isinstance(e, JobRejected)), why
    once = Sim()
    once.submit(job("j1"))
    out = [e.record for e in once.send(BackfillJob("b", "j1", T0 - DAY, T0 - 1, once.now))]
    assert "needs a cron schedule" in next(e for e in out if isinstance(e, JobRejected)).reason
    assert triggered(sim) == []


def test_a_year_of_minutes_costs_a_cursor_not_a_list() -> None:
    """A backfill's state is its ranges and a cursor: accepting a range of 500,000 occurrences keeps the job's
    record small and starts only max_active runs."""
    sim = Sim()
    sim.now = T0 + 400 * DAY
    sim.submit(job("j1", "* * * * *"))
    backfill(sim, T0, T0 + 365 * DAY, max_active=3)
    assert sim.state is not None and len(triggered(sim)) == 3
    assert len(sim.state.backfills) == 1 and len(sim.state.backfills[0].ranges) == 1


def test_a_schedule_ends_at_year_9999_instead_of_failing() -> None:
    s = job("j1", "0 0 1 1 *").schedule
    assert next_fire(s, "j1", to_ms(datetime(9999, 1, 1, 0, 0, 1, tzinfo=UTC))) is None
