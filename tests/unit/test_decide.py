"""The scheduler's decisions, driven event by event through the pure reducer (no broker, no clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ksched.schemas.events import (
    AttemptEnded,
    CancelRequested,
    CancelRun,
    ClaimGranted,
    ClaimRejected,
    ClaimTask,
    DeleteJob,
    FailureReason,
    JobAccepted,
    JobChanged,
    JobDefinition,
    JobRejected,
    Level,
    OccurrenceMissed,
    OccurrenceSkipped,
    Outcome,
    PauseJob,
    ReportIgnored,
    ResumeJob,
    RetryPolicy,
    RetryScheduled,
    RunFinished,
    RunTriggered,
    SubmitJob,
    TaskHeartbeat,
    TaskReady,
    TaskSettled,
    Tick,
    TriggerJob,
)
from ksched.streams.core.decide import decide, next_wakeup
from ksched.streams.core.emit import CATALOG, DLQ, RUNS, TASKS, Emit
from ksched.streams.core.model import Params
from ksched.streams.core.retry import FREE_UNSTARTED_LAPSES, backoff_ms, jitter_unit
from tests.samples import job
from tests.sim import T0, Sim, one

SEC = 1000


def cron_sim(cron: str = "*/10 * * * * *", **schedule: object) -> Sim:
    sim = Sim()
    sim.submit(job("j1", cron, **schedule))  # type: ignore[arg-type]
    return sim


# --- submission --------------------------------------------------------------------------------


def test_a_valid_submission_is_accepted_and_catalogued() -> None:
    sim = Sim()
    emits = sim.submit(job("j1", "*/10 * * * * *"))
    accepted = one(emits, JobAccepted)
    assert (accepted.event_id, accepted.command_id, accepted.job_id, accepted.revision, accepted.job,
            accepted.at_ms) == ("cmd1/accepted", "cmd1", "j1", 1, job("j1", "*/10 * * * * *"), T0)
    (entry,) = [e for e in emits if e.channel == CATALOG]
    assert (entry.key, entry.record) == ("j1", JobDefinition("j1", 1, job("j1", "*/10 * * * * *"), False, T0))
    assert not sim.readies()  # a cron job waits for its first occurrence


def test_an_invalid_submission_is_rejected_and_dead_lettered_with_the_reason() -> None:
    sim = Sim()
    emits = sim.submit(job("j1", "61 * * * *"))
    assert "invalid cron expression" in one(emits, JobRejected).reason
    assert next(e.record for e in emits if e.channel == DLQ).startswith("invalid job: schedule:")
    assert sim.state is None


def test_the_same_command_twice_is_applied_once() -> None:
    sim = Sim()
    cmd = SubmitJob("c1", job("j1"), T0)
    first = sim.send(cmd)
    assert sim.send(cmd) == []
    assert len(sim.readies(first)) == 1


def test_resubmitting_an_identical_spec_changes_nothing() -> None:
    sim = cron_sim()
    emits = sim.submit(job("j1", "*/10 * * * * *"))
    assert one(emits, JobAccepted).revision == 1
    assert not any(e.channel in (CATALOG, RUNS, TASKS) for e in emits)


def test_an_update_takes_effect_from_the_next_occurrence_and_runs_record_their_revision() -> None:
    sim = cron_sim("*/10 * * * * *")
    sim.tick(T0 + 10 * SEC)
    first = sim.readies()[-1]
    assert first.revision == 1
    sim.submit(job("j1", "*/30 * * * * *"))
    assert sim.state is not None and sim.state.revision == 2
    sim.tick_to(T0 + 30 * SEC)
    fired = [r.scheduled_for_ms - T0 for r in sim.logged(RunTriggered)]
    assert fired == [10 * SEC, 30 * SEC]  # 20 s was an occurrence of revision 1's schedule only
    assert sim.readies()[-1].revision == 2


def test_a_one_off_job_runs_once_on_submit() -> None:
    sim = Sim()
    emits = sim.submit(job("once"))
    ready = one(emits, TaskReady)
    assert ready.run_id.startswith("once@")
    sim.run(ready)
    sim.tick_to(T0 + 60 * SEC)
    assert len(sim.logged(RunTriggered)) == 1
    assert one(sim.emits, RunFinished).state == "SUCCEEDED"


def test_a_one_off_job_at_an_instant_waits_for_the_tick_that_reaches_it() -> None:
    sim = Sim()
    sim.submit(job("later", at_ms=T0 + 5 * SEC))
    assert not sim.readies()
    assert next_wakeup(sim.state) == T0 + 5 * SEC
    sim.tick(T0 + 4 * SEC)
    assert not sim.readies()
    sim.tick(T0 + 5 * SEC)
    assert sim.readies()[0].scheduled_for_ms == T0 + 5 * SEC


# --- ticks ---------------------------------------------------------------------------------------


def test_ticks_fire_each_due_occurrence_with_a_deterministic_run_id() -> None:
    sim = cron_sim()
    sim.tick_to(T0 + 30 * SEC)
    runs = [r.run_id for r in sim.logged(RunTriggered)]
    assert runs == ["j1@2027-01-15T08:00:10Z", "j1@2027-01-15T08:00:20Z", "j1@2027-01-15T08:00:30Z"]


def test_a_duplicated_tick_fires_nothing_twice() -> None:
    sim = cron_sim()
    first = sim.send(Tick(0, T0 + 10 * SEC))
    again = sim.send(Tick(0, T0 + 10 * SEC))
    assert len(sim.readies(first)) == 1
    assert sim.readies(again) == []


def test_a_missed_tick_is_caught_up_by_the_next_one() -> None:
    sim = cron_sim()
    sim.tick(T0 + 30 * SEC)  # the ticks at 10 and 20 never came
    assert [r.scheduled_for_ms - T0 for r in sim.readies()] == [10 * SEC, 20 * SEC, 30 * SEC]


def test_time_never_goes_backwards() -> None:
    sim = cron_sim()
    sim.tick(T0 + 20 * SEC)
    assert [r.scheduled_for_ms - T0 for r in sim.readies()] == [10 * SEC, 20 * SEC]
    assert sim.state is not None and sim.state.cursor_ms == T0 + 20 * SEC
    before = sim.state
    # A late tick from the past, decided as the shell does: with the partition clock, not the tick's time.
    assert decide(before, Tick(0, T0 + 10 * SEC), T0 + 20 * SEC, sim.params).emits == []
    # And even decided at that older instant, nothing fires again and the cursor does not move back.
    step = decide(before, Tick(0, T0 + 10 * SEC), T0 + 10 * SEC, sim.params)
    assert step.emits == [] and step.state is not None and step.state.cursor_ms == T0 + 20 * SEC


# --- misfire policies ----------------------------------------------------------------------------


def test_misfire_skip_records_every_late_occurrence_as_missed_and_runs_none_of_them() -> None:
    sim = cron_sim(misfire="skip", misfire_grace_ms=5 * SEC)
    sim.tick(T0 + 61 * SEC)  # down for a minute
    missed = [m.scheduled_for_ms - T0 for m in sim.logged(OccurrenceMissed)]
    fired = [r.scheduled_for_ms - T0 for r in sim.logged(RunTriggered)]
    assert missed == [10 * SEC, 20 * SEC, 30 * SEC, 40 * SEC, 50 * SEC]
    assert fired == [60 * SEC]  # within the grace: on time


def test_misfire_once_runs_one_catch_up_for_the_whole_stretch() -> None:
    sim = cron_sim(misfire="once", misfire_grace_ms=5 * SEC)
    sim.tick(T0 + 61 * SEC)
    missed = [m.scheduled_for_ms - T0 for m in sim.logged(OccurrenceMissed)]
    triggered = [(r.scheduled_for_ms - T0, r.trigger) for r in sim.logged(RunTriggered)]
    assert missed == [10 * SEC, 20 * SEC, 30 * SEC, 40 * SEC]
    assert triggered == [(50 * SEC, "CATCHUP"), (60 * SEC, "CRON")]


def test_misfire_all_runs_every_occurrence_inside_the_catch_up_window() -> None:
    sim = cron_sim(misfire="all", misfire_grace_ms=5 * SEC, catchup_window_ms=25 * SEC)
    sim.tick(T0 + 61 * SEC)
    missed = [m.scheduled_for_ms - T0 for m in sim.logged(OccurrenceMissed)]
    triggered = [(r.scheduled_for_ms - T0, r.trigger) for r in sim.logged(RunTriggered)]
    assert missed == [10 * SEC, 20 * SEC, 30 * SEC]  # older than the window
    assert triggered == [(40 * SEC, "CATCHUP"), (50 * SEC, "CATCHUP"), (60 * SEC, "CRON")]


def test_a_long_outage_is_worked_off_in_bounded_ticks_and_nothing_is_lost() -> None:
    sim = Sim(params=Params(max_occurrences_per_tick=100))
    sim.submit(job("j1", "* * * * * *", misfire="once", misfire_grace_ms=2 * SEC))
    first = sim.tick(T0 + 1000 * SEC)  # 1,000 per-second occurrences due at once
    # The first 100: 99 recorded missed, the 100th owed to the next tick (the late stretch goes on).
    assert [e.record.scheduled_for_ms - T0 for e in first] == [i * SEC for i in range(1, 100)]
    assert all(isinstance(e.record, OccurrenceMissed) for e in first)
    assert sim.state is not None and sim.state.owed_catchup_ms == T0 + 100 * SEC
    for _ in range(20):
        sim.send(Tick(0, sim.now))
    missed = [m.scheduled_for_ms - T0 for m in sim.logged(OccurrenceMissed)]
    fired = [(r.scheduled_for_ms - T0, r.trigger) for r in sim.logged(RunTriggered)]
    # Late by more than the 2 s grace up to 997 s: missed, but the latest of them runs once; 998 s on: on time.
    assert missed == [i * SEC for i in range(1, 997)]
    assert fired == [(997 * SEC, "CATCHUP"), (998 * SEC, "CRON"), (999 * SEC, "CRON"), (1000 * SEC, "CRON")]


# --- overlap policies ----------------------------------------------------------------------------


def test_overlap_forbid_skips_an_occurrence_while_the_previous_run_is_active() -> None:
    sim = cron_sim(overlap="forbid")
    sim.tick(T0 + 10 * SEC)
    sim.tick(T0 + 20 * SEC)
    skipped = one(sim.emits, OccurrenceSkipped)
    assert (skipped.reason, skipped.blocking_run_id) == ("OVERLAP", "j1@2027-01-15T08:00:10Z")
    assert len(sim.readies()) == 1


def test_overlap_replace_cancels_the_running_one_and_starts_the_new_one() -> None:
    sim = cron_sim(overlap="replace")
    sim.tick(T0 + 10 * SEC)
    grant = one(sim.claim(sim.readies()[0]), ClaimGranted)
    sim.start(grant)
    sim.now += 5 * SEC
    sim.heartbeat(grant)
    emits = sim.tick(T0 + 20 * SEC)
    cancel = one(emits, CancelRequested)
    assert (cancel.run_id, cancel.reason) == ("j1@2027-01-15T08:00:10Z", "replaced by j1@2027-01-15T08:00:20Z")
    assert sim.control(emits) == [cancel]
    assert len(sim.readies()) == 2
    finished = sim.fail(grant, FailureReason.CANCELLED, retryable=False)
    assert one(finished, RunFinished).state == "CANCELLED"


def test_overlap_allow_lets_runs_overlap() -> None:
    sim = cron_sim(overlap="allow")
    sim.tick(T0 + 10 * SEC)
    sim.tick(T0 + 20 * SEC)
    assert len(sim.readies()) == 2


# --- claims, leases and fencing --------------------------------------------------------------------


def test_the_first_claim_wins_and_later_ones_are_rejected_and_told() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready, "ex1"), ClaimGranted)
    rejected = sim.claim(ready, "ex2")
    rej = one(rejected, ClaimRejected)
    assert grant.executor_id == "ex1" and grant.fencing_token == 1
    assert rej.executor_id == "ex2" and "claimed by ex1" in rej.reason
    assert sim.control(rejected) == [rej]


def test_the_same_claim_again_gets_the_same_grant() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    first = one(sim.claim(ready, "ex1"), ClaimGranted)
    again = one(sim.claim(ready, "ex1"), ClaimGranted)
    assert again == first


def test_a_claim_for_an_attempt_that_is_not_current_is_rejected() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    stale = replace(ready, attempt=7)
    assert "not current" in one(sim.claim(stale), ClaimRejected).reason


def test_a_lapsed_lease_is_retried_as_a_new_attempt_with_a_higher_fencing_token() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=3, backoff_ms=0))])
    ready = one(sim.submit(spec), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    sim.now += 5 * SEC
    sim.heartbeat(grant)  # extends the lease to now + 10 s
    sim.tick(sim.now + 9 * SEC)
    assert not sim.logged(AttemptEnded)
    emits = sim.tick(sim.now + 2 * SEC)
    assert one(emits, AttemptEnded).outcome == Outcome.LOST
    retry = sim.readies(emits)[0]
    assert retry.attempt == 2
    grant2 = one(sim.claim(retry, "ex2"), ClaimGranted)
    assert (grant.fencing_token, grant2.fencing_token) == (1, 2)


def test_heartbeats_sent_while_the_scheduler_was_down_keep_the_lease_when_it_catches_up() -> None:
    """The worker was down 20 s: on restart it reads the heartbeats sent meanwhile with its clock still at the
    last tick before the outage; they renew the lease from their own time, so the first fresh tick finds the
    attempt alive, not lost."""
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    outage_start = sim.now
    for s in range(1, 21):  # heartbeats every second of the outage, read after it with the stale clock
        sim.send(TaskHeartbeat(grant.job_id, grant.run_id, grant.task_id, grant.attempt, grant.fencing_token,
                               grant.executor_id, outage_start + s * SEC))
    task = next(iter(next(iter(sim.state.runs.values())).tasks.values()))  # type: ignore[union-attr]
    assert task.lease_deadline_ms == outage_start + 20 * SEC + sim.params.lease_ms  # from the last one's time
    emits = sim.tick(outage_start + 20 * SEC)
    assert not sim.logged(AttemptEnded, emits)
    emits = sim.tick(outage_start + 31 * SEC)  # then a real silence of more than a lease
    assert one(emits, AttemptEnded).outcome == Outcome.LOST


def renewal(ready: TaskReady, at: int, executor: str = "ex1") -> ClaimTask:
    """What an executor still waiting for the answer to `Sim.claim`'s claim sends every half lease."""
    return ClaimTask(f"{ready.task_id}#{ready.attempt}@{executor}", ready.job_id, ready.run_id, ready.task_id,
                     ready.attempt, executor, at, renewal=True)


