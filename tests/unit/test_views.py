"""The views users read (catalog, run and task views): exactly what an attempt's life publishes, field by field,
and which decisions publish nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ksched.schemas.events import (
    AttemptView,
    ClaimGranted,
    DeleteJob,
    FailureReason,
    JobDefinition,
    PauseJob,
    RetryPolicy,
    RunView,
    TaskCompleted,
    TaskFailed,
    TaskReady,
    TaskView,
)
from ksched.streams.core.emit import CATALOG, RUNS, TASKS
from ksched.streams.core.views import current_views
from tests.samples import job
from tests.sim import T0, Sim, one

SEC = 1000
RUN = "j1@2027-01-15T08:00:00Z"
TASK = f"{RUN}/main"


def views(emits: list[Any], channel: str) -> list[Any]:
    return [(e.key, e.record) for e in emits if e.channel == channel]


def retrying_job() -> Any:
    spec = job("j1")
    return replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=0))])


def test_an_attempts_life_is_published_in_its_task_and_run_views() -> None:
    sim = Sim()
    emits = sim.submit(retrying_job())
    assert views(emits, TASKS) == [(TASK, TaskView(TASK, "j1", RUN, "main", "READY", 1, "normal", [],
                                                   [AttemptView(1, 0, "", "", ready_at_ms=T0)]))]
    assert views(emits, RUNS) == [(RUN, RunView(RUN, "j1", 1, "ONCE", "RUNNING", T0, T0, {"READY": 1}))]
    ready = one(emits, TaskReady)

    sim.now = T0 + SEC
    grant = one(sim.claim(ready), ClaimGranted)
    sim.now = T0 + 2 * SEC
    sim.start(grant)
    sim.now = T0 + 5 * SEC
    emits = sim.send(TaskFailed("j1", RUN, TASK, 1, grant.fencing_token, "ex1", FailureReason.TIMEOUT, "too slow",
                                True, T0 + 4 * SEC, exit_code=None, started_at_ms=T0 + 2 * SEC, log_ref="logs/1"))
    first = AttemptView(1, 1, "ex1", "TIMED_OUT", "TIMEOUT: too slow", None, T0, T0 + 2 * SEC, T0 + 4 * SEC,
                        "logs/1")
    second = AttemptView(2, 0, "", "", ready_at_ms=T0 + 5 * SEC)
    assert views(emits, TASKS)[-1] == (TASK, TaskView(TASK, "j1", RUN, "main", "READY", 2, "normal", [],
                                                      [first, second]))

    grant2 = one(sim.claim(sim.readies()[-1], "ex2"), ClaimGranted)
    sim.now = T0 + 6 * SEC
    sim.start(grant2)
    sim.now = T0 + 9 * SEC
    emits = sim.send(TaskCompleted("j1", RUN, TASK, 2, grant2.fencing_token, "ex2", 0, T0 + 6 * SEC, T0 + 8 * SEC,
                                   "logs/2"))
    done = AttemptView(2, 2, "ex2", "SUCCEEDED", "exit code 0", 0, T0 + 5 * SEC, T0 + 6 * SEC, T0 + 8 * SEC, "logs/2")
    assert views(emits, TASKS) == [(TASK, TaskView(TASK, "j1", RUN, "main", "SUCCEEDED", 2, "normal", [],
                                                   [first, done], "exit code 0"))]
    assert views(emits, RUNS) == [(RUN, RunView(RUN, "j1", 1, "ONCE", "SUCCEEDED", T0, T0, {"SUCCEEDED": 1},
                                                T0 + 9 * SEC, started_at_ms=T0 + 2 * SEC))]  # the first attempt's


def test_a_run_ends_no_earlier_than_the_report_that_ended_it() -> None:
    """The partition's clock (its last tick) can stand behind an executor's report: the run's end is the later
    of the two, so its duration is never negative and has the report's milliseconds."""
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    sim.now = T0 + 2 * SEC  # the clock stands here, the executor's report says later
    emits = sim.send(TaskCompleted("j1", RUN, TASK, 1, grant.fencing_token, "ex1", 0, T0, T0 + 2 * SEC + 345,
                                   "logs/1"))
    ((_, run),) = views(emits, RUNS)
    assert run.state == "SUCCEEDED" and run.started_at_ms == T0 and run.finished_at_ms == T0 + 2 * SEC + 345


