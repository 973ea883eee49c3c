"""The scheduler's decisions: `decide(state, event, now, params) -> Step(state, emits)`.

One job's state and one inbox event in, the job's new state and what to publish out. No I/O, no
clock: `now` is the partition clock, advanced only by tick events, so replaying the inbox reproduces
every decision. Every decision carries a derived id, and every handler tolerates the same report twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ksched.errors import JobSpecError
from ksched.instants import iso
from ksched.schemas.events import (
    POOL_LABEL,
    AttemptEnded,
    BackfillAccepted,
    BackfillFinished,
    BackfillJob,
    CancelRequested,
    CancelRun,
    ClaimGranted,
    ClaimRejected,
    ClaimTask,
    ClaimTasks,
    DeleteJob,
    ExecutorHeartbeat,
    FailureReason,
    InboxEvent,
    JobAccepted,
    JobChanged,
    JobRejected,
    JobSpec,
    OccurrenceMissed,
    OccurrenceSkipped,
    Outcome,
    PauseJob,
    ReportIgnored,
    RerunTasks,
    ResumeJob,
    RetryScheduled,
    RunFinished,
    RunState,
    RunTriggered,
    SubmitJob,
    SubmitJobs,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    TaskReady,
    TaskSettled,
    TaskStarted,
    TaskState,
    Tick,
    Trigger,
    TriggerJob,
)
from ksched.schemas.records import replace

from . import backfill, dag
from .emit import CONTROL, DLQ, EVENTS, READY, RUNS, TASKS, Emit
from .model import Attempt, Backfill, JobState, Params, Run, Task, children_of, split_task_id, task_id, tasks_by_name
from .retry import RetryDecision, attempts_charged, backoff_ms, decide_retry, level_params
from .schedule import fire_times, next_fire
from .validate import validate_job
from .views import view_changes

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Step:
    state: JobState | None
    emits: list[Emit]


def event_job_id(event: InboxEvent) -> str:
    """The job an inbox event is about (and so the key that owns its state)."""
    if isinstance(event, SubmitJob):
        return event.job.job_id
    if isinstance(event, Tick):
        raise ValueError("a tick is about every job of its partition")
    if isinstance(event, ExecutorHeartbeat):
        raise ValueError("an executor's heartbeat is about each attempt it names (heartbeats_of)")
    if isinstance(event, SubmitJobs):
        raise ValueError("a bulk submission is about each job it submits (submissions_of)")
    if isinstance(event, ClaimTasks):
        raise ValueError("a batch of claims is about each job it claims a task of (claims_of)")
    return event.job_id


def heartbeats_of(beat: ExecutorHeartbeat) -> list[TaskHeartbeat]:
    """An executor's heartbeat for a partition as the heartbeats of the attempts it names, each decided as if the
    executor had sent it alone (so replay and every rule about heartbeats stay the same)."""
    return [TaskHeartbeat(a.job_id, a.run_id, a.task_id, a.attempt, a.fencing_token, beat.executor_id, beat.at_ms)
            for a in beat.attempts]


def submissions_of(bulk: SubmitJobs) -> dict[str, list[SubmitJob]]:
    """A bulk submission as each job's submissions, in the record's order (a job named twice is decided twice, the
    later over the earlier, as two records would be)."""
    return _by_job(bulk.submissions, lambda cmd: cmd.job.job_id)


def claims_of(batch: ClaimTasks) -> dict[str, list[ClaimTask]]:
    """A batch of claims as each job's claims, in the record's order (each decided as if sent alone, so replay and
    every rule about claims stay the same)."""
    return _by_job(batch.claims, lambda claim: claim.job_id)


def _by_job(items: list[T], job_of: Callable[[T], str]) -> dict[str, list[T]]:
    by_job: dict[str, list[T]] = {}
    for item in items:
        by_job.setdefault(job_of(item), []).append(item)
    return by_job


def event_time(event: InboxEvent) -> int:
    """The time an event carries, used only until the partition's first tick has set its clock."""
    if isinstance(event, SubmitJob):
        return event.submitted_at_ms
    if isinstance(event, Tick):
        return event.now_ms
    if isinstance(event, TaskStarted):
        return event.started_at_ms
    if isinstance(event, TaskCompleted | TaskFailed):
        return event.finished_at_ms
    if isinstance(event, SubmitJobs):
        return min((cmd.submitted_at_ms for cmd in event.submissions), default=0)
    if isinstance(event, ClaimTasks):
        return min((claim.at_ms for claim in event.claims), default=0)
    return event.at_ms


def decide(state: JobState | None, event: InboxEvent, now_ms: int | None, params: Params) -> Step:
    ctx = _Ctx(state, now_ms if now_ms is not None else event_time(event), params)
    _HANDLERS[type(event)](ctx, event)
    # Views first, then forget old finished runs: a run that finished in this step must publish its
    # final views even if it is at once among those forgotten.
    ctx.emit_views(state)
    if ctx.state is not None:
        _forget_old_runs(ctx)
    return Step(ctx.state, ctx.emits)


def next_wakeup(state: JobState | None, params: Params | None = None) -> int | None:
    """The earliest instant a tick must visit this job (a fire time, a lease deadline, a retry)."""
    if state is None:
        return None
    times: list[int] = []
    nf = _next_fire(state)
    if nf is not None and not state.deleted:
        times.append(nf - _lookahead(state, params) if nf >= 0 else nf)
    if state.owed_catchup_ms is not None:
        times.append(state.owed_catchup_ms)
    for run in state.runs.values():
        if run.state in RunState.TERMINAL:
            continue
        for t in run.tasks.values():
            if t.state in (TaskState.CLAIMED, TaskState.RUNNING):
                times.append(t.lease_deadline_ms if t.lease_deadline_ms is not None else 0)
            elif t.state == TaskState.RETRY_WAIT and t.retry_at_ms is not None:
                times.append(t.retry_at_ms)
    return min(times) if times else None


