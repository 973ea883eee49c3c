"""Commands through the pure reducer: the exact records they log, what they leave in the state, and that a
command id seen before is a no-op (tables of cases, as the rest of the core's tests)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ksched.schemas.events import (
    ArtifactRef,
    AttemptEnded,
    CancelRun,
    ClaimGranted,
    ClaimRejected,
    ClaimTask,
    DeleteJob,
    JobAccepted,
    JobChanged,
    JobRejected,
    JobSpec,
    Level,
    OccurrenceMissed,
    OccurrenceSkipped,
    PauseJob,
    ReportIgnored,
    RerunTasks,
    ResumeJob,
    RetryPolicy,
    RunFinished,
    RunTriggered,
    SubmitJob,
    TaskReady,
    TaskSettled,
    TaskSpec,
    TriggerJob,
)
from ksched.streams.core.emit import CONTROL, DLQ, EVENTS
from ksched.streams.core.model import Params
from tests.samples import job
from tests.sim import T0, Sim, one

SEC = 1000
ART = ArtifactRef("sha256:" + "ab" * 32, "hello.sh", 10)


def logged(emits: list[Any]) -> list[Any]:
    return [e.record for e in emits if e.channel == EVENTS]


def finished_run(sim: Sim, job_id: str = "j1") -> str:
    """A one-off run of `job_id` that failed; its run id."""
    ready = one(sim.submit(job(job_id)), TaskReady)
    sim.run(ready, exit_code=1)
    return ready.run_id


# --- commands for jobs that do not exist --------------------------------------------------------------


@pytest.mark.parametrize("command", [
    PauseJob("c9", "nope", T0), ResumeJob("c9", "nope", T0), DeleteJob("c9", "nope", T0),
    TriggerJob("c9", "nope", T0), CancelRun("c9", "nope", "r", T0), RerunTasks("c9", "nope", "r", "t", T0),
], ids=lambda c: type(c).__name__)
def test_a_command_for_an_unknown_job_is_rejected_with_a_derived_id(command: Any) -> None:
    sim = Sim()
    emits = sim.send(command)
    assert [(e.channel, e.key, e.record) for e in emits] == [
        (EVENTS, "nope", JobRejected("c9/rejected", "c9", "nope", "unknown job 'nope'", T0))]
    assert sim.state is None


@pytest.mark.parametrize("command", [PauseJob("c9", "j1", T0), CancelRun("c9", "j1", "j1@x", T0)],
                         ids=lambda c: type(c).__name__)
def test_a_command_for_a_deleted_job_is_rejected(command: Any) -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.send(DeleteJob("d", "j1", T0))
    assert logged(sim.send(command)) == [JobRejected("c9/rejected", "c9", "j1", "unknown job 'j1'", T0)]


# --- repeats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda run_id: PauseJob("c9", "j1", T0),
    lambda run_id: ResumeJob("c9", "j1", T0),
    lambda run_id: DeleteJob("c9", "j1", T0),
    lambda run_id: TriggerJob("c9", "j1", T0),
    lambda run_id: CancelRun("c9", "j1", run_id, T0),
    lambda run_id: RerunTasks("c9", "j1", run_id, "main", T0),
], ids=["pause", "resume", "delete", "trigger", "cancel", "rerun"])
def test_a_command_applied_before_is_a_no_op_the_second_time(make: Any) -> None:
    sim = Sim()
    run_id = finished_run(sim)
    sim.send(make(run_id))
    after_first = sim.state
    assert after_first is not None and "c9" in after_first.commands
    assert sim.send(make(run_id)) == []
    assert sim.state == after_first


def test_only_the_latest_command_ids_are_remembered() -> None:
    sim = Sim(params=Params(keep_command_ids=2))
    sim.submit(job("j1", "*/10 * * * * *"))  # cmd1
    for c in ("p1", "r1", "p2"):
        sim.send((PauseJob if c.startswith("p") else ResumeJob)(c, "j1", T0))
    assert sim.state is not None and sim.state.commands == ("r1", "p2")


# --- submission and updates -------------------------------------------------------------------------------


def test_an_invalid_submission_is_rejected_on_the_log_and_dead_lettered_under_the_jobs_key() -> None:
    sim = Sim()
    emits = sim.send(SubmitJob("c1", job("j1", "61 * * * *"), T0))
    (rejected,) = [(e.channel, e.key, e.record) for e in emits if e.channel == EVENTS]
    assert rejected[:2] == (EVENTS, "j1") and rejected[2].event_id == "c1/rejected"
    assert (rejected[2].command_id, rejected[2].job_id, rejected[2].at_ms) == ("c1", "j1", T0)
    (dlq,) = [(e.key, e.record) for e in emits if e.channel == DLQ]
    assert dlq[0] == "j1" and dlq[1] == f"invalid job: {rejected[2].reason}"


def test_an_update_is_a_new_revision_that_keeps_the_spec_of_a_run_still_active() -> None:
    sim = Sim()
    first = one(sim.submit(job("j1", "*/10 * * * * *")), JobAccepted)
    sim.tick(T0 + 10 * SEC)  # a run of revision 1 is active
    updated = job("j1", "*/30 * * * * *")
    emits = sim.send(SubmitJob("c2", updated, T0 + 11 * SEC))
    assert (first.revision, logged(emits)) == (1, [JobAccepted("c2/accepted", "c2", "j1", 2, updated, T0 + 10 * SEC)])
    state = sim.state
    assert state is not None
    assert (state.revision, state.spec, state.revisions) == (2, updated, {1: job("j1", "*/10 * * * * *")})
    assert (state.cursor_ms, state.updated_at_ms, state.created_at_ms) == (T0 + 10 * SEC, T0 + 10 * SEC, T0)
    assert state.fencing == 0 and list(state.runs) == ["j1@2027-01-15T08:00:10Z"]


def test_an_update_drops_earlier_specs_no_active_run_needs() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.submit(job("j1", "*/20 * * * * *"))  # no run yet: revision 1's spec is not kept
    sim.submit(job("j1", "*/30 * * * * *"))
    assert sim.state is not None and (sim.state.revision, sim.state.revisions) == (3, {})


def test_a_one_off_job_updated_runs_once_more_for_its_new_revision() -> None:
    sim = Sim()
    sim.submit(job("once"))
    sim.now = T0 + SEC
    emits = sim.submit(replace(job("once"), description="second"))
    assert [type(r).__name__ for r in logged(emits)] == ["JobAccepted", "RunTriggered", "TaskReady"]
    assert one(emits, TaskReady).run_id == "once@2027-01-15T08:00:01Z"
    assert sim.state is not None and sim.state.revision == 2


def test_a_job_submitted_again_after_its_deletion_continues_its_revisions_and_fencing_tokens() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    sim.run(ready)
    sim.send(DeleteJob("d", "j1", T0))
    sim.now = T0 + SEC
    again = sim.send(SubmitJob("c2", job("j1"), T0 + SEC))
    assert one(again, JobAccepted).revision == 2
    ready2 = one(again, TaskReady)
    assert sim.run(ready2).fencing_token == 2
    assert sim.state is not None and not sim.state.deleted
    assert sim.state.created_at_ms == T0 + SEC  # created anew; only the numbering carries on


# --- pause, resume, delete, cancel ------------------------------------------------------------------------


def test_pausing_cancels_the_runs_fired_ahead_of_their_instant_but_not_manual_or_due_ones() -> None:
    sim = Sim(params=Params(lookahead_ms=5 * SEC))
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.send(TriggerJob("t", "j1", T0))
    sim.tick(T0 + 5 * SEC)  # fires 08:00:10 ahead of its instant
    emits = sim.send(PauseJob("p", "j1", T0))
    cancelled = [(s.run_id, s.state, s.reason) for s in sim.logged(TaskSettled, emits)]
    assert cancelled == [("j1@2027-01-15T08:00:10Z", "CANCELLED", "job paused before the run's instant")]
    assert sim.state is not None and sim.state.runs["j1@manual-t"].state == "RUNNING"


def test_pause_resume_and_delete_log_exactly_what_changed() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.now = T0 + 3 * SEC
    assert logged(sim.send(PauseJob("p", "j1", T0))) == [JobChanged("p/paused", "p", "j1", "PAUSED", 1, T0 + 3000)]
    assert sim.state is not None and (sim.state.paused, sim.state.updated_at_ms) == (True, T0 + 3000)
    assert logged(sim.send(PauseJob("p2", "j1", T0))) == []  # already paused: nothing to say
    sim.now = T0 + 4 * SEC
    assert logged(sim.send(ResumeJob("r", "j1", T0))) == [JobChanged("r/resumed", "r", "j1", "RESUMED", 1, T0 + 4000)]
    assert sim.state is not None and (sim.state.paused, sim.state.updated_at_ms) == (False, T0 + 4000)
    assert logged(sim.send(ResumeJob("r2", "j1", T0))) == []  # not paused
    sim.now = T0 + 5 * SEC
    emits = sim.send(DeleteJob("d", "j1", T0))
    assert logged(emits) == [JobChanged("d/deleted", "d", "j1", "DELETED", 1, T0 + 5000)]
    assert sim.state is not None and (sim.state.deleted, sim.state.updated_at_ms) == (True, T0 + 5000)


def test_deleting_a_job_settles_its_waiting_tasks_as_cancelled_with_the_reason() -> None:
    sim = Sim()
    art = job().tasks[0].artifact
    ready = one(sim.submit(JobSpec("dag", [TaskSpec("a", art), TaskSpec("b", art, depends_on=["a"])])), TaskReady)
    emits = sim.send(DeleteJob("d", "dag", T0))
    settled = [(s.task_id, s.state, s.reason) for s in sim.logged(TaskSettled, emits)]
    assert settled == [(ready.task_id, "CANCELLED", "job deleted"), (f"{ready.run_id}/b", "CANCELLED", "job deleted")]


@pytest.mark.parametrize(("run", "why"), [("j1@nope", "unknown run"), (None, "run already failed")])
def test_cancelling_a_run_that_cannot_be_cancelled_is_logged_as_ignored(run: str | None, why: str) -> None:
    sim = Sim()
    run_id = run or finished_run(sim)
    if run:
        sim.submit(job("j1"))
    sim.now = T0 + 7
    assert logged(sim.send(CancelRun("c", "j1", run_id, T0))) == [
        ReportIgnored("c/ignored", "j1", run_id, 0, 0, "", "CancelRun", why, T0 + 7)]


def test_a_cancel_without_a_reason_says_it_was_the_user() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    emits = sim.send(CancelRun("c", "j1", ready.run_id, T0))
    assert [(s.state, s.reason) for s in sim.logged(TaskSettled, emits)] == [("CANCELLED", "cancelled by user")]


# --- rerun ------------------------------------------------------------------------------------------------


def pipeline() -> JobSpec:
    return JobSpec("pipe", [TaskSpec("a", ART), TaskSpec("b", ART, depends_on=["a"]),
                            TaskSpec("c", ART, depends_on=["b"]), TaskSpec("other", ART)])


@pytest.mark.parametrize(("run", "from_task", "why"), [
    ("pipe@nope", "b", "unknown run"),
    (None, "zzz", "unknown task 'zzz'"),
])
def test_a_rerun_that_cannot_happen_is_logged_as_ignored(run: str | None, from_task: str, why: str) -> None:
    sim = Sim()
    readies = sim.readies(sim.submit(pipeline()))
    for r in readies:
        sim.run(r, exit_code=1)
    run_id = run or readies[0].run_id
    sim.now = T0 + 9
    assert logged(sim.send(RerunTasks("rr", "pipe", run_id, from_task, T0))) == [
        ReportIgnored("rr/ignored", "pipe", run_id, 0, 0, "", "RerunTasks", why, T0 + 9)]


def test_a_rerun_of_an_active_run_is_ignored() -> None:
    sim = Sim()
    ready = sim.readies(sim.submit(pipeline()))[0]
    assert logged(sim.send(RerunTasks("rr", "pipe", ready.run_id, "a", T0))) == [
        ReportIgnored("rr/ignored", "pipe", ready.run_id, 0, 0, "", "RerunTasks", "run is still active", T0)]


def test_a_rerun_resets_the_task_and_its_descendants_only_and_reopens_the_run() -> None:
    sim = Sim()
    a, other = sim.readies(sim.submit(pipeline()))
    sim.run(other)
    sim.run(a)
    b = sim.readies()[-1]
    sim.run(b, exit_code=1)  # b fails, c is UPSTREAM_FAILED, the run FAILED
    run_id = a.run_id
    assert sim.state is not None and sim.state.runs[run_id].state == "FAILED"
    sim.now = T0 + 20 * SEC
    emits = sim.send(RerunTasks("rr", "pipe", run_id, "b", T0))
    run = sim.state.runs[run_id]
    assert (run.state, run.finished_at_ms, run.cancel_reason) == ("RUNNING", None, "")
    states = {n: (t.state, t.number, t.reason) for n, t in run.tasks.items()}
    assert states == {"a": ("SUCCEEDED", 1, "exit code 0"), "other": ("SUCCEEDED", 1, "exit code 0"),
                      "b": ("READY", 2, ""), "c": ("WAITING", 0, "")}
    again = one(emits, TaskReady)
    assert (again.task_id, again.attempt, again.at_ms) == (f"{run_id}/b", 2, T0 + 20 * SEC)
    grant = sim.run(again)
    assert grant.fencing_token == 4  # attempts are kept: tokens keep growing
    sim.run(sim.readies()[-1])
    assert sim.state.runs[run_id].state == "SUCCEEDED"


# --- claims -------------------------------------------------------------------------------------------------


def test_a_rejected_claim_is_logged_and_sent_back_to_the_executor_under_its_own_key() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    sim.claim(ready, "ex1")
    sim.now = T0 + 5
    emits = sim.claim(ready, "ex2")
    rej = ClaimRejected(f"{ready.task_id}#1@ex2/rejected", "j1", ready.task_id, 1, "ex2", f"{ready.task_id}#1@ex2",
                        "task is claimed by ex1", T0 + 5)
    assert [(e.channel, e.key, e.record) for e in emits] == [(CONTROL, "ex2", rej), (EVENTS, "j1", rej)]


def test_a_claim_for_an_unknown_task_is_rejected() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    emits = sim.send(ClaimTask("cl", "j1", ready.run_id, f"{ready.run_id}/nope", 1, "ex1", T0))
    assert one(emits, ClaimRejected).reason == "unknown task"


def test_a_claim_repeated_after_the_start_is_ignored_and_says_why() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    emits = sim.claim(ready)
    assert logged(emits) == [ReportIgnored(f"ClaimTask:{ready.task_id}#1:1:ex1:{T0}/ignored", "j1", ready.task_id, 1,
                                           1, "ex1", "ClaimTask", "duplicate claim of a running attempt", T0)]


# --- misfires -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "reason"), [
    ({"misfire": "skip"}, "late; policy skip"),
    ({"misfire": "once"}, "late; covered by one catch-up run"),
    ({"misfire": "all", "catchup_window_ms": 5 * SEC}, "late beyond the catch-up window"),
])
def test_a_missed_occurrence_is_logged_with_its_policy_and_reason(schedule: dict[str, Any], reason: str) -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *", misfire_grace_ms=SEC, **schedule))
    emits = sim.tick(T0 + 31 * SEC)  # 10 s and 20 s are late
    first = sim.logged(OccurrenceMissed, emits)[0]
    assert first == OccurrenceMissed("j1@2027-01-15T08:00:10Z/missed", "j1", T0 + 10 * SEC, schedule["misfire"],
                                     reason, T0 + 31 * SEC)


def test_an_occurrence_exactly_at_the_edge_of_the_catch_up_window_still_runs() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *", misfire="all", misfire_grace_ms=SEC, catchup_window_ms=10 * SEC))
    sim.tick(T0 + 20 * SEC)
    fired = [(r.scheduled_for_ms - T0, r.trigger) for r in sim.logged(RunTriggered)]
    assert fired == [(10 * SEC, "CATCHUP"), (20 * SEC, "CRON")]


def test_an_occurrence_exactly_at_the_end_of_the_grace_is_on_time() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *", misfire="skip", misfire_grace_ms=SEC))
    sim.tick(T0 + 11 * SEC)
    assert [r.scheduled_for_ms - T0 for r in sim.readies()] == [10 * SEC]
    assert not sim.logged(OccurrenceMissed)


def test_pausing_at_a_runs_instant_leaves_that_run_alone() -> None:
    sim = Sim(params=Params(lookahead_ms=5 * SEC))
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.tick(T0 + 10 * SEC)
    assert sim.logged(TaskSettled, sim.send(PauseJob("p", "j1", T0))) == []
    assert sim.state is not None and sim.state.runs["j1@2027-01-15T08:00:10Z"].state == "RUNNING"


# --- what mutation testing found unchecked ------------------------------------------------------------------


def test_an_identical_resubmission_is_acknowledged_once_with_the_current_revision() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *"))
    sim.now = T0 + 2 * SEC
    again = SubmitJob("c2", job("j1", "*/10 * * * * *"), T0)
    assert logged(sim.send(again)) == [JobAccepted("c2/accepted", "c2", "j1", 1, job("j1", "*/10 * * * * *"),
                                                   T0 + 2 * SEC)]
    assert sim.send(again) == []  # its command id is remembered


def test_a_one_off_job_turned_into_a_cron_job_fires_from_now_on_not_from_the_epoch() -> None:
    sim = Sim()
    sim.submit(job("j1", at_ms=T0 + 50 * SEC))  # never fired: no cursor
    sim.now = T0 + 5 * SEC
    emits = sim.submit(job("j1", "*/10 * * * * *"))
    assert [type(r).__name__ for r in logged(emits)] == ["JobAccepted"]
    assert sim.state is not None and sim.state.cursor_ms == T0 + 5 * SEC
    sim.tick(T0 + 10 * SEC)
    assert [r.scheduled_for_ms - T0 for r in sim.logged(RunTriggered)] == [10 * SEC]


def test_a_job_created_again_after_its_deletion_keeps_its_runs_and_remembered_commands() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    sim.send(DeleteJob("d", "j1", T0))
    sim.now = T0 + SEC
    sim.send(SubmitJob("c2", job("j1"), T0))
    assert sim.state is not None and ready.run_id in sim.state.runs
    assert sim.send(DeleteJob("d", "j1", T0)) == []  # the old delete, redelivered, does not delete it again
    assert not sim.state.deleted


def test_every_spec_an_active_run_still_needs_is_kept_across_updates() -> None:
    sim = Sim()
    first = job("j1", "*/10 * * * * *")
    sim.submit(first)
    sim.tick(T0 + 10 * SEC)  # a run of revision 1 is active
    second = job("j1", "*/20 * * * * *")
    sim.submit(second)
    sim.tick(T0 + 20 * SEC)  # and one of revision 2
    sim.submit(job("j1", "*/30 * * * * *"))
    assert sim.state is not None and sim.state.revisions == {1: first, 2: second}


def test_a_rerun_starts_a_task_again_on_its_own_rung_after_timeouts_moved_it_up() -> None:
    sim = Sim()
    task = replace(TaskSpec("main", ART), priority="low", timeout_ms=1000, retry=RetryPolicy(max_attempts=2,
                                                                                             backoff_ms=0),
                   levels=[Level("high", 5000)])
    ready = one(sim.submit(JobSpec("j1", [task])), TaskReady)
    sim.fail(one(sim.claim(ready), ClaimGranted), "TIMEOUT")
    sim.fail(one(sim.claim(sim.readies()[-1]), ClaimGranted), "TIMEOUT")
    emits = sim.send(RerunTasks("rr", "j1", ready.run_id, "main", T0))
    again = one(emits, TaskReady)
    assert (again.attempt, again.priority, again.timeout_ms) == (3, "low", 1000)


def test_a_skipped_occurrence_is_logged_in_full() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *", overlap="forbid"))
    sim.tick(T0 + 10 * SEC)
    emits = sim.tick(T0 + 20 * SEC)
    assert logged(emits) == [OccurrenceSkipped("j1@2027-01-15T08:00:20Z/skipped", "j1", T0 + 20 * SEC, "OVERLAP",
                                               T0 + 20 * SEC, "j1@2027-01-15T08:00:10Z")]


def test_the_runs_that_finished_first_are_forgotten_first_whatever_their_ids() -> None:
    sim = Sim(params=Params(keep_finished_runs=1))
    sim.submit(job("j1", "* * * * * *", overlap="allow"))
    sim.tick(T0 + 2 * SEC)
    early, late = sim.readies()
    second = one(sim.claim(late), ClaimGranted)
    first = one(sim.claim(early), ClaimGranted)
    sim.complete(second)  # the later occurrence finishes first...
    sim.now += SEC
    sim.complete(first)  # ...so it is the one forgotten
    assert sim.state is not None and list(sim.state.runs) == [early.run_id]


def test_with_two_runs_allowed_at_once_the_third_waits_and_starts_when_one_ends() -> None:
    sim = Sim()
    sim.submit(replace(job("j1"), max_active_runs=2))
    sim.send(TriggerJob("t1", "j1", T0))
    sim.send(TriggerJob("t2", "j1", T0))
    assert [r.run_id for r in sim.readies()] == ["j1@2027-01-15T08:00:00Z", "j1@manual-t1"]
    assert sim.state is not None and sim.state.runs["j1@manual-t2"].state == "QUEUED"
    sim.run(sim.readies()[0])
    assert sim.readies()[-1].run_id == "j1@manual-t2"


def test_cancelling_a_queued_run_ends_it_cancelled_without_running_anything() -> None:
    sim = Sim()
    sim.submit(replace(job("j1"), max_active_runs=1))
    sim.send(TriggerJob("t1", "j1", T0))
    emits = sim.send(CancelRun("c", "j1", "j1@manual-t1", T0, "not needed"))
    assert one(emits, RunFinished) == RunFinished("j1@manual-t1/finished", "j1", "j1@manual-t1", "CANCELLED", T0)
    assert [r.run_id for r in sim.readies()] == ["j1@2027-01-15T08:00:00Z"]


def test_a_cancel_sent_to_an_executor_is_also_in_the_decision_log() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    one(sim.claim(ready), ClaimGranted)
    emits = sim.send(CancelRun("c", "j1", ready.run_id, T0))
    assert [type(r).__name__ for r in logged(emits)][:1] == ["CancelRequested"]


def test_another_executors_claim_on_a_running_task_is_rejected_not_ignored() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    sim.start(one(sim.claim(ready, "ex1"), ClaimGranted))
    assert one(sim.claim(ready, "ex2"), ClaimRejected).reason == "task is running by ex1"


def test_a_grant_never_started_lapses_a_lease_after_the_grant() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    sim.claim(ready)
    assert [e.outcome for e in sim.logged(AttemptEnded, sim.tick(T0 + 10 * SEC))] == ["LOST"]


def test_a_tick_that_finds_only_late_occurrences_runs_the_latest_once_and_records_the_rest_missed() -> None:
    sim = Sim()
    sim.submit(job("j1", "*/10 * * * * *", misfire="once", misfire_grace_ms=SEC))
    emits = sim.tick(T0 + 35 * SEC)  # 10, 20 and 30 s are late; 40 s is still ahead
    assert [m.scheduled_for_ms - T0 for m in sim.logged(OccurrenceMissed, emits)] == [10 * SEC, 20 * SEC]
    assert [(r.scheduled_for_ms - T0, r.trigger) for r in sim.logged(RunTriggered, emits)] == [(30 * SEC, "CATCHUP")]
    assert sim.state is not None and sim.state.owed_catchup_ms is None


def test_tasks_settled_without_running_say_why() -> None:
    sim = Sim()
    pipe = JobSpec("pipe", [TaskSpec("a", ART), TaskSpec("b", ART, depends_on=["a"]),
                            TaskSpec("alert", ART, depends_on=["a"], trigger_rule="one_failed")])
    sim.run(one(sim.submit(pipe), TaskReady))  # a succeeds: b runs, alert is skipped
    assert [(s.task_id.rsplit("/", 1)[1], s.state, s.reason) for s in sim.logged(TaskSettled)][1:] == [
        ("alert", "SKIPPED", "trigger rule not met")]
    sim.run(sim.readies()[-1], exit_code=1)
    pipe2 = replace(pipe, tasks=[*pipe.tasks[:2], TaskSpec("c", ART, depends_on=["b"])])
    sim.submit(pipe2)
    sim.send(TriggerJob("t", "pipe", T0))
    sim.run(sim.readies()[-1])
    sim.run(sim.readies()[-1], exit_code=1)  # b fails: c cannot run
    settled = [(s.task_id.rsplit("/", 1)[1], s.state, s.reason) for s in sim.logged(TaskSettled)]
    assert settled[-1] == ("c", "UPSTREAM_FAILED", "upstream failed")
