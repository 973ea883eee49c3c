"""What users see: the catalog entry, run views and task views that changed in one decision.

Records in the state are frozen and replaced on change, so "changed" is "not the same object"; a view
is published only when it differs from the view of the state before (a heartbeat changes no view).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ksched.schemas.events import AttemptView, JobDefinition, RunView, TaskView

from .emit import CATALOG, RUNS, TASKS, Emit
from .model import Attempt, JobState, Run, Task, task_id


def job_definition(state: JobState) -> JobDefinition:
    return JobDefinition(state.job_id, state.revision, state.spec, state.paused, state.updated_at_ms)


def run_view(state: JobState, run: Run) -> RunView:
    counts = Counter(t.state for t in run.tasks.values())
    starts = [a.started_at_ms for t in run.tasks.values() for a in t.attempts if a.started_at_ms is not None]
    return RunView(run.run_id, state.job_id, run.revision, run.trigger, run.state, run.scheduled_for_ms,
                   run.created_at_ms, dict(sorted(counts.items())), run.finished_at_ms, run.cancel_reason,
                   min(starts, default=None))


def attempt_view(a: Attempt) -> AttemptView:
    return AttemptView(a.number, a.fencing_token, a.executor_id, a.outcome, a.reason, a.exit_code, a.ready_at_ms,
                       a.started_at_ms, a.finished_at_ms, a.log_ref)


def task_view(state: JobState, run: Run, task: Task) -> TaskView:
    spec = state.task_spec(run, task.name)
    priority = task.attempt.priority if task.attempt else spec.priority
    return TaskView(task_id(run.run_id, task.name), state.job_id, run.run_id, task.name, task.state, task.number,
                    priority, list(spec.depends_on), [attempt_view(a) for a in task.attempts], task.reason)


def current_views(state: JobState) -> Iterator[Emit]:
    """Every view of the job as it is now (after a republished outbox, so no older snapshot wins)."""
    yield from _catalog_change(None, state) if not state.deleted else iter([Emit(CATALOG, state.job_id, None)])
    for run in state.runs.values():
        for task in run.tasks.values():
            view = task_view(state, run, task)
            yield Emit(TASKS, view.task_id, view)
        yield Emit(RUNS, run.run_id, run_view(state, run))


def view_changes(before: JobState | None, after: JobState | None) -> Iterator[Emit]:
    if after is None or after is before:
        return
    yield from _catalog_change(before, after)
    old_runs = before.runs if before is not None else {}
    for run_id, run in after.runs.items():
        old = old_runs.get(run_id)
        if old is run:
            continue
        for name, task in run.tasks.items():
            old_task = old.tasks.get(name) if old is not None else None
            if old_task is task:
                continue
            view = task_view(after, run, task)
            if old is None or old_task is None or view != task_view(before, old, old_task):  # type: ignore[arg-type]
                yield Emit(TASKS, view.task_id, view)
        rv = run_view(after, run)
        if old is None or rv != run_view(before, old):  # type: ignore[arg-type]
            yield Emit(RUNS, run_id, rv)


def _catalog_change(before: JobState | None, after: JobState) -> Iterator[Emit]:
    if after.deleted:
        if before is not None and not before.deleted:
            yield Emit(CATALOG, after.job_id, None)
        return
    if (before is None or before.deleted or before.revision != after.revision or before.paused != after.paused
            or before.spec is not after.spec):
        yield Emit(CATALOG, after.job_id, job_definition(after))