def keep_warm(state: JobState | None, wake_ms: int | None, now_ms: int | None, within_ms: int) -> bool:
    """Whether the shell should keep this job's decoded state at hand: it has an active run (reports about it
    will come), or it wakes within `within_ms`. A daily job that just fired and finished is read again from the
    table tomorrow; kept, it took a place in the cache that a busier job could use, and the cache filled with
    such records, finished runs included, for an hour (100,000 daily jobs: a census of the worker's objects)."""
    if state is None:
        return False
    if any(run.state not in RunState.TERMINAL for run in state.runs.values()):
        return True
    return wake_ms is not None and (now_ms is None or wake_ms - now_ms <= within_ms)


def _lookahead(state: JobState, params: Params | None) -> int:
    """How early this job's occurrences fire (see `Params.lookahead_ms`)."""
    if params is None or state.paused or state.spec.schedule.overlap != "allow":
        return 0
    return params.lookahead_ms


def _next_fire(state: JobState) -> int | None:
    s = state.spec.schedule
    if s.cron is None and s.at_ms is None and state.cursor_ms is None:
        return -1  # a one-off "run now" that has not fired yet
    after = state.cursor_ms if state.cursor_ms is not None else -(2**62)
    return next_fire(s, state.job_id, after)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    state: JobState | None
    now: int
    params: Params
    emits: list[Emit] = field(default_factory=list)
    #: Tasks whose state changed in this step, by run, not yet looked at for their children's sake.
    changed: dict[str, set[str]] = field(default_factory=dict)

    @property
    def job(self) -> JobState:
        assert self.state is not None
        return self.state

    def emit(self, channel: str, key: str, record: Any) -> None:
        self.emits.append(Emit(channel, key, record))

    def log(self, record: Any) -> None:
        self.emit(EVENTS, self.job.job_id if self.state else record.job_id, record)

    def put_run(self, run: Run) -> None:
        self.state = replace(self.job, runs={**self.job.runs, run.run_id: run})

    def put_task(self, run_id: str, task: Task) -> Run:
        self.changed.setdefault(run_id, set()).add(task.name)
        run = self.job.runs[run_id]
        run = replace(run, tasks={**run.tasks, task.name: task})
        self.put_run(run)
        return run

    def remember(self, command_id: str) -> None:
        keep = self.params.keep_command_ids
        self.state = replace(self.job, commands=(*self.job.commands, command_id)[-keep:])

    def emit_views(self, before: JobState | None) -> None:
        self.emits.extend(view_changes(before, self.state))


# --- commands ---------------------------------------------------------------------------------


def _seen(ctx: _Ctx, command_id: str) -> bool:
    return ctx.state is not None and command_id in ctx.state.commands


def _on_submit(ctx: _Ctx, cmd: SubmitJob) -> None:
    if _seen(ctx, cmd.command_id):
        return
    job = cmd.job
    try:
        validate_job(job)
    except JobSpecError as err:
        ctx.emit(EVENTS, job.job_id, JobRejected(f"{cmd.command_id}/rejected", cmd.command_id, job.job_id,
                                                 str(err), ctx.now))
        ctx.emit(DLQ, job.job_id, f"invalid job: {err}")
        return
    old = ctx.state
    if old is None or old.deleted:
        revision = old.revision + 1 if old is not None else 1
        commands = (*old.commands, cmd.command_id) if old else (cmd.command_id,)
        ctx.state = JobState(
            job_id=job.job_id, spec=job, revision=revision,
            cursor_ms=None if job.schedule.cron is None else ctx.now,
            fencing=old.fencing if old else 0, runs=dict(old.runs) if old else {},
            revisions=_still_used(old) if old else {}, commands=commands[-ctx.params.keep_command_ids:],
            created_at_ms=ctx.now, updated_at_ms=ctx.now,
        )
    elif job == old.spec:
        ctx.remember(cmd.command_id)
        ctx.log(JobAccepted(f"{cmd.command_id}/accepted", cmd.command_id, job.job_id, old.revision, job, ctx.now))
        return
    else:
        revisions = _still_used(old)
        if old.revision in _used_revisions(old):
            revisions[old.revision] = old.spec
        # One-off jobs fire once per revision; cron jobs continue from their cursor with the new schedule.
        cursor = (old.cursor_ms if old.cursor_ms is not None else ctx.now) if job.schedule.cron else None
        ctx.state = replace(old, spec=job, revision=old.revision + 1, revisions=revisions, cursor_ms=cursor,
                            owed_catchup_ms=None, updated_at_ms=ctx.now,
                            commands=(*old.commands, cmd.command_id)[-ctx.params.keep_command_ids:])
    ctx.log(JobAccepted(f"{cmd.command_id}/accepted", cmd.command_id, job.job_id, ctx.job.revision, job, ctx.now))
    _fire_due(ctx)


def _still_used(state: JobState) -> dict[int, JobSpec]:
    """Earlier revisions that runs in the state, or runs whose views are still kept, were made from."""
    used = _used_revisions(state)
    return {rev: spec for rev, spec in state.revisions.items() if rev in used}


def _used_revisions(state: JobState) -> set[int]:
    return {r.revision for r in state.runs.values()} | {rev for _, rev in state.retired}


def _unknown_job(ctx: _Ctx, command_id: str, job_id: str) -> bool:
    if ctx.state is None or ctx.state.deleted:
        ctx.emit(EVENTS, job_id, JobRejected(f"{command_id}/rejected", command_id, job_id,
                                             f"unknown job {job_id!r}", ctx.now))
        return True
    return False


def _on_pause(ctx: _Ctx, cmd: PauseJob) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    if not ctx.job.paused:
        for run in _active_runs(ctx.job):
            if run.scheduled_for_ms > ctx.now and run.trigger != Trigger.MANUAL:
                _cancel_run(ctx, run.run_id, "job paused before the run's instant")
        ctx.state = replace(ctx.job, paused=True, updated_at_ms=ctx.now)
        ctx.log(JobChanged(f"{cmd.command_id}/paused", cmd.command_id, cmd.job_id, "PAUSED", ctx.job.revision,
                           ctx.now))


