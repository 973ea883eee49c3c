"""Domain events and records, as plain typed classes.

Each class mirrors one Avro record in `schemas/ksched.<Name>.avsc`, which is the contract: the same fields in
the same order, types that map onto the Avro ones, the same defaults (tests/unit/test_schema_contract.py checks
every class field by field). `schemas.codec` turns them into bytes and back. Nothing here knows about Kafka or
Avro. Times are epoch milliseconds (UTC) in fields ending in `_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .records import set_slots_in_init

# ---------------------------------------------------------------------------------------------
# Vocabulary. Strings rather than Avro enums, so that a new value does not break old readers.
# ---------------------------------------------------------------------------------------------

PRIORITIES = ("high", "normal", "low")
MISFIRE_POLICIES = ("skip", "once", "all")
OVERLAP_POLICIES = ("allow", "forbid", "replace")
TRIGGER_RULES = ("all_success", "all_done", "one_success", "one_failed", "none_failed")
#: The task label that routes a task to a pool of executors (e.g. bigger machines).
POOL_LABEL = "pool"


class TaskState:
    WAITING = "WAITING"  # dependencies not yet satisfied
    READY = "READY"  # offered to executors on a ready topic
    CLAIMED = "CLAIMED"  # a claim won; the process is about to start
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"  # an attempt failed; the next one waits for its backoff tick
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"

    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED, UPSTREAM_FAILED})
    ACTIVE = frozenset({READY, CLAIMED, RUNNING})


class RunState:
    QUEUED = "QUEUED"  # waiting for max_active_runs
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class Outcome:
    """How one attempt ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the process exited non-zero
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    LOST = "LOST"  # the lease lapsed (the executor died or was cut off), or its executor stopped while it ran
    RELEASED = "RELEASED"  # handed back unstarted by an executor that stopped; not counted as an attempt
    ERROR = "ERROR"  # the process could not be started (artifact missing, digest mismatch, ...)
    MISSED = "MISSED"  # not started: it would have started later than its occurrence's misfire grace allows


class FailureReason:
    """`TaskFailed.reason` codes, reported by executors."""

    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    ARTIFACT_MISSING = "ARTIFACT_MISSING"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    NOT_EXECUTABLE = "NOT_EXECUTABLE"
    ARTIFACT_TOO_LARGE = "ARTIFACT_TOO_LARGE"
    SPAWN_ERROR = "SPAWN_ERROR"
    EXECUTOR_STOPPED = "EXECUTOR_STOPPED"  # the executor is shutting down: the attempt is handed back
    #: The executor had given up waiting for the answer to its claim (and used the slot otherwise) when the grant
    #: came: the attempt is handed back unstarted.
    CLAIM_ABANDONED = "CLAIM_ABANDONED"
    #: A secret the task references (`env_from`) is not in this executor's secret store.
    SECRET_MISSING = "SECRET_MISSING"
    #: The attempt would have started after its `start_by_ms` (its occurrence's misfire grace): not started.
    TOO_LATE = "TOO_LATE"


class Trigger:
    CRON = "CRON"
    ONCE = "ONCE"
    MANUAL = "MANUAL"
    CATCHUP = "CATCHUP"
    BACKFILL = "BACKFILL"


# ---------------------------------------------------------------------------------------------
# Job definitions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    SCHEMA: ClassVar[str] = "ksched.ArtifactRef"
    digest: str  # "sha256:<64 hex>"
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    SCHEMA: ClassVar[str] = "ksched.RetryPolicy"
    max_attempts: int = 1
    backoff_ms: int = 1000
    backoff_max_ms: int = 300_000
    multiplier: float = 2.0
    jitter: float = 0.1
    no_retry_exit_codes: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Level:
    """One rung of the multi-level queue: an attempt that timed out moves to the next rung."""

    SCHEMA: ClassVar[str] = "ksched.Level"
    priority: str
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one attempt's process (0: no limit)."""

    SCHEMA: ClassVar[str] = "ksched.Limits"
    cpu_seconds: int = 0
    memory_mb: int = 0
    open_files: int = 1024
    processes: int = 0
    log_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class TaskSpec:
    SCHEMA: ClassVar[str] = "ksched.TaskSpec"
    name: str
    artifact: ArtifactRef
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    priority: str = "normal"
    timeout_ms: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    depends_on: list[str] = field(default_factory=list)
    trigger_rule: str = "all_success"
    labels: dict[str, str] = field(default_factory=dict)
    #: Later rungs for attempts after a timeout; the task's own priority and timeout are rung 0.
    levels: list[Level] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    #: Environment variables whose values are secrets: NAME -> "secret:<name>", resolved by the executor from its
    #: own secret store when the attempt starts. Only the reference is ever in the history.
    env_from: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Schedule:
    SCHEMA: ClassVar[str] = "ksched.Schedule"
    cron: str | None = None
    at_ms: int | None = None
    timezone: str = "UTC"
    misfire: str = "once"
    misfire_grace_ms: int = 60_000
    catchup_window_ms: int = 86_400_000
    overlap: str = "allow"
    spread_ms: int = 0


