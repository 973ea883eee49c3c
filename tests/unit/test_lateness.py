"""Real lateness, decided at the edge: an attempt carries the instant after which its executor must not start
it (its occurrence's misfire grace); the executor measures the lateness and reports TOO_LATE; the scheduler
records the occurrence as missed (policy skip), covers it with one catch-up run (once), and never retries it.
Replay stays exact: the decision is made from the report, an inbox event."""

from __future__ import annotations

from dataclasses import replace

from ksched.executor.runtime import too_late
from ksched.schemas.events import (
    ClaimGranted,
    FailureReason,
    OccurrenceMissed,
    RetryPolicy,
    RunTriggered,
    TaskFailed,
    TaskReady,
    TaskSpec,
    Trigger,
    TriggerJob,
)
from tests.samples import job
from tests.sim import T0, Sim, one

MIN = 60_000


def minutely(misfire: str, grace_ms: int = 30_000) -> Sim:
    sim = Sim()
    sim.now = T0 - 1000
    spec = job("j1", "* * * * *", misfire=misfire, misfire_grace_ms=grace_ms)
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=3, backoff_ms=0))])
    sim.submit(spec)
    return sim


def too_late_report(g: ClaimGranted, at: int) -> TaskFailed:
    return TaskFailed(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id,
                      FailureReason.TOO_LATE, "would have started late", False, at)


def fire_and_refuse(sim: Sim, t: int, late_ms: int) -> list[object]:
    ready = one(sim.tick(t), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.now = t + late_ms
    return [e.record for e in sim.send(too_late_report(grant, t + late_ms))]


def test_a_scheduled_attempt_carries_its_occurrences_grace_as_a_start_by_instant() -> None:
    sim = minutely("skip", grace_ms=30_000)
    ready = one(sim.tick(T0), TaskReady)
    assert ready.scheduled_for_ms == T0 and ready.start_by_ms == T0 + 30_000
    everything = minutely("all")
    ready = one(everything.tick(T0), TaskReady)
    assert ready.start_by_ms == T0 + job("x", "* * * * *").schedule.catchup_window_ms


def test_a_manual_run_and_a_task_that_waits_for_others_have_no_start_by() -> None:
    sim = minutely("skip")
    manual = one(sim.send(TriggerJob("t1", "j1", sim.now)), TaskReady)
    assert manual.start_by_ms is None
    dag = Sim()
    dag.now = T0 - 1000
    spec = job("d", "* * * * *")
    a = spec.tasks[0]
    dag.submit(replace(spec, tasks=[a, TaskSpec("b", a.artifact, depends_on=["main"])]))
    first = one(dag.tick(T0), TaskReady)
    assert first.task_name == "main" and first.start_by_ms == T0 + spec.schedule.misfire_grace_ms
    dag.run(first)
    child = dag.readies()[-1]
    assert child.task_name == "b" and child.start_by_ms is None


def test_skip_an_attempt_not_started_in_time_is_a_missed_occurrence_not_a_failure() -> None:
    sim = minutely("skip")
    out = fire_and_refuse(sim, T0, 75_000)
    (missed,) = [e for e in out if isinstance(e, OccurrenceMissed)]
    assert missed.scheduled_for_ms == T0 and missed.policy == "skip"
    assert "not started 75.0s after its instant (misfire grace 30s)" in missed.reason
    assert not [e for e in out if isinstance(e, TaskReady)]  # not retried, though retries are allowed
    run = sim.state.runs["j1@2027-01-15T08:00:00Z"]  # type: ignore[union-attr]
    assert run.state == "CANCELLED" and run.cancel_reason.startswith("missed: ")
    (task,) = run.tasks.values()
    assert task.state == "CANCELLED" and task.attempt is not None and task.attempt.outcome == "MISSED"


def test_once_covers_a_stretch_of_refused_occurrences_with_one_catch_up_run() -> None:
    sim = minutely("once")
    out = fire_and_refuse(sim, T0, 75_000)
    catchups = [e for e in out if isinstance(e, RunTriggered) and e.trigger == Trigger.CATCHUP]
    assert [c.run_id for c in catchups] == ["j1@2027-01-15T08:00:00Z-catchup"]
    (missed,) = [e for e in out if isinstance(e, OccurrenceMissed)]
    assert missed.reason.endswith("; covered by one catch-up run")
    catchup_ready = {e.event_id: e for e in out if isinstance(e, TaskReady)}  # on the ready topic and in the log
    assert [r.start_by_ms for r in catchup_ready.values()] == [None]  # a catch-up is late by definition
    # The next occurrence is refused too while the catch-up has not finished: missed, no second catch-up.
    out = fire_and_refuse(sim, T0 + MIN, 75_000)
    (missed,) = [e for e in out if isinstance(e, OccurrenceMissed)]
    assert "catch-up" not in missed.reason
    assert not [e for e in out if isinstance(e, RunTriggered)]


def test_the_executor_refuses_only_past_the_start_by_instant() -> None:
    ready = one(minutely("skip").tick(T0), TaskReady)
    assert too_late(ready, T0 + 30_000) == ""
    assert too_late(ready, T0 + 30_001) == "would have started 30.0s after its instant; its misfire grace is 30s"
    assert too_late(replace(ready, start_by_ms=None), T0 + 10 * MIN) == ""