def test_a_grant_the_executor_is_still_waiting_for_keeps_its_lease_while_the_scheduler_lags() -> None:
    """The worker lags 30 s behind its inbox: it grants the claim, then reads the ticks that piled up behind
    it, interleaved with the executor's renewals (sent every half lease while it waited for the answer). The
    grant stays alive until the start report, which comes after all of them; without renewals it lapses."""
    for renewing in (True, False):
        sim = Sim()
        ready = one(sim.submit(job("j1")), TaskReady)
        claimed_at = sim.now
        grant = one(sim.claim(ready), ClaimGranted)
        for s in range(1, 31):
            if renewing and s % 5 == 0:
                assert sim.send(renewal(ready, claimed_at + s * SEC)) == []  # renews quietly
            sim.tick(claimed_at + s * SEC)
        lost = sim.logged(AttemptEnded)
        if not renewing:
            assert [e.outcome for e in lost] == [Outcome.LOST]
            continue
        assert not lost
        sim.start(grant)
        sim.complete(grant, 0)
        assert one(sim.emits, RunFinished).state == "SUCCEEDED"


def test_a_renewal_never_wins_a_task_nor_keeps_someone_elses_grant() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    assert sim.send(renewal(ready, sim.now)) == []  # its claim was never read (an aborted transaction)
    grant = one(sim.claim(ready, "ex2"), ClaimGranted)
    assert grant.executor_id == "ex2"
    for _ in range(11):  # ex1's renewals do not keep ex2's grant alive
        sim.send(renewal(ready, sim.now + SEC))
        sim.tick(sim.now + SEC)
    assert [e.outcome for e in sim.logged(AttemptEnded)] == [Outcome.LOST]