def _on_resume(ctx: _Ctx, cmd: ResumeJob) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    if ctx.job.paused:
        ctx.state = replace(ctx.job, paused=False, updated_at_ms=ctx.now)
        ctx.log(JobChanged(f"{cmd.command_id}/resumed", cmd.command_id, cmd.job_id, "RESUMED", ctx.job.revision,
                           ctx.now))
        _fire_due(ctx)
        _advance_backfills(ctx)


def _on_delete(ctx: _Ctx, cmd: DeleteJob) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    for run in _active_runs(ctx.job):
        _cancel_run(ctx, run.run_id, "job deleted")
    ctx.state = replace(ctx.job, deleted=True, owed_catchup_ms=None, backfills=(), updated_at_ms=ctx.now)
    ctx.log(JobChanged(f"{cmd.command_id}/deleted", cmd.command_id, cmd.job_id, "DELETED", ctx.job.revision,
                       ctx.now))


def _on_trigger(ctx: _Ctx, cmd: TriggerJob) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    _start_run(ctx, f"{cmd.job_id}@manual-{cmd.command_id}", Trigger.MANUAL, ctx.now)


def _on_backfill(ctx: _Ctx, cmd: BackfillJob) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    job = ctx.job
    why = ""
    if job.spec.schedule.cron is None:
        why = "backfill needs a cron schedule; this job has none (trigger it instead)"
    elif cmd.from_ms > cmd.to_ms:
        why = "backfill: from is after to"
    elif cmd.to_ms > ctx.now:
        why = "backfill fires past occurrences only: to is in the future"
    elif cmd.max_active < 1:
        why = "backfill: max_active must be 1 or more"
    if why:
        ctx.emit(EVENTS, cmd.job_id, JobRejected(f"{cmd.command_id}/rejected", cmd.command_id, cmd.job_id, why,
                                                 ctx.now))
        return
    ctx.remember(cmd.command_id)
    ranges = backfill.subtract(cmd.from_ms, cmd.to_ms, ctx.job.backfilled)
    ctx.state = replace(ctx.job, backfilled=backfill.merge(ctx.job.backfilled, cmd.from_ms, cmd.to_ms),
                        backfills=(*ctx.job.backfills, Backfill(cmd.command_id, ranges, cmd.max_active)))
    ctx.log(BackfillAccepted(f"{cmd.command_id}/backfill", cmd.command_id, cmd.job_id, cmd.from_ms, cmd.to_ms,
                             cmd.max_active, [[lo, hi] for lo, hi in ranges], ctx.now))
    _advance_backfills(ctx)


def backfill_run_id(job_id: str, t: int) -> str:
    return f"{job_id}@backfill-{iso(t)}"


def _advance_backfills(ctx: _Ctx) -> None:
    """Start the first backfill's next occurrences while it has room: at most `max_active` of its runs at once
    (overlap `allow`), or one and only while no other run of the job is active (`forbid`, `replace`: a
    backfill waits rather than skipping or replacing); never past the job's max_active_runs. A backfill whose
    instants are all fired and whose runs have finished is done, and the next one starts."""
    while ctx.job.backfills and not ctx.job.paused and not ctx.job.deleted:
        job = ctx.job
        bf = job.backfills[0]
        overlap = job.spec.schedule.overlap
        room = bf.max_active if overlap == "allow" else 1
        after, fired, exhausted = bf.after_ms, bf.fired, False
        pending = backfill.instants(job.spec.schedule, job.job_id, bf.ranges, after)
        while True:
            active = _active_runs(ctx.job)
            mine = sum(1 for r in active if r.trigger == Trigger.BACKFILL)
            blocked = overlap != "allow" and len(active) > mine
            limit = ctx.job.spec.max_active_runs
            if mine >= room or blocked or (limit > 0 and len(active) >= limit):
                break
            t = next(pending, None)
            if t is None:
                exhausted = True
                break
            _start_run(ctx, backfill_run_id(job.job_id, t), Trigger.BACKFILL, t)
            after, fired = t, fired + 1
        if not exhausted or any(r.trigger == Trigger.BACKFILL for r in _active_runs(ctx.job)):
            ctx.state = replace(ctx.job, backfills=(replace(bf, after_ms=after, fired=fired), *ctx.job.backfills[1:]))
            return
        ctx.state = replace(ctx.job, backfills=ctx.job.backfills[1:])
        ctx.log(BackfillFinished(f"{bf.command_id}/backfill-finished", bf.command_id, job.job_id, fired, ctx.now))


def _on_cancel(ctx: _Ctx, cmd: CancelRun) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    run = ctx.job.runs.get(cmd.run_id)
    if run is None or run.state in RunState.TERMINAL:
        why = "unknown run" if run is None else f"run already {run.state.lower()}"
        ctx.log(ReportIgnored(f"{cmd.command_id}/ignored", cmd.job_id, cmd.run_id, 0, 0, "", "CancelRun", why,
                              ctx.now))
        return
    _cancel_run(ctx, cmd.run_id, cmd.reason or "cancelled by user")


def _on_rerun(ctx: _Ctx, cmd: RerunTasks) -> None:
    if _seen(ctx, cmd.command_id) or _unknown_job(ctx, cmd.command_id, cmd.job_id):
        return
    ctx.remember(cmd.command_id)
    run = ctx.job.runs.get(cmd.run_id)
    why = ""
    if run is None:
        why = "unknown run"
    elif run.state not in RunState.TERMINAL:
        why = "run is still active"
    elif cmd.from_task not in run.tasks:
        why = f"unknown task {cmd.from_task!r}"
    if run is None or why:
        ctx.log(ReportIgnored(f"{cmd.command_id}/ignored", cmd.job_id, cmd.run_id, 0, 0, "", "RerunTasks", why,
                              ctx.now))
        return
    specs = ctx.job.spec_for(run.revision).tasks
    tasks = dict(run.tasks)
    for name in dag.descendants(specs, cmd.from_task):
        old = tasks[name]
        # Attempts are kept, so the next attempt number (and fencing token) keeps growing.
        tasks[name] = replace(old, state=TaskState.WAITING, level=0, lease_deadline_ms=None, retry_at_ms=None,
                              cancel_requested=False, reason="")
    ctx.put_run(replace(run, state=RunState.RUNNING, tasks=tasks, finished_at_ms=None, cancel_reason=""))
    _advance_run(ctx, run.run_id, everything=True)


