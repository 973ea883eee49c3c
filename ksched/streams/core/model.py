"""The scheduler's state for one job: its definition, its cron cursor and its runs, tasks and attempts.

One `JobState` is one table entry, so every decision about a job reads and writes one record atomically.
Records are frozen; reducers build new ones with `replace`, so unchanged parts keep their identity (and
`streams.core.views` can tell what changed by identity alone).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ksched.schemas.events import JobSpec, TaskSpec, TaskState
from ksched.schemas.records import replace, set_slots_in_init


@dataclass(frozen=True, slots=True)
class Params:
    """Knobs of the decisions that are not part of any job (same for live processing and replay)."""

    lease_ms: int = 10_000
    #: A tick that moves the partition clock further than this means the scheduler was away (a worker down,
    #: no ticker): leases are then renewed from that tick instead of lapsing on it.
    resume_gap_ms: int = 3_000
    #: Finished runs kept in the state (for late reports and reruns); older ones live on in the views.
    keep_finished_runs: int = 5
    #: Finished runs whose views (`runs` and `tasks` topics) are kept per job, those in the state included; an
    #: older run's views get tombstones, so the compacted views stay as big as this, not as the history (the
    #: inbox and the decision log keep everything). At least `keep_finished_runs`.
    keep_run_views: int = 50
    #: How many occurrences one tick may handle for one job; the rest wait for the next tick.
    max_occurrences_per_tick: int = 1000
    keep_command_ids: int = 64
    #: Fire occurrences this long before their instant (executors claim, fetch the binary and hold the
    #: attempt until the instant). Only for jobs with overlap `allow`, where firing early cannot change
    #: which occurrences run.
    lookahead_ms: int = 0


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    priority: str
    timeout_ms: int
    ready_at_ms: int | None = None
    claim_id: str = ""
    executor_id: str = ""
    fencing_token: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    outcome: str = ""  # empty while in flight; an `events.Outcome` once ended
    exit_code: int | None = None
    reason: str = ""
    log_ref: str = ""


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    state: str = TaskState.WAITING
    attempts: tuple[Attempt, ...] = ()
    level: int = 0  # index into the task's levels (multi-level queue)
    lease_deadline_ms: int | None = None
    retry_at_ms: int | None = None
    cancel_requested: bool = False
    reason: str = ""

    @property
    def attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def number(self) -> int:
        return len(self.attempts)

    def with_attempt(self, attempt: Attempt) -> Task:
        return replace(self, attempts=(*self.attempts[:-1], attempt))


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    revision: int
    trigger: str
    scheduled_for_ms: int
    created_at_ms: int
    state: str
    tasks: dict[str, Task]
    finished_at_ms: int | None = None
    cancel_reason: str = ""


@dataclass(frozen=True, slots=True)
class Backfill:
    """A backfill in progress: the ranges of occurrence instants it still fires, from `after_ms` on."""

    command_id: str
    ranges: tuple[tuple[int, int], ...]
    max_active: int = 1
    #: Instants at or before this one are fired (None: none yet).
    after_ms: int | None = None
    fired: int = 0


@dataclass(frozen=True, slots=True)
class JobState:
    job_id: str
    spec: JobSpec
    revision: int = 1
    paused: bool = False
    deleted: bool = False
    #: The latest scheduled instant already handled (fired, missed or skipped); the next is after it.
    cursor_ms: int | None = None
    #: 'once' misfire policy: the latest missed instant whose single catch-up run is still owed.
    owed_catchup_ms: int | None = None
    fencing: int = 0
    runs: dict[str, Run] = field(default_factory=dict)
    #: Specs of earlier revisions that active runs still use.
    revisions: dict[int, JobSpec] = field(default_factory=dict)
    commands: tuple[str, ...] = ()
    created_at_ms: int = 0
    updated_at_ms: int = 0
    #: Backfills accepted and not finished, in order: the first fires, the others wait for it.
    backfills: tuple[Backfill, ...] = ()
    #: The instants every backfill so far has covered, as merged [lo, hi] ranges: a backfill fires only the rest.
    backfilled: tuple[tuple[int, int], ...] = ()
    #: Finished runs no longer in the state whose views are still kept, oldest first: (run id, revision).
    retired: tuple[tuple[str, int], ...] = ()

    def spec_for(self, revision: int) -> JobSpec:
        return self.spec if revision == self.revision else self.revisions.get(revision, self.spec)

    def task_spec(self, run: Run, name: str) -> TaskSpec:
        return tasks_by_name(self.spec_for(run.revision))[name]


#: Definitions indexed lately, by identity. Each entry pins its definition, so the memo holds the jobs being
#: worked on, least recently used out: emptied only when it passed 4,096, it grew by one definition per daily job
#: that fired (every job fired once a day is read again, a new object) for an hour before it emptied.
_INDEX: OrderedDict[int, tuple[JobSpec, dict[str, TaskSpec], dict[str, list[str]]]] = OrderedDict()
_INDEX_SIZE = 1_024


def _index(spec: JobSpec) -> tuple[JobSpec, dict[str, TaskSpec], dict[str, list[str]]]:
    """Per job definition: its tasks by name and each task's children. Memoized by identity (definitions are
    immutable), so large DAGs are not rescanned on every event."""
    hit = _INDEX.get(id(spec))
    if hit is not None and hit[0] is spec:
        _INDEX.move_to_end(id(spec))
        return hit
    children: dict[str, list[str]] = {t.name: [] for t in spec.tasks}
    for t in spec.tasks:
        for d in t.depends_on:
            children.setdefault(d, []).append(t.name)
    entry = (spec, {t.name: t for t in spec.tasks}, children)
    _INDEX[id(spec)] = entry
    _INDEX.move_to_end(id(spec))
    if len(_INDEX) > _INDEX_SIZE:
        _INDEX.popitem(last=False)
    return entry


def tasks_by_name(spec: JobSpec) -> dict[str, TaskSpec]:
    return _index(spec)[1]


def children_of(spec: JobSpec) -> dict[str, list[str]]:
    return _index(spec)[2]


def task_id(run_id: str, name: str) -> str:
    return f"{run_id}/{name}"


def split_task_id(tid: str) -> tuple[str, str]:
    run_id, _, name = tid.rpartition("/")
    return run_id, name


set_slots_in_init(globals())