def test_a_renewal_after_the_start_changes_nothing() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    before = sim.state
    assert sim.send(renewal(ready, sim.now + 60 * SEC)) == []
    assert sim.state == before


def test_a_late_completion_from_an_older_attempt_is_ignored_and_recorded() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=0))])
    ready = one(sim.submit(spec), TaskReady)
    old = one(sim.claim(ready), ClaimGranted)
    sim.start(old)
    sim.tick(sim.now + 11 * SEC)  # lease lapses
    new = one(sim.claim(sim.readies()[-1], "ex2"), ClaimGranted)
    sim.start(new)
    late = sim.complete(old, 0)
    ignored = one(late, ReportIgnored)
    assert ignored.report == "TaskCompleted" and "fenced" in ignored.reason
    assert not sim.logged(RunFinished)
    sim.complete(new, 0)
    assert one(sim.emits, RunFinished).state == "SUCCEEDED"


def test_a_duplicate_completion_changes_nothing() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = sim.run(ready)
    again = sim.complete(grant)
    assert "already ended" in one(again, ReportIgnored).reason
    assert len(sim.logged(RunFinished)) == 1


# --- retries -------------------------------------------------------------------------------------


def test_retries_wait_their_backoff_in_tick_time_then_run_the_next_attempt() -> None:
    sim = Sim()
    spec = job("j1")
    policy = RetryPolicy(max_attempts=3, backoff_ms=2 * SEC, multiplier=2.0, jitter=0.0)
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=policy)])
    ready = one(sim.submit(spec), TaskReady)
    sim.run(ready, exit_code=1)
    retry = one(sim.emits, RetryScheduled)
    assert (retry.next_attempt, retry.delay_ms) == (2, 2 * SEC)
    sim.tick(sim.now + 1999)
    assert len(sim.readies()) == 1
    sim.tick(sim.now + 1)
    second = sim.readies()[-1]
    assert second.attempt == 2
    sim.run(second, exit_code=1)
    assert sim.logged(RetryScheduled)[-1].delay_ms == 4 * SEC
    sim.tick(sim.now + 4 * SEC)
    sim.run(sim.readies()[-1], exit_code=1)
    assert one(sim.emits, RunFinished).state == "FAILED"
    assert "gave up after 3 attempt(s)" in [s for s in sim.logged(TaskSettled)][-1].reason