# --- time ------------------------------------------------------------------------------------


def _on_tick(ctx: _Ctx, tick: Tick) -> None:
    if ctx.state is None:
        return
    for run in _active_runs(ctx.job):
        for task in list(run.tasks.values()):
            _tick_task(ctx, run.run_id, task, resumed=tick.resumed_from_ms is not None)
    _fire_due(ctx)


def _tick_task(ctx: _Ctx, run_id: str, task: Task, resumed: bool = False) -> None:
    if task.state in (TaskState.CLAIMED, TaskState.RUNNING):
        renewed = ctx.now + ctx.params.lease_ms
        if task.lease_deadline_ms is None or (resumed and task.lease_deadline_ms < renewed):
            # After the scheduler was away, executors get a lease from now to be heard before any lapses.
            ctx.put_task(run_id, replace(task, lease_deadline_ms=renewed))
        elif task.lease_deadline_ms <= ctx.now:
            att = task.attempt
            assert att is not None
            why = (f"lease expired: no heartbeat from executor {att.executor_id or '?'}" if att.started_at_ms
                   is not None else f"lease expired before executor {att.executor_id or '?'} reported a start")
            _end_attempt(ctx, run_id, task, Outcome.LOST, None, why, retryable=True)
    elif task.state == TaskState.RETRY_WAIT and task.retry_at_ms is not None and task.retry_at_ms <= ctx.now:
        _make_ready(ctx, run_id, task)


def _fire_due(ctx: _Ctx) -> None:
    job = ctx.job
    if job.deleted:
        return
    sched = job.spec.schedule
    if sched.cron is None and sched.at_ms is None:
        if job.cursor_ms is None:  # one-off, run now
            ctx.state = replace(job, cursor_ms=ctx.now)
            _fire(ctx, ctx.now, Trigger.ONCE)
        return
    after = job.cursor_ms if job.cursor_ms is not None else -(2**62)
    handled = 0
    late_stretch: list[int] = []
    limit = ctx.params.max_occurrences_per_tick
    horizon = ctx.now + _lookahead(job, ctx.params)
    for t in fire_times(sched, job.job_id, after):
        if t > horizon or handled >= limit:
            break
        handled += 1
        ctx.state = replace(ctx.job, cursor_ms=t)
        late = ctx.now - t > sched.misfire_grace_ms
        if ctx.job.paused:
            ctx.log(OccurrenceSkipped(f"{_occ(ctx, t)}/skipped", job.job_id, t, "PAUSED", ctx.now))
        elif not late:
            _settle_owed(ctx, late_stretch)
            _fire(ctx, t, Trigger.CRON if sched.cron else Trigger.ONCE)
        elif sched.misfire == "all" and ctx.now - t <= sched.catchup_window_ms:
            _fire(ctx, t, Trigger.CATCHUP)
        elif sched.misfire == "once":
            late_stretch.append(t)
        else:
            why = "late beyond the catch-up window" if sched.misfire == "all" else "late; policy skip"
            ctx.log(OccurrenceMissed(f"{_occ(ctx, t)}/missed", job.job_id, t, sched.misfire, why, ctx.now))
    stretch_ended = handled < limit
    if late_stretch or ctx.job.owed_catchup_ms is not None:
        if stretch_ended:
            _settle_owed(ctx, late_stretch)
        else:
            _carry_owed(ctx, late_stretch)


def _carry_owed(ctx: _Ctx, stretch: list[int]) -> None:
    """The tick's budget ran out inside a stretch of missed instants: owe its latest to the next tick."""
    owed = ctx.job.owed_catchup_ms
    instants = ([owed] if owed is not None else []) + stretch
    for t in instants[:-1]:
        _missed_once(ctx, t)
    ctx.state = replace(ctx.job, owed_catchup_ms=instants[-1])


def _settle_owed(ctx: _Ctx, stretch: list[int]) -> None:
    """A stretch of missed instants ended: record all but the latest as missed, run the latest once."""
    owed = ctx.job.owed_catchup_ms
    instants = ([owed] if owed is not None else []) + stretch
    stretch.clear()
    if not instants:
        return
    for t in instants[:-1]:
        _missed_once(ctx, t)
    ctx.state = replace(ctx.job, owed_catchup_ms=None)
    _fire(ctx, instants[-1], Trigger.CATCHUP)


def _missed_once(ctx: _Ctx, t: int) -> None:
    ctx.log(OccurrenceMissed(f"{_occ(ctx, t)}/missed", ctx.job.job_id, t, "once",
                             "late; covered by one catch-up run", ctx.now))


def _occ(ctx: _Ctx, t: int) -> str:
    return f"{ctx.job.job_id}@{iso(t)}"


def _fire(ctx: _Ctx, scheduled_ms: int, trigger: str) -> None:
    """An occurrence is due: apply the overlap policy, then start its run."""
    job = ctx.job
    run_id = _occ(ctx, scheduled_ms)
    if run_id in job.runs and trigger == Trigger.ONCE and job.runs[run_id].revision != job.revision:
        # A one-off job runs once per revision: a new revision due at the instant an earlier one ran (two
        # submissions in one tick) gets the run id of its own revision, still derived, not random.
        run_id = f"{run_id}.r{job.revision}"
    if run_id in job.runs:
        return  # already fired (a duplicate never starts a second run)
    active = _active_runs(job)
    overlap = job.spec.schedule.overlap
    if active and trigger in (Trigger.CRON, Trigger.CATCHUP, Trigger.ONCE):
        if overlap == "forbid":
            ctx.log(OccurrenceSkipped(f"{run_id}/skipped", job.job_id, scheduled_ms, "OVERLAP", ctx.now,
                                      active[0].run_id))
            return
        if overlap == "replace":
            for run in active:
                _cancel_run(ctx, run.run_id, f"replaced by {run_id}")
    _start_run(ctx, run_id, trigger, scheduled_ms)


