"""Executor reports through the pure reducer: the exact records an attempt's end logs, and the exact reason a
report that changes nothing is ignored with."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ksched.schemas.events import (
    AttemptEnded,
    CancelRequested,
    CancelRun,
    ClaimGranted,
    ReportIgnored,
    RetryPolicy,
    RetryScheduled,
    RunFinished,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    TaskReady,
    TaskSettled,
    TaskStarted,
)
from ksched.streams.core.decide import next_wakeup
from ksched.streams.core.emit import CONTROL, EVENTS
from ksched.streams.core.model import Params
from tests.samples import job
from tests.sim import T0, Sim, one

SEC = 1000
RUN = "j1@2027-01-15T08:00:00Z"
TID = f"{RUN}/main"


def logged(emits: list[Any]) -> list[Any]:
    return [e.record for e in emits if e.channel == EVENTS]


def started(max_attempts: int = 1, backoff_ms: int = 0) -> tuple[Sim, ClaimGranted]:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=max_attempts,
                                                                          backoff_ms=backoff_ms, jitter=0))])
    grant = one(sim.claim(one(sim.submit(spec), TaskReady)), ClaimGranted)
    sim.start(grant)
    return sim, grant


def test_a_success_logs_the_attempts_end_the_tasks_and_the_runs() -> None:
    sim, _ = started()
    sim.now = T0 + 3 * SEC
    emits = sim.send(TaskCompleted("j1", RUN, TID, 1, 1, "ex1", 0, T0, T0 + 2 * SEC))
    assert logged(emits) == [
        AttemptEnded(f"{TID}#1/ended", "j1", RUN, TID, 1, 1, "SUCCEEDED", "exit code 0", T0 + 3 * SEC, 0),
        TaskSettled(f"{TID}/succeeded", "j1", RUN, TID, "SUCCEEDED", "exit code 0", T0 + 3 * SEC),
        RunFinished(f"{RUN}/finished", "j1", RUN, "SUCCEEDED", T0 + 3 * SEC),
    ]
    assert sim.state is not None and sim.state.runs[RUN].finished_at_ms == T0 + 3 * SEC


def test_a_failure_with_a_retry_left_logs_the_retry_and_offers_the_next_attempt() -> None:
    sim, _ = started(max_attempts=2, backoff_ms=5 * SEC)
    sim.now = T0 + SEC
    emits = sim.send(TaskCompleted("j1", RUN, TID, 1, 1, "ex1", 1, T0, T0 + SEC))
    assert logged(emits) == [
        AttemptEnded(f"{TID}#1/ended", "j1", RUN, TID, 1, 1, "FAILED", "exit code 1", T0 + SEC, 1),
        RetryScheduled(f"{TID}#2/retry", "j1", RUN, TID, 2, T0 + 6 * SEC, 5 * SEC, "normal", 0, "attempt 1 failed",
                       T0 + SEC),
    ]
    assert next_wakeup(sim.state) == T0 + 6 * SEC
    sim.tick(T0 + 6 * SEC)
    assert (sim.readies()[-1].attempt, sim.readies()[-1].at_ms) == (2, T0 + 6 * SEC)


def test_a_failure_reported_by_the_executor_ends_the_attempt_with_its_reason_and_message() -> None:
    sim, _ = started()
    emits = sim.send(TaskFailed("j1", RUN, TID, 1, 1, "ex1", "SPAWN_ERROR", "no such file", False, T0, exit_code=127))
    assert logged(emits)[:2] == [
        AttemptEnded(f"{TID}#1/ended", "j1", RUN, TID, 1, 1, "ERROR", "SPAWN_ERROR: no such file", T0, 127),
        TaskSettled(f"{TID}/failed", "j1", RUN, TID, "FAILED", "SPAWN_ERROR: no such file; not retryable", T0),
    ]


def test_a_cancelled_run_ends_its_attempt_cancelled_with_the_runs_reason() -> None:
    sim, _ = started(max_attempts=3)
    emits = sim.send(CancelRun("c", "j1", RUN, T0, "stop it"))
    assert sim.control(emits) == [CancelRequested(f"{TID}#1/cancel", "j1", RUN, TID, 1, "ex1", 1, "stop it", T0)]
    assert [e.key for e in emits if e.channel == CONTROL] == ["ex1"]
    assert sim.state is not None and sim.state.runs[RUN].tasks["main"].cancel_requested
    # The executor reports a plain failure (it was killed): the cancel decides, and there is no retry.
    emits = sim.send(TaskCompleted("j1", RUN, TID, 1, 1, "ex1", 143, T0, T0))
    settled = one(emits, TaskSettled)
    assert (settled.state, settled.reason) == ("CANCELLED", "stop it")
    assert not sim.logged(RetryScheduled)
    assert one(emits, RunFinished).state == "CANCELLED"


@pytest.mark.parametrize(("report", "reason"), [
    (TaskHeartbeat("j1", RUN, TID, 1, 9, "ex1", T0), "fenced: not the current attempt (attempt 1, token 1)"),
    (TaskHeartbeat("j1", RUN, TID, 2, 1, "ex1", T0), "fenced: not the current attempt (attempt 1, token 1)"),
    (TaskStarted("j1", RUN, f"{RUN}/nope", 1, 1, "ex1", T0), "unknown task"),
    (TaskCompleted("j1", "j1@x", "j1@x/main", 1, 1, "ex1", 0, T0, T0), "unknown task"),
])
def test_a_report_about_another_attempt_is_ignored_and_says_why(report: Any, reason: str) -> None:
    sim, _ = started()
    before = sim.state
    sim.now = T0 + 5
    name = type(report).__name__
    assert logged(sim.send(report)) == [
        ReportIgnored(f"{name}:{report.task_id}#{report.attempt}:{report.fencing_token}:ex1:{T0 + 5}/ignored", "j1",
                      report.task_id, report.attempt, report.fencing_token, "ex1", name, reason, T0 + 5)]
    assert sim.state == before


def test_a_report_after_the_attempt_ended_names_the_tasks_state() -> None:
    sim, g = started()
    sim.complete(g, 1)
    emits = sim.heartbeat(g)
    assert logged(emits) == [ReportIgnored(f"TaskHeartbeat:{TID}#1:1:ex1:{T0}/ignored", "j1", TID, 1, 1, "ex1",
                                           "TaskHeartbeat", "attempt already ended (task failed)", T0)]


def test_a_report_for_a_job_this_worker_does_not_know_is_ignored_under_the_job_id_of_its_task() -> None:
    sim = Sim()
    # (a command id, part of a manual run's id, may hold an '@' too)
    emits = sim.send(TaskHeartbeat("other", "other@manual-a@b", "other@manual-a@b/main", 1, 1, "ex1", T0))
    assert [(e.key, e.record.job_id, e.record.reason) for e in emits] == [("other", "other", "unknown task")]


def test_a_lease_lapses_exactly_at_its_deadline_and_the_task_retries() -> None:
    sim, _ = started(max_attempts=2)
    assert next_wakeup(sim.state) == T0 + 10 * SEC
    assert sim.tick(T0 + 10 * SEC - 1) == []
    emits = sim.tick(T0 + 10 * SEC)
    assert logged(emits)[:2] == [
        AttemptEnded(f"{TID}#1/ended", "j1", RUN, TID, 1, 1, "LOST", "lease expired: no heartbeat from executor ex1",
                     T0 + 10 * SEC),
        RetryScheduled(f"{TID}#2/retry", "j1", RUN, TID, 2, T0 + 10 * SEC, 0, "normal", 0, "attempt 1 lost",
                       T0 + 10 * SEC),
    ]


def test_a_start_report_sets_the_lease_from_its_own_time_and_a_duplicate_changes_nothing() -> None:
    sim = Sim()
    grant = one(sim.claim(one(sim.submit(job("j1")), TaskReady)), ClaimGranted)
    sim.send(TaskStarted("j1", RUN, TID, 1, grant.fencing_token, "ex1", T0 + 2 * SEC))
    assert sim.state is not None
    task = sim.state.runs[RUN].tasks["main"]
    assert (task.state, task.lease_deadline_ms, task.attempts[0].started_at_ms) == ("RUNNING", T0 + 12 * SEC,
                                                                                   T0 + 2 * SEC)
    before = sim.state
    assert sim.send(TaskStarted("j1", RUN, TID, 1, grant.fencing_token, "ex1", T0 + 3 * SEC)) == []
    assert sim.state is before


def test_only_the_newest_finished_runs_are_kept_and_the_oldest_go_first() -> None:
    sim = Sim(params=Params(keep_finished_runs=2))
    sim.submit(job("j1", "* * * * * *"))
    for s in (1, 2, 3):
        sim.tick(T0 + s * SEC)
        sim.run(sim.readies()[-1])
    assert sim.state is not None
    assert list(sim.state.runs) == ["j1@2027-01-15T08:00:02Z", "j1@2027-01-15T08:00:03Z"]


@pytest.mark.parametrize("report", ["completed", "failed"])
def test_an_end_reported_without_a_start_report_takes_the_start_time_from_the_end_report(report: str) -> None:
    sim = Sim()
    grant = one(sim.claim(one(sim.submit(job("j1")), TaskReady)), ClaimGranted)  # the start report was lost
    if report == "completed":
        sim.send(TaskCompleted("j1", RUN, TID, 1, grant.fencing_token, "ex1", 0, T0 + 2 * SEC, T0 + 3 * SEC))
    else:
        sim.send(TaskFailed("j1", RUN, TID, 1, grant.fencing_token, "ex1", "TIMEOUT", "slow", True, T0 + 3 * SEC,
                            started_at_ms=T0 + 2 * SEC))
    assert sim.state is not None
    (att,) = sim.state.runs[RUN].tasks["main"].attempts
    assert (att.started_at_ms, att.finished_at_ms) == (T0 + 2 * SEC, T0 + 3 * SEC)


def test_an_offered_attempt_carries_the_tasks_labels_and_limits_to_the_executor() -> None:
    from ksched.schemas.events import Limits

    sim = Sim()
    spec = job("j1")
    limits = Limits(cpu_seconds=5, memory_mb=64, open_files=32, processes=4, log_bytes=1000)
    spec = replace(spec, tasks=[replace(spec.tasks[0], labels={"pool": "gpu", "team": "x"}, limits=limits)])
    ready = one(sim.submit(spec), TaskReady)
    assert (ready.labels, ready.limits) == ({"pool": "gpu", "team": "x"}, limits)