def test_backoff_is_exponential_capped_and_its_jitter_is_deterministic() -> None:
    spec = replace(job("j1").tasks[0], retry=RetryPolicy(max_attempts=9, backoff_ms=1000, backoff_max_ms=5000,
                                                           multiplier=3.0, jitter=0.5))
    # 1000, 3000, 9000 -> 5000, 27000 -> 5000, each times 1 + 0.5 * jitter_unit(key), then capped at 5000. The
    # jitter comes from the key alone: a replayed history must draw the same delays, so these values are fixed.
    assert [backoff_ms(spec, n, f"t#{n}") for n in range(1, 5)] == [1174, 2117, 5000, 4762]
    assert [jitter_unit(f"t#{n}") for n in range(1, 5)] == pytest.approx([0.34832, -0.58837, 0.81982, -0.09487],
                                                                          abs=1e-5)
    flat = replace(spec, retry=replace(spec.retry, jitter=0.0))
    assert [backoff_ms(flat, n, "any") for n in range(1, 5)] == [1000, 3000, 5000, 5000]


def test_exit_codes_that_are_not_retried_fail_the_task_at_once() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=5, no_retry_exit_codes=[3]))])
    sim.run(one(sim.submit(spec), TaskReady), exit_code=3)
    assert not sim.logged(RetryScheduled)
    assert one(sim.emits, RunFinished).state == "FAILED"