def _start_run(ctx: _Ctx, run_id: str, trigger: str, scheduled_ms: int) -> None:
    job = ctx.job
    if run_id in job.runs:
        return
    limit = job.spec.max_active_runs
    running = [r for r in job.runs.values() if r.state == RunState.RUNNING]
    queued = limit > 0 and len(running) >= limit
    tasks = {t.name: Task(t.name) for t in job.spec.tasks}
    run = Run(run_id, job.revision, trigger, scheduled_ms, ctx.now,
              RunState.QUEUED if queued else RunState.RUNNING, tasks)
    ctx.put_run(run)
    ctx.log(RunTriggered(f"{run_id}/triggered", job.job_id, run_id, job.revision, trigger, scheduled_ms, ctx.now))
    if not queued:
        _advance_run(ctx, run_id, everything=True)


def _forget_old_runs(ctx: _Ctx) -> None:
    job = ctx.job
    finished = [r for r in job.runs.values() if r.state in RunState.TERMINAL]
    excess = len(finished) - ctx.params.keep_finished_runs
    if excess <= 0:
        return
    finished.sort(key=lambda r: (r.finished_at_ms or 0, r.run_id))
    drop = {r.run_id for r in finished[:excess]}
    runs = {rid: r for rid, r in job.runs.items() if rid not in drop}
    retired = [*job.retired, *((r.run_id, r.revision) for r in finished[:excess])]
    keep = max(0, ctx.params.keep_run_views - ctx.params.keep_finished_runs)
    if len(retired) > keep:
        for run_id, revision in retired[:len(retired) - keep]:
            _tombstone_views(ctx, run_id, revision)
        retired = retired[len(retired) - keep:]
    ctx.state = replace(job, runs=runs, retired=tuple(retired))
    ctx.state = replace(ctx.job, revisions=_still_used(ctx.job))


def _tombstone_views(ctx: _Ctx, run_id: str, revision: int) -> None:
    """A run past the views' retention: its run view and task views are deleted from the compacted topics."""
    for t in ctx.job.spec_for(revision).tasks:
        ctx.emit(TASKS, task_id(run_id, t.name), None)
    ctx.emit(RUNS, run_id, None)


# --- runs and tasks ---------------------------------------------------------------------------


def _active_runs(state: JobState) -> list[Run]:
    return [r for r in state.runs.values() if r.state not in RunState.TERMINAL]


def _make_ready(ctx: _Ctx, run_id: str, task: Task) -> None:
    run = ctx.job.runs[run_id]
    spec = ctx.job.task_spec(run, task.name)
    priority, timeout_ms = level_params(spec, task.level)
    attempt = Attempt(number=task.number + 1, priority=priority, timeout_ms=timeout_ms, ready_at_ms=ctx.now)
    task = replace(task, state=TaskState.READY, attempts=(*task.attempts, attempt), lease_deadline_ms=None,
                   retry_at_ms=None)
    ctx.put_task(run_id, task)
    tid = task_id(run_id, task.name)
    ready = TaskReady(
        event_id=f"{tid}#{attempt.number}/ready", job_id=ctx.job.job_id, run_id=run_id, task_id=tid,
        task_name=task.name, attempt=attempt.number, revision=run.revision, priority=attempt.priority,
        artifact=spec.artifact, args=list(spec.args), env=dict(spec.env), timeout_ms=attempt.timeout_ms,
        scheduled_for_ms=run.scheduled_for_ms, at_ms=ctx.now, labels=dict(spec.labels), limits=spec.limits,
        env_from=dict(spec.env_from), start_by_ms=_start_by(ctx.job, run, task),
    )
    ctx.emit(READY, tid, ready)
    ctx.log(ready)


def _start_by(job: JobState, run: Run, task: Task) -> int | None:
    """The instant after which an executor must not start this task's attempt: a scheduled occurrence (cron, or
    a one-off `at` an instant) whose run has not started, at a task with no dependencies, gets its misfire
    grace (`all`: its catch-up window). Catch-up, manual and backfill runs, retries after a start and tasks
    that wait for others have none. The executor measures the lateness; see `_missed_at_start`."""
    spec = job.spec_for(run.revision)
    s = spec.schedule
    if run.trigger != Trigger.CRON and not (run.trigger == Trigger.ONCE and s.at_ms is not None):
        return None
    if tasks_by_name(spec)[task.name].depends_on or any(a.started_at_ms is not None for a in task.attempts):
        return None
    return run.scheduled_for_ms + (s.catchup_window_ms if s.misfire == "all" else s.misfire_grace_ms)


def _settle(ctx: _Ctx, run_id: str, task: Task, state: str, reason: str) -> None:
    ctx.put_task(run_id, replace(task, state=state, reason=reason, lease_deadline_ms=None, retry_at_ms=None))
    tid = task_id(run_id, task.name)
    ctx.log(TaskSettled(f"{tid}/{state.lower()}", ctx.job.job_id, run_id, tid, state, reason, ctx.now))