def test_a_heartbeat_publishes_no_view() -> None:
    sim = Sim()
    grant = one(sim.claim(one(sim.submit(job("j1")), TaskReady)), ClaimGranted)
    sim.start(grant)
    sim.now += SEC
    emits = sim.heartbeat(grant)
    assert views(emits, TASKS) == views(emits, RUNS) == views(emits, CATALOG) == []


def test_the_catalog_entry_is_published_when_the_job_is_paused_and_tombstoned_when_it_is_deleted() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.now = T0 + SEC
    assert views(sim.send(PauseJob("p", "j1", T0)), CATALOG) == [
        ("j1", JobDefinition("j1", 1, job("j1", "*/10 * * * * *"), True, T0 + SEC))]
    assert views(sim.send(DeleteJob("d", "j1", T0)), CATALOG) == [("j1", None)]


def test_the_current_views_of_a_job_are_every_task_and_run_view_and_its_catalog_entry() -> None:
    sim = Sim()
    sim.submit(job("j1"))
    state = sim.state
    assert state is not None
    now = list(current_views(state))
    assert [(e.channel, e.key) for e in now] == [(CATALOG, "j1"), (TASKS, TASK), (RUNS, RUN)]
    assert now[0].record == JobDefinition("j1", 1, job("j1"), False, T0)
    assert now[1].record.state == "READY" and now[2].record.state == "RUNNING"
    sim.send(DeleteJob("d", "j1", T0))
    assert sim.state is not None
    gone = list(current_views(sim.state))
    assert [(e.channel, e.key, e.record) for e in gone[:1]] == [(CATALOG, "j1", None)]
    assert [(e.channel, e.key, e.record.state) for e in gone[1:]] == [(TASKS, TASK, "CANCELLED"),
                                                                      (RUNS, RUN, "CANCELLED")]
    assert gone[2].record.reason == "job deleted"


def test_a_run_view_counted_from_its_changes_equals_the_view_counted_afresh() -> None:
    """The run view after a decision is counted from the view before and the tasks that changed; through starts,
    retries, failures, skips and a fan-in, every emitted view is the one a full count gives."""
    import random

    from ksched.schemas.events import TaskSpec
    from ksched.streams.core import views as v
    from ksched.streams.core.model import TaskState

    art = job().tasks[0].artifact
    retry = RetryPolicy(max_attempts=2, backoff_ms=0)
    middle = [TaskSpec(f"m{i}", art, depends_on=["start"], retry=retry) for i in range(12)]
    spec = replace(job("fan"), tasks=[TaskSpec("start", art), *middle,
                                      TaskSpec("end", art, depends_on=[t.name for t in middle],
                                               trigger_rule="all_done"),
                                      TaskSpec("never", art, depends_on=["m0"])])
    rng = random.Random(7)
    sim, checked = Sim(), 0

    def step(emits: list[Any]) -> None:
        nonlocal checked
        for run_id, view in views(emits, RUNS):
            v._RUN_VIEWS.clear()
            assert sim.state is not None
            assert view == v.run_view(sim.state, sim.state.runs[run_id])
            checked += 1

    step(sim.submit(spec))
    step(sim.tick(T0))
    pending = list(sim.readies())
    while pending:
        ready = pending.pop(rng.randrange(len(pending)))
        emits = sim.claim(ready)
        step(emits)
        grant = one(emits, ClaimGranted)
        step(sim.start(grant))
        outcome = rng.random()
        emits = sim.complete(grant, exit_code=1 if outcome < 0.3 else 0)
        step(emits)
        pending += sim.readies(emits)
        emits = sim.tick(sim.now + 1000)  # retries are fired by a tick
        step(emits)
        pending += sim.readies(emits)
    assert sim.state is not None
    run = next(iter(sim.state.runs.values()))
    assert run.tasks["never"].state in (TaskState.SKIPPED, TaskState.UPSTREAM_FAILED, TaskState.SUCCEEDED)
    assert checked > 40