@pytest.mark.parametrize("reason", [FailureReason.EXECUTOR_STOPPED, FailureReason.CLAIM_ABANDONED])
def test_an_attempt_handed_back_unstarted_runs_again_at_once_without_using_a_retry(reason: str) -> None:
    """By a stopping executor, or by one whose grant came after it had given up waiting for it."""
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=1, backoff_ms=60 * SEC))])
    grant = one(sim.claim(one(sim.submit(spec), TaskReady)), ClaimGranted)
    emits = sim.fail(grant, reason)
    assert one(emits, AttemptEnded).outcome == Outcome.RELEASED
    assert one(emits, RetryScheduled).delay_ms == 0
    again = one(emits, TaskReady)
    assert again.attempt == 2
    # The one attempt the policy allows: it fails, and that is final.
    assert (grant.fencing_token, sim.run(again, exit_code=1).fencing_token) == (1, 2)
    assert one(sim.emits, RunFinished).state == "FAILED"
    assert "gave up after 1 attempt(s)" in sim.logged(TaskSettled)[-1].reason


def test_an_attempt_its_stopping_executor_killed_while_running_is_lost_and_counts() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=0))])
    grant = one(sim.claim(one(sim.submit(spec), TaskReady)), ClaimGranted)
    sim.start(grant)
    emits = sim.fail(grant, FailureReason.EXECUTOR_STOPPED)
    assert one(emits, AttemptEnded).outcome == Outcome.LOST
    sim.run(one(emits, TaskReady), exit_code=1)
    assert "gave up after 2 attempt(s)" in sim.logged(TaskSettled)[-1].reason