def _advance_run(ctx: _Ctx, run_id: str, everything: bool = False) -> None:
    """Make ready what can start, settle what never will, and end the run when nothing can progress.

    Only the children of tasks that changed are looked at, unless `everything` (a run that starts)."""
    run = ctx.job.runs[run_id]
    changed = ctx.changed.pop(run_id, set())
    if run.state != RunState.RUNNING:
        return
    if not run.cancel_reason:
        spec = ctx.job.spec_for(run.revision)
        settled = dag.settle_waiting(spec.tasks, run.tasks, tasks_by_name(spec), children_of(spec),
                                     None if everything else sorted(changed))
        for name, new in settled.items():
            task = ctx.job.runs[run_id].tasks[name]
            if new == TaskState.READY:
                _make_ready(ctx, run_id, task)
            else:
                _settle(ctx, run_id, task, new, "upstream failed" if new == TaskState.UPSTREAM_FAILED else
                        "trigger rule not met")
    ctx.changed.pop(run_id, None)  # what settling changed was already propagated
    run = ctx.job.runs[run_id]
    outcome = dag.run_outcome(run.tasks, cancelled=bool(run.cancel_reason))
    if outcome is None:
        return
    # The partition's clock moves with ticks, so it can stand behind the executor's report that ended the run:
    # a run ends no earlier than its last attempt (its duration is never negative, and has milliseconds).
    ended = max([ctx.now, *(a.finished_at_ms for t in run.tasks.values() for a in t.attempts
                            if a.finished_at_ms is not None)])
    ctx.put_run(replace(run, state=outcome, finished_at_ms=ended))
    ctx.log(RunFinished(f"{run_id}/finished", ctx.job.job_id, run_id, outcome, ctx.now))
    _start_queued(ctx)
    _advance_backfills(ctx)


def _start_queued(ctx: _Ctx) -> None:
    limit = ctx.job.spec.max_active_runs
    queued = sorted((r for r in ctx.job.runs.values() if r.state == RunState.QUEUED),
                    key=lambda r: (r.created_at_ms, r.run_id))
    for run in queued:
        running = sum(1 for r in ctx.job.runs.values() if r.state == RunState.RUNNING)
        if limit > 0 and running >= limit:
            return
        ctx.put_run(replace(run, state=RunState.RUNNING))
        _advance_run(ctx, run.run_id, everything=True)


def _cancel_run(ctx: _Ctx, run_id: str, reason: str) -> None:
    run = ctx.job.runs[run_id]
    ctx.put_run(replace(run, cancel_reason=reason,
                        state=RunState.RUNNING if run.state == RunState.QUEUED else run.state))
    for task in list(ctx.job.runs[run_id].tasks.values()):
        if task.state in (TaskState.CLAIMED, TaskState.RUNNING):
            att = task.attempt
            assert att is not None
            ctx.put_task(run_id, replace(task, cancel_requested=True))
            tid = task_id(run_id, task.name)
            req = CancelRequested(f"{tid}#{att.number}/cancel", ctx.job.job_id, run_id, tid, att.number,
                                  att.executor_id, att.fencing_token, reason, ctx.now)
            ctx.emit(CONTROL, att.executor_id, req)
            ctx.log(req)
        elif task.state not in TaskState.TERMINAL:
            _settle(ctx, run_id, task, TaskState.CANCELLED, reason)
    _advance_run(ctx, run_id)


# --- executor reports ------------------------------------------------------------------------


def _locate(ctx: _Ctx, tid: str) -> tuple[Run, Task] | None:
    if ctx.state is None:
        return None
    run_id, name = split_task_id(tid)
    run = ctx.state.runs.get(run_id)
    task = run.tasks.get(name) if run else None
    return (run, task) if run is not None and task is not None else None


def _on_claim(ctx: _Ctx, claim: ClaimTask) -> None:
    found = _locate(ctx, claim.task_id)
    if claim.renewal:
        _on_claim_renewal(ctx, found, claim)
        return

    def reject(reason: str) -> None:
        rej = ClaimRejected(f"{claim.claim_id}/rejected", claim.job_id, claim.task_id, claim.attempt,
                            claim.executor_id, claim.claim_id, reason, ctx.now)
        ctx.emit(CONTROL, claim.executor_id, rej)
        ctx.emit(EVENTS, claim.job_id, rej)

    if found is None:
        reject("unknown task")
        return
    run, task = found
    att = task.attempt
    if att is None or att.number != claim.attempt:
        reject(f"attempt {claim.attempt} is not current (current: {task.number})")
    elif task.state == TaskState.READY and not task.cancel_requested:
        _grant(ctx, run, task, att, claim)
    elif task.state == TaskState.CLAIMED and att.claim_id == claim.claim_id:
        _send_grant(ctx, run, task, att)  # the same claim again: the same answer
    elif task.state == TaskState.RUNNING and att.claim_id == claim.claim_id:
        _ignore(ctx, claim.task_id, claim.attempt, att.fencing_token, claim.executor_id, "ClaimTask",
                "duplicate claim of a running attempt")
    else:
        holder = f" by {att.executor_id}" if att.executor_id else ""
        reject(f"task is {task.state.lower()}{holder}")


def _on_claim_renewal(ctx: _Ctx, found: tuple[Run, Task] | None, claim: ClaimTask) -> None:
    """An executor still waiting for the answer to its claim: a grant it has not received yet keeps its lease.
    A worker lagging more than a lease behind its inbox would otherwise decide a grant, then read the ticks
    that piled up behind the claim and lapse the grant before reading the executor's start report. Anything
    else (the claim lost, or its answer already taken up) needs nothing: the answer is on its way."""
    if found is None:
        return
    run, task = found
    att = task.attempt
    if (task.state == TaskState.CLAIMED and att is not None and att.claim_id == claim.claim_id
            and att.number == claim.attempt):
        renewed = _lease_from(ctx, claim.at_ms)
        if task.lease_deadline_ms is None or renewed > task.lease_deadline_ms:
            ctx.put_task(run.run_id, replace(task, lease_deadline_ms=renewed))


def _grant(ctx: _Ctx, run: Run, task: Task, att: Attempt, claim: ClaimTask) -> None:
    token = ctx.job.fencing + 1
    ctx.state = replace(ctx.job, fencing=token)
    att = replace(att, claim_id=claim.claim_id, executor_id=claim.executor_id, fencing_token=token)
    task = replace(task.with_attempt(att), state=TaskState.CLAIMED,
                   lease_deadline_ms=ctx.now + ctx.params.lease_ms)
    ctx.put_task(run.run_id, task)
    _send_grant(ctx, run, task, att)