@dataclass(frozen=True, slots=True)
class JobSpec:
    SCHEMA: ClassVar[str] = "ksched.JobSpec"
    job_id: str
    tasks: list[TaskSpec]
    schedule: Schedule = field(default_factory=Schedule)
    description: str = ""
    max_active_runs: int = 0  # 0: no limit

    @property
    def kind(self) -> str:
        if len(self.tasks) > 1:
            return "dag"
        return "cron" if self.schedule.cron else "oneoff"


# ---------------------------------------------------------------------------------------------
# Inbox: everything the scheduler decides on (commands, ticks, executor reports). Key: job id.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitJob:
    SCHEMA: ClassVar[str] = "ksched.SubmitJob"
    command_id: str
    job: JobSpec
    submitted_at_ms: int
    submitted_by: str = ""


@dataclass(frozen=True, slots=True)
class SubmitJobs:
    """Several submissions in one inbox record (bulk registration): all of jobs that one inbox partition owns,
    produced to it, keyed by the first job's id. The scheduler decides each as if it had been sent alone
    (`streams.core.decide.submissions_of`) and forwards one whose job another partition owns."""

    SCHEMA: ClassVar[str] = "ksched.SubmitJobs"
    partition: int
    submissions: list[SubmitJob]


@dataclass(frozen=True, slots=True)
class PauseJob:
    SCHEMA: ClassVar[str] = "ksched.PauseJob"
    command_id: str
    job_id: str
    at_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResumeJob:
    SCHEMA: ClassVar[str] = "ksched.ResumeJob"
    command_id: str
    job_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class DeleteJob:
    SCHEMA: ClassVar[str] = "ksched.DeleteJob"
    command_id: str
    job_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class TriggerJob:
    """Run now, outside the schedule."""

    SCHEMA: ClassVar[str] = "ksched.TriggerJob"
    command_id: str
    job_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CancelRun:
    SCHEMA: ClassVar[str] = "ksched.CancelRun"
    command_id: str
    job_id: str
    run_id: str
    at_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RerunTasks:
    SCHEMA: ClassVar[str] = "ksched.RerunTasks"
    command_id: str
    job_id: str
    run_id: str
    from_task: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class BackfillJob:
    """Fire a cron job's occurrences in [from_ms, to_ms] as runs of their own, at most `max_active` at once."""

    SCHEMA: ClassVar[str] = "ksched.BackfillJob"
    command_id: str
    job_id: str
    from_ms: int
    to_ms: int
    at_ms: int
    max_active: int = 1


@dataclass(frozen=True, slots=True)
class Tick:
    """The passage of time, produced by the leader's ticker into every inbox partition."""

    SCHEMA: ClassVar[str] = "ksched.Tick"
    partition: int
    now_ms: int
    ticker: str = ""
    #: Set by the streams worker (never by a ticker) when this tick moved the partition clock by more than
    #: `Params.resume_gap_ms`: the scheduler was away, so executors are given a lease from now to be heard.
    resumed_from_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimTask:
    SCHEMA: ClassVar[str] = "ksched.ClaimTask"
    claim_id: str
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    executor_id: str
    at_ms: int
    #: Not a new claim: the executor is still waiting for the answer to `claim_id` (the scheduler lags) and asks
    #: that a grant to it keep its lease from `at_ms`. A renewal never wins a task by itself.
    renewal: bool = False


@dataclass(frozen=True, slots=True)
class ClaimTasks:
    """Several claims of one claim transaction in one inbox record: those of jobs that one inbox partition owns,
    produced to it, keyed by the first claim's job id. The scheduler decides each as if it had been sent alone
    (`streams.core.decide.claims_of`) and forwards one whose job another partition owns. A burst of attempts due
    together is then a few inbox records, not one per attempt."""

    SCHEMA: ClassVar[str] = "ksched.ClaimTasks"
    partition: int
    claims: list[ClaimTask]


@dataclass(frozen=True, slots=True)
class TaskStarted:
    SCHEMA: ClassVar[str] = "ksched.TaskStarted"
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int
    executor_id: str
    started_at_ms: int
    pid: int = 0


@dataclass(frozen=True, slots=True)
class TaskHeartbeat:
    SCHEMA: ClassVar[str] = "ksched.TaskHeartbeat"
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int
    executor_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class HeldAttempt:
    """One attempt an executor is running, as its heartbeat names it."""

    SCHEMA: ClassVar[str] = "ksched.HeldAttempt"
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int