def lapse_unstarted(sim: Sim, ready: TaskReady, executor: str = "ex1") -> tuple[ClaimGranted, list[Emit]]:
    """Grant `ready`, hear nothing more from the executor, tick past the lease."""
    grant = one(sim.claim(ready, executor), ClaimGranted)
    return grant, sim.tick(sim.now + 11 * SEC)  # the lease is 10 s


def test_a_grant_whose_lease_lapses_before_any_start_runs_again_at_once_without_using_a_retry() -> None:
    """The race of a worker failover: the executor gave up on its claim (no answer in time) while the old
    scheduler's grant was on its way, and the new scheduler lapsed that grant before the executor's
    CLAIM_ABANDONED hand-back arrived. Nothing ran; the one attempt the policy allows is still to come."""
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=1, backoff_ms=60 * SEC))])
    grant, emits = lapse_unstarted(sim, one(sim.submit(spec), TaskReady))
    ended = one(emits, AttemptEnded)
    assert (ended.outcome, ended.reason) == (Outcome.LOST, "lease expired before executor ex1 reported a start")
    assert one(emits, RetryScheduled).delay_ms == 0
    again = one(emits, TaskReady)
    assert again.attempt == 2
    # The hand-back arrives after the lapse: recorded as ignored, and it changes nothing.
    late = sim.fail(grant, FailureReason.CLAIM_ABANDONED)
    assert one(late, ReportIgnored) and not [e for e in late if isinstance(e.record, AttemptEnded | TaskReady)]
    # The attempt the policy allows runs, fails, and that is final.
    assert sim.run(again, exit_code=1).fencing_token == 2
    assert one(sim.emits, RunFinished).state == "FAILED"
    assert "gave up after 1 attempt(s)" in sim.logged(TaskSettled)[-1].reason


def test_lapses_before_a_start_are_free_only_a_few_times() -> None:
    """An executor that dies every time between its claim and the start report must not retry a job forever."""
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=1, backoff_ms=0))])
    ready = one(sim.submit(spec), TaskReady)
    for n in range(1, FREE_UNSTARTED_LAPSES + 1):
        _, emits = lapse_unstarted(sim, ready)
        ready = one(emits, TaskReady)
        assert ready.attempt == n + 1
    _, emits = lapse_unstarted(sim, ready)  # one more: it counts, and the one attempt allowed is used up
    assert not [e for e in emits if isinstance(e.record, TaskReady)]
    assert one(sim.emits, RunFinished).state == "FAILED"