def _send_grant(ctx: _Ctx, run: Run, task: Task, att: Attempt) -> None:
    tid = task_id(run.run_id, task.name)
    grant = ClaimGranted(f"{tid}#{att.number}/granted", ctx.job.job_id, run.run_id, tid, att.number,
                         att.executor_id, att.claim_id, att.fencing_token, ctx.params.lease_ms, ctx.now)
    ctx.emit(CONTROL, att.executor_id, grant)
    ctx.log(grant)


def _ignore(ctx: _Ctx, tid: str, attempt: int, token: int, executor: str, report: str, reason: str) -> None:
    job_id = ctx.state.job_id if ctx.state else tid.split("@", 1)[0]
    ev = ReportIgnored(f"{report}:{tid}#{attempt}:{token}:{executor}:{ctx.now}/ignored", job_id, tid, attempt,
                       token, executor, report, reason, ctx.now)
    ctx.emit(EVENTS, job_id, ev)


_Report = TaskStarted | TaskHeartbeat | TaskCompleted | TaskFailed


def _current(ctx: _Ctx, rep: _Report) -> tuple[Run, Task, Attempt] | None:
    """The run, task and attempt a report is about, if it is the current, live attempt; else record why not."""
    found = _locate(ctx, rep.task_id)
    name = type(rep).__name__
    if found is None:
        _ignore(ctx, rep.task_id, rep.attempt, rep.fencing_token, rep.executor_id, name, "unknown task")
        return None
    run, task = found
    att = task.attempt
    if att is None or att.number != rep.attempt or att.fencing_token != rep.fencing_token:
        current = f"attempt {task.number}, token {att.fencing_token if att else 0}"
        _ignore(ctx, rep.task_id, rep.attempt, rep.fencing_token, rep.executor_id, name,
                f"fenced: not the current attempt ({current})")
        return None
    if task.state not in (TaskState.CLAIMED, TaskState.RUNNING):
        _ignore(ctx, rep.task_id, rep.attempt, rep.fencing_token, rep.executor_id, name,
                f"attempt already ended (task {task.state.lower()})")
        return None
    return run, task, att


def _on_started(ctx: _Ctx, rep: TaskStarted) -> None:
    cur = _current(ctx, rep)
    if cur is None:
        return
    run, task, att = cur
    if task.state == TaskState.RUNNING:
        return  # duplicate
    task = replace(task.with_attempt(replace(att, started_at_ms=rep.started_at_ms)), state=TaskState.RUNNING,
                   lease_deadline_ms=_lease_from(ctx, rep.started_at_ms))
    ctx.put_task(run.run_id, task)


def _on_heartbeat(ctx: _Ctx, rep: TaskHeartbeat) -> None:
    cur = _current(ctx, rep)
    if cur is None:
        return
    run, task, _ = cur
    ctx.put_task(run.run_id, replace(task, lease_deadline_ms=_lease_from(ctx, rep.at_ms)))


#: How far ahead of the partition clock an executor's report may renew a lease from (see `_lease_from`).
REPORT_AHEAD_MAX_MS = 300_000


def _lease_from(ctx: _Ctx, reported_ms: int) -> int:
    """A lease renewed by an executor's report: from the later of the partition clock and the report's own
    time (at most REPORT_AHEAD_MAX_MS ahead, against a wrong clock). While a worker catches up after an outage
    its clock is stale, so reports sent during the outage must not be renewed from that stale clock: the
    first fresh tick would find every lease lapsed."""
    return max(ctx.now, min(reported_ms, ctx.now + REPORT_AHEAD_MAX_MS)) + ctx.params.lease_ms


def _on_completed(ctx: _Ctx, rep: TaskCompleted) -> None:
    cur = _current(ctx, rep)
    if cur is None:
        return
    run, task, att = cur
    att = replace(att, started_at_ms=att.started_at_ms or rep.started_at_ms, log_ref=rep.log_ref)
    task = task.with_attempt(att)
    outcome = Outcome.SUCCEEDED if rep.exit_code == 0 else Outcome.FAILED
    why = "exit code 0" if rep.exit_code == 0 else f"exit code {rep.exit_code}"
    mark = len(ctx.emits)
    _end_attempt(ctx, run.run_id, task, outcome, rep.exit_code, why, retryable=True,
                 finished_at_ms=rep.finished_at_ms)
    if rep.offer_id and rep.offer_pool == ctx.job.task_spec(run, task.name).labels.get(POOL_LABEL, ""):
        _take_offer(ctx, rep, mark)


def _take_offer(ctx: _Ctx, rep: TaskCompleted, since: int) -> None:
    """Grant the executor that offered its freed slot (`rep.offer_id`) the first task of the same run that this
    completion made ready and that belongs to the executor's pool and is due (not the completed task's own retry:
    that may go to any executor, as a retry should): the hand-off from a task to its
    child then skips the ready topic, the executor's claim transaction and the claim's trip through the inbox.
    The offer stands for the claim (its id is the claim id), so the grant is the one a claim would have won:
    the next fencing token and a lease. The ready record goes to that executor's control partition instead of
    the ready topic, just before its grant; the decision log records both as for any claim. Only an offer for the
    pool of the task that completed is taken up: the executor ran a task of that pool, so it may take that
    pool's tasks (pools may separate what executors may run, by the ready topics' ACLs)."""
    for i in range(since, len(ctx.emits)):
        e = ctx.emits[i]
        if e.channel != READY:
            continue
        ready: TaskReady = e.record
        if (ready.run_id != rep.run_id or ready.task_id == rep.task_id
                or ready.labels.get(POOL_LABEL, "") != rep.offer_pool or ready.scheduled_for_ms > ctx.now):
            continue
        found = _locate(ctx, ready.task_id)
        if found is None:
            continue
        run, task = found
        att = task.attempt
        if task.state != TaskState.READY or task.cancel_requested or att is None or att.number != ready.attempt:
            continue
        ctx.emits[i] = Emit(CONTROL, rep.executor_id, ready)
        _grant(ctx, run, task, att, ClaimTask(rep.offer_id, ctx.job.job_id, run.run_id, ready.task_id,
                                              ready.attempt, rep.executor_id, ctx.now))
        return