@dataclass(frozen=True, slots=True)
class ExecutorHeartbeat:
    """An executor's heartbeat for every attempt it runs of the jobs of one inbox partition, produced to that
    partition: one record per partition per interval instead of one per attempt. The scheduler decides each
    attempt as a `TaskHeartbeat` (`streams.core.decide.heartbeats_of`)."""

    SCHEMA: ClassVar[str] = "ksched.ExecutorHeartbeat"
    executor_id: str
    partition: int
    at_ms: int
    attempts: list[HeldAttempt]


@dataclass(frozen=True, slots=True)
class TaskCompleted:
    """The process exited on its own; `exit_code` says how."""

    SCHEMA: ClassVar[str] = "ksched.TaskCompleted"
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int
    executor_id: str
    exit_code: int
    started_at_ms: int
    finished_at_ms: int
    log_ref: str = ""
    #: Not empty: the executor has a free slot and offers it to a task this completion makes ready (a child in
    #: a DAG). The scheduler grants one such task of the executor's pool (`offer_pool`) straight to it, with
    #: this as the claim id: the hand-off to the next task skips the ready topic and a claim transaction.
    offer_id: str = ""
    offer_pool: str = ""


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The attempt ended without the process exiting on its own (timeout, cancel, bad artifact...)."""

    SCHEMA: ClassVar[str] = "ksched.TaskFailed"
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int
    executor_id: str
    reason: str
    message: str
    retryable: bool
    finished_at_ms: int
    exit_code: int | None = None
    started_at_ms: int | None = None
    log_ref: str = ""


# ---------------------------------------------------------------------------------------------
# Decisions: what the scheduler concluded, in the decision log (key: job id). Ids are derived.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobAccepted:
    SCHEMA: ClassVar[str] = "ksched.JobAccepted"
    event_id: str
    command_id: str
    job_id: str
    revision: int
    job: JobSpec
    at_ms: int


@dataclass(frozen=True, slots=True)
class JobRejected:
    SCHEMA: ClassVar[str] = "ksched.JobRejected"
    event_id: str
    command_id: str
    job_id: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class JobChanged:
    """Pause, resume or delete took effect (`change` is PAUSED, RESUMED or DELETED)."""

    SCHEMA: ClassVar[str] = "ksched.JobChanged"
    event_id: str
    command_id: str
    job_id: str
    change: str
    revision: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class RunTriggered:
    SCHEMA: ClassVar[str] = "ksched.RunTriggered"
    event_id: str
    job_id: str
    run_id: str
    revision: int
    trigger: str
    scheduled_for_ms: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class OccurrenceMissed:
    SCHEMA: ClassVar[str] = "ksched.OccurrenceMissed"
    event_id: str
    job_id: str
    scheduled_for_ms: int
    policy: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class OccurrenceSkipped:
    SCHEMA: ClassVar[str] = "ksched.OccurrenceSkipped"
    event_id: str
    job_id: str
    scheduled_for_ms: int
    reason: str
    at_ms: int
    blocking_run_id: str = ""


@dataclass(frozen=True, slots=True)
class TaskReady:
    """An attempt offered to executors (on the ready topic of its priority, and in the log)."""

    SCHEMA: ClassVar[str] = "ksched.TaskReady"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    task_name: str
    attempt: int
    revision: int
    priority: str
    artifact: ArtifactRef
    args: list[str]
    env: dict[str, str]
    timeout_ms: int
    scheduled_for_ms: int
    at_ms: int
    labels: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    env_from: dict[str, str] = field(default_factory=dict)
    #: The executor does not start the attempt after this instant (its occurrence's misfire grace ran out): it
    #: reports TOO_LATE instead, and the scheduler records the occurrence as missed. None: no limit.
    start_by_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimGranted:
    SCHEMA: ClassVar[str] = "ksched.ClaimGranted"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    executor_id: str
    claim_id: str
    fencing_token: int
    lease_ms: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class ClaimRejected:
    SCHEMA: ClassVar[str] = "ksched.ClaimRejected"
    event_id: str
    job_id: str
    task_id: str
    attempt: int
    executor_id: str
    claim_id: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CancelRequested:
    SCHEMA: ClassVar[str] = "ksched.CancelRequested"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    executor_id: str
    fencing_token: int
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    SCHEMA: ClassVar[str] = "ksched.AttemptEnded"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    attempt: int
    fencing_token: int
    outcome: str
    reason: str
    at_ms: int
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    SCHEMA: ClassVar[str] = "ksched.RetryScheduled"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    next_attempt: int
    retry_at_ms: int
    delay_ms: int
    priority: str
    timeout_ms: int
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class ReportIgnored:
    """A report that changed nothing: a duplicate, or a late one from an older attempt (fenced)."""

    SCHEMA: ClassVar[str] = "ksched.ReportIgnored"
    event_id: str
    job_id: str
    task_id: str
    attempt: int
    fencing_token: int
    executor_id: str
    report: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class TaskSettled:
    """A task reached a final state (including SKIPPED and UPSTREAM_FAILED without running)."""

    SCHEMA: ClassVar[str] = "ksched.TaskSettled"
    event_id: str
    job_id: str
    run_id: str
    task_id: str
    state: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class BackfillAccepted:
    SCHEMA: ClassVar[str] = "ksched.BackfillAccepted"
    event_id: str
    command_id: str
    job_id: str
    from_ms: int
    to_ms: int
    max_active: int
    ranges: list[list[int]]  # [lo, hi] pairs still to fire (an earlier backfill covered the rest)
    at_ms: int


@dataclass(frozen=True, slots=True)
class BackfillFinished:
    SCHEMA: ClassVar[str] = "ksched.BackfillFinished"
    event_id: str
    command_id: str
    job_id: str
    runs: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class RunFinished:
    SCHEMA: ClassVar[str] = "ksched.RunFinished"
    event_id: str
    job_id: str
    run_id: str
    state: str
    at_ms: int


# ---------------------------------------------------------------------------------------------
# State topics (compacted) and the dead-letter topic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """The catalog entry of a job (compacted topic, key: job id; a tombstone deletes it)."""

    SCHEMA: ClassVar[str] = "ksched.JobDefinition"
    job_id: str
    revision: int
    job: JobSpec
    paused: bool
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class AttemptView:
    SCHEMA: ClassVar[str] = "ksched.AttemptView"
    attempt: int
    fencing_token: int
    executor_id: str
    outcome: str
    reason: str = ""
    exit_code: int | None = None
    ready_at_ms: int | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    log_ref: str = ""


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task of a run with its attempts (compacted topic, key: task id, partition: the job's)."""

    SCHEMA: ClassVar[str] = "ksched.TaskView"
    task_id: str
    job_id: str
    run_id: str
    name: str
    state: str
    attempt: int
    priority: str
    depends_on: list[str]
    attempts: list[AttemptView]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as users see it (compacted topic, key: run id, partition: the job's)."""

    SCHEMA: ClassVar[str] = "ksched.RunView"
    run_id: str
    job_id: str
    revision: int
    trigger: str
    state: str
    scheduled_for_ms: int
    created_at_ms: int
    task_counts: dict[str, int]
    finished_at_ms: int | None = None
    reason: str = ""
    started_at_ms: int | None = None  # its first attempt's start


@dataclass(frozen=True, slots=True)
class DeadLetter:
    SCHEMA: ClassVar[str] = "ksched.DeadLetter"
    source_topic: str
    partition: int
    offset: int
    reason: str
    at_ms: int
    key: bytes | None = None
    value: bytes | None = None


Command = SubmitJob | SubmitJobs | PauseJob | ResumeJob | DeleteJob | TriggerJob | CancelRun | RerunTasks | BackfillJob
Report = ClaimTask | ClaimTasks | TaskStarted | TaskHeartbeat | ExecutorHeartbeat | TaskCompleted | TaskFailed
InboxEvent = Command | Tick | Report
Decision = (
    JobAccepted | JobRejected | JobChanged | RunTriggered | OccurrenceMissed | OccurrenceSkipped | TaskReady
    | ClaimGranted | ClaimRejected | CancelRequested | AttemptEnded | RetryScheduled | ReportIgnored
    | TaskSettled | RunFinished | BackfillAccepted | BackfillFinished
)

INBOX_TYPES: tuple[type, ...] = (
    SubmitJob, SubmitJobs, PauseJob, ResumeJob, DeleteJob, TriggerJob, CancelRun, RerunTasks, BackfillJob, Tick,
    ClaimTask, ClaimTasks, TaskStarted, TaskHeartbeat, ExecutorHeartbeat, TaskCompleted, TaskFailed,
)
DECISION_TYPES: tuple[type, ...] = (
    JobAccepted, JobRejected, JobChanged, RunTriggered, OccurrenceMissed, OccurrenceSkipped, TaskReady,
    ClaimGranted, ClaimRejected, CancelRequested, AttemptEnded, RetryScheduled, ReportIgnored,
    TaskSettled, RunFinished, BackfillAccepted, BackfillFinished,
)
RECORD_TYPES: tuple[type, ...] = (*INBOX_TYPES, *DECISION_TYPES, JobDefinition, RunView, TaskView, DeadLetter)


def schema_name(cls: type) -> str:
    """The Avro full name of a record class (`ksched.<Name>`)."""
    name: str = cls.SCHEMA  # type: ignore[attr-defined]
    return name


set_slots_in_init(globals())