def test_a_started_attempt_whose_lease_lapses_counts() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=1, backoff_ms=0))])
    grant = one(sim.claim(one(sim.submit(spec), TaskReady)), ClaimGranted)
    sim.start(grant)
    emits = sim.tick(sim.now + 11 * SEC)
    assert "no heartbeat from executor ex1" in one(emits, AttemptEnded).reason
    assert one(sim.emits, RunFinished).state == "FAILED"


def test_an_artifact_problem_is_not_retried() -> None:
    sim = Sim()
    spec = job("j1")
    spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=5))])
    grant = one(sim.claim(one(sim.submit(spec), TaskReady)), ClaimGranted)
    sim.fail(grant, FailureReason.DIGEST_MISMATCH, retryable=False)
    assert one(sim.emits, AttemptEnded).outcome == Outcome.ERROR
    assert one(sim.emits, RunFinished).state == "FAILED"


def test_a_timeout_moves_the_task_up_a_level_with_a_longer_timeout() -> None:
    sim = Sim()
    spec = job("j1")
    task = replace(spec.tasks[0], priority="low", timeout_ms=1000, retry=RetryPolicy(max_attempts=3, backoff_ms=0),
                   levels=[Level("normal", 5000), Level("high", 20000)])
    ready = one(sim.submit(replace(spec, tasks=[task])), TaskReady)
    assert (ready.priority, ready.timeout_ms) == ("low", 1000)
    sim.fail(one(sim.claim(ready), ClaimGranted), FailureReason.TIMEOUT)
    second = sim.readies()[-1]
    assert (second.priority, second.timeout_ms) == ("normal", 5000)
    sim.fail(one(sim.claim(second), ClaimGranted), FailureReason.TIMEOUT)
    assert (sim.readies()[-1].priority, sim.readies()[-1].timeout_ms) == ("high", 20000)


# --- lifecycle -------------------------------------------------------------------------------------


def test_paused_jobs_record_their_occurrences_as_skipped_and_resume_from_now() -> None:
    sim = cron_sim()
    sim.send(PauseJob("p1", "j1", sim.now))
    sim.tick_to(T0 + 20 * SEC)
    assert [s.reason for s in sim.logged(OccurrenceSkipped)] == ["PAUSED", "PAUSED"]
    assert not sim.readies()
    assert one(sim.send(ResumeJob("r1", "j1", sim.now)), JobChanged).change == "RESUMED"
    sim.tick_to(T0 + 30 * SEC)
    assert [r.scheduled_for_ms - T0 for r in sim.readies()] == [30 * SEC]


def test_delete_cancels_active_runs_and_tombstones_the_catalog() -> None:
    sim = cron_sim()
    sim.tick(T0 + 10 * SEC)
    grant = one(sim.claim(sim.readies()[0]), ClaimGranted)
    emits = sim.send(DeleteJob("d1", "j1", sim.now))
    assert one(emits, CancelRequested).task_id == grant.task_id
    assert [e.record for e in emits if e.channel == CATALOG] == [None]
    sim.tick_to(T0 + 60 * SEC)
    assert len(sim.readies()) == 1


def test_run_now_starts_a_manual_run_outside_the_schedule() -> None:
    sim = cron_sim()
    emits = sim.send(TriggerJob("t1", "j1", sim.now))
    assert one(emits, RunTriggered).trigger == "MANUAL"
    assert sim.readies(emits)[0].run_id == "j1@manual-t1"


def test_commands_for_unknown_jobs_are_rejected() -> None:
    sim = Sim()
    assert "unknown job" in one(sim.send(PauseJob("p", "nope", T0)), JobRejected).reason


def test_cancel_stops_a_running_attempt_and_the_run_ends_cancelled() -> None:
    sim = Sim()
    ready = one(sim.submit(job("j1")), TaskReady)
    grant = one(sim.claim(ready), ClaimGranted)
    sim.start(grant)
    emits = sim.send(CancelRun("c", "j1", ready.run_id, sim.now, "no longer needed"))
    (cancel,) = sim.control(emits)
    assert isinstance(cancel, CancelRequested)
    assert (cancel.task_id, cancel.attempt, cancel.executor_id, cancel.fencing_token, cancel.reason) == (
        ready.task_id, 1, "ex1", grant.fencing_token, "no longer needed")
    sim.fail(grant, FailureReason.CANCELLED, retryable=False)
    assert one(sim.emits, RunFinished).state == "CANCELLED"