_FAILURE_OUTCOME = {FailureReason.TIMEOUT: Outcome.TIMED_OUT, FailureReason.CANCELLED: Outcome.CANCELLED}


def _on_failed(ctx: _Ctx, rep: TaskFailed) -> None:
    cur = _current(ctx, rep)
    if cur is None:
        return
    run, task, att = cur
    att = replace(att, started_at_ms=att.started_at_ms or rep.started_at_ms, log_ref=rep.log_ref)
    task = task.with_attempt(att)
    if rep.reason == FailureReason.TOO_LATE and att.started_at_ms is None:
        _missed_at_start(ctx, run, task, rep)
        return
    outcome = _FAILURE_OUTCOME.get(rep.reason, Outcome.ERROR)
    if rep.reason in (FailureReason.EXECUTOR_STOPPED, FailureReason.CLAIM_ABANDONED):
        outcome = Outcome.LOST if att.started_at_ms is not None else Outcome.RELEASED
    _end_attempt(ctx, run.run_id, task, outcome, rep.exit_code, f"{rep.reason}: {rep.message}",
                 retryable=rep.retryable, finished_at_ms=rep.finished_at_ms)


def _missed_at_start(ctx: _Ctx, run: Run, task: Task, rep: TaskFailed) -> None:
    """The executor did not start the attempt: its occurrence's misfire grace had run out when its turn came.
    The occurrence is missed, with the lateness the executor measured: the run ends CANCELLED; with `misfire:
    once` one catch-up run covers it (unless one is already on its way), as after a late tick."""
    schedule = ctx.job.spec_for(run.revision).schedule
    late_s = (rep.finished_at_ms - run.scheduled_for_ms) / 1000
    why = f"missed: not started {late_s:.1f}s after its instant (misfire grace {schedule.misfire_grace_ms / 1000:g}s)"
    ctx.put_run(replace(ctx.job.runs[run.run_id], cancel_reason=why))
    _end_attempt(ctx, run.run_id, task, Outcome.MISSED, None, f"{rep.reason}: {rep.message}", retryable=False,
                 finished_at_ms=rep.finished_at_ms)
    catchup = schedule.misfire == "once" and not any(r.trigger == Trigger.CATCHUP for r in _active_runs(ctx.job))
    ctx.log(OccurrenceMissed(f"{run.run_id}/missed", ctx.job.job_id, run.scheduled_for_ms, schedule.misfire,
                             why + ("; covered by one catch-up run" if catchup else ""), ctx.now))
    if ctx.job.runs[run.run_id].state not in RunState.TERMINAL:
        _cancel_run(ctx, run.run_id, why)
    if catchup:
        _start_run(ctx, f"{run.run_id}-catchup", Trigger.CATCHUP, run.scheduled_for_ms)


def _end_attempt(
    ctx: _Ctx, run_id: str, task: Task, outcome: str, exit_code: int | None, reason: str, *, retryable: bool,
    finished_at_ms: int | None = None,
) -> None:
    att = task.attempt
    assert att is not None
    att = replace(att, outcome=outcome, exit_code=exit_code, reason=reason,
                  finished_at_ms=finished_at_ms if finished_at_ms is not None else ctx.now)
    task = replace(task.with_attempt(att), lease_deadline_ms=None)
    ctx.put_task(run_id, task)
    tid = task_id(run_id, task.name)
    ctx.log(AttemptEnded(f"{tid}#{att.number}/ended", ctx.job.job_id, run_id, tid, att.number, att.fencing_token,
                         outcome, reason, ctx.now, exit_code))
    run = ctx.job.runs[run_id]
    if task.cancel_requested or outcome in (Outcome.CANCELLED, Outcome.MISSED):
        _settle(ctx, run_id, task, TaskState.CANCELLED, run.cancel_reason or reason)
    elif outcome == Outcome.SUCCEEDED:
        _settle(ctx, run_id, task, TaskState.SUCCEEDED, reason)
    else:
        spec = ctx.job.task_spec(run, task.name)
        made = attempts_charged(task.attempts)
        free = made == attempts_charged(task.attempts[:-1])  # handed back unstarted, or lapsed before a start
        if free and outcome == Outcome.LOST:
            verdict = RetryDecision(True, "its lease lapsed before a start was reported: offered again, not "
                                          "counted as an attempt", task.level)
        else:
            verdict = decide_retry(spec, made, outcome, exit_code, retryable, task.level)
        if verdict.retry:
            delay = 0 if free else backoff_ms(spec, made, f"{tid}#{att.number}")
            task = replace(task, state=TaskState.RETRY_WAIT, retry_at_ms=ctx.now + delay, level=verdict.level)
            ctx.put_task(run_id, task)
            priority, timeout_ms = level_params(spec, verdict.level)
            ctx.log(RetryScheduled(f"{tid}#{att.number + 1}/retry", ctx.job.job_id, run_id, tid, att.number + 1,
                                   ctx.now + delay, delay, priority, timeout_ms, verdict.reason, ctx.now))
            if delay == 0:
                _make_ready(ctx, run_id, task)
        else:
            _settle(ctx, run_id, task, TaskState.FAILED, f"{reason}; {verdict.reason}")
    _advance_run(ctx, run_id)


_HANDLERS: dict[type, Callable[[_Ctx, Any], None]] = {
    SubmitJob: _on_submit,
    PauseJob: _on_pause,
    ResumeJob: _on_resume,
    DeleteJob: _on_delete,
    TriggerJob: _on_trigger,
    CancelRun: _on_cancel,
    RerunTasks: _on_rerun,
    BackfillJob: _on_backfill,
    Tick: _on_tick,
    ClaimTask: _on_claim,
    TaskStarted: _on_started,
    TaskHeartbeat: _on_heartbeat,
    TaskCompleted: _on_completed,
    TaskFailed: _on_failed,
}