def test_decisions_replay_identically() -> None:
    def history(sim: Sim) -> list[object]:
        spec = job("j1", "*/5 * * * * *")
        spec = replace(spec, tasks=[replace(spec.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=1000))])
        sim.submit(spec)
        sim.tick_to(T0 + 12 * SEC)
        for r in list(sim.readies()):
            sim.run(r, exit_code=1)
        sim.tick_to(T0 + 20 * SEC)
        return [e.record for e in sim.emits]

    first = history(Sim())
    assert first == history(Sim())
    assert [r.scheduled_for_ms - T0 for r in first if isinstance(r, RunTriggered)] == [5000, 10000, 15000, 20000]
    retries = [(r.run_id, r.next_attempt, r.delay_ms) for r in first if isinstance(r, RetryScheduled)]
    assert retries == [("j1@2027-01-15T08:00:05Z", 2, 912), ("j1@2027-01-15T08:00:10Z", 2, 1091)]  # jittered


@pytest.mark.parametrize("event", [Tick(0, T0), SubmitJob("c", job("j1"), T0)])
def test_decide_does_not_modify_the_state_it_is_given(event: object) -> None:
    sim = cron_sim()
    sim.tick(T0 + 10 * SEC)
    before = sim.state
    snapshot = repr(before)
    decide(before, event, T0 + 20 * SEC, Params())  # type: ignore[arg-type]
    assert repr(before) == snapshot


# --- look-ahead ------------------------------------------------------------------------------------


def lookahead_sim(**schedule: object) -> Sim:
    sim = Sim(params=Params(lease_ms=10_000, lookahead_ms=5 * SEC))
    sim.submit(job("j1", "*/10 * * * * *", **schedule))  # type: ignore[arg-type]
    return sim


def test_occurrences_fire_ahead_of_their_instant_by_the_lookahead() -> None:
    sim = lookahead_sim()
    assert next_wakeup(sim.state, sim.params) == T0 + 5 * SEC
    emits = sim.tick(T0 + 5 * SEC)
    ready = one(emits, TaskReady)
    assert ready.scheduled_for_ms == T0 + 10 * SEC and ready.at_ms == T0 + 5 * SEC
    assert sim.tick(T0 + 6 * SEC) == []  # fired once, not again when the instant comes


def test_no_lookahead_where_firing_early_could_change_what_runs() -> None:
    sim = lookahead_sim(overlap="forbid")
    assert sim.tick(T0 + 5 * SEC) == []
    assert sim.readies(sim.tick(T0 + 10 * SEC))


def test_pausing_cancels_runs_fired_ahead_of_an_instant_not_yet_reached() -> None:
    sim = lookahead_sim()
    sim.tick(T0 + 5 * SEC)
    emits = sim.send(PauseJob("p", "j1", sim.now))
    assert one(emits, RunFinished).state == "CANCELLED"
    assert "paused before" in one(emits, TaskSettled).reason


def test_every_run_that_finishes_publishes_its_final_views_even_when_it_is_forgotten_at_once() -> None:
    # Catch-up after an outage: many runs finish at the same partition-clock instant, more than the state
    # keeps. Each must still publish its final views before it is forgotten.
    sim = Sim(params=Params(keep_finished_runs=2))
    sim.submit(job("j1", "* * * * * *", misfire="all"))
    sim.tick(T0 + 8 * SEC)
    grants = [one(sim.claim(r), ClaimGranted) for r in sim.readies()]
    for g in grants:
        sim.start(g)
    final_views: dict[str, str] = {}
    for g in reversed(grants):  # the oldest finish last, so they are the first to be forgotten
        for e in sim.complete(g):
            if e.channel == RUNS:
                final_views[e.key] = e.record.state
    assert len(final_views) == 8 and set(final_views.values()) == {"SUCCEEDED"}
    assert sim.state is not None and len([r for r in sim.state.runs.values() if r.state == "SUCCEEDED"]) == 2
