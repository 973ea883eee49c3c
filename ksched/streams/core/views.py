"""What users see: the catalog entry, run views and task views that changed in one decision.

Records in the state are frozen and replaced on change, so "changed" is "not the same object"; a view
is published only when it differs from the view of the state before (a heartbeat changes no view).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator

from ksched.schemas.events import AttemptView, JobDefinition, RunView, TaskView

from .emit import CATALOG, RUNS, TASKS, Emit
from .model import Attempt, JobState, Run, Task, task_id


def job_definition(state: JobState) -> JobDefinition:
    return JobDefinition(state.job_id, state.revision, state.spec, state.paused, state.updated_at_ms)


#: The view of each recent run's latest version, by (job, run), valid while the run is that same object: the view
#: of a run before a decision is the view after the one before it. One entry per run, not per version (a
#: 1,000-task run's every version would pin its own dict of tasks). Deterministic: a cache of a pure function.
_RUN_VIEWS: OrderedDict[tuple[str, str], tuple[Run, RunView]] = OrderedDict()
_RUN_VIEWS_SIZE = 4_096


def _cached_view(job_id: str, run: Run) -> RunView | None:
    hit = _RUN_VIEWS.get((job_id, run.run_id))
    return hit[1] if hit is not None and hit[0] is run else None


def run_view(state: JobState, run: Run) -> RunView:
    hit = _cached_view(state.job_id, run)
    if hit is not None:
        return hit
    counts = Counter(t.state for t in run.tasks.values())
    return _remember(state.job_id, run, _view(state.job_id, run, counts, _first_start(run.tasks.values())))


def _view(job_id: str, run: Run, counts: Counter[str], first_start: int | None) -> RunView:
    return RunView(run.run_id, job_id, run.revision, run.trigger, run.state, run.scheduled_for_ms,
                   run.created_at_ms, dict(sorted((k, n) for k, n in counts.items() if n)), run.finished_at_ms,
                   run.cancel_reason, first_start)


def _first_start(tasks: Iterable[Task]) -> int | None:
    return min((a.started_at_ms for t in tasks for a in t.attempts if a.started_at_ms is not None), default=None)


def _remember(job_id: str, run: Run, view: RunView) -> RunView:
    _RUN_VIEWS.pop((job_id, run.run_id), None)
    _RUN_VIEWS[(job_id, run.run_id)] = (run, view)
    if len(_RUN_VIEWS) > _RUN_VIEWS_SIZE:
        for _ in range(_RUN_VIEWS_SIZE // 10):
            _RUN_VIEWS.popitem(last=False)
    return view


def run_view_after(state: JobState, old_view: RunView, old: Run, run: Run,
                   changed: list[tuple[Task | None, Task]]) -> RunView:
    """`run_view(state, run)` from the view of the run before (`old`) and its tasks that changed (old, new): a task
    finishing in a 1,000-task run costs what it changed, not a count of the other 999."""
    hit = _cached_view(state.job_id, run)
    if hit is not None:
        return hit
    if len(run.tasks) != len(old.tasks) + sum(1 for was, _ in changed if was is None):
        return run_view(state, run)  # a task left the run: counted afresh
    counts = Counter(old_view.task_counts)
    first = old_view.started_at_ms
    for was, task in changed:
        if was is not None:
            counts[was.state] -= 1
            if first is not None and _first_start([was]) == first and _first_start([task]) != first:
                return run_view(state, run)  # the earliest start may be gone: counted afresh
        counts[task.state] += 1
        new_first = _first_start([task])
        if new_first is not None and (first is None or new_first < first):
            first = new_first
    return _remember(state.job_id, run, _view(state.job_id, run, counts, first))


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
        changed: list[tuple[Task | None, Task]] = []
        for name, task in run.tasks.items():
            old_task = old.tasks.get(name) if old is not None else None
            if old_task is task:
                continue
            changed.append((old_task, task))
            view = task_view(after, run, task)
            if old is None or old_task is None or view != task_view(before, old, old_task):  # type: ignore[arg-type]
                yield Emit(TASKS, view.task_id, view)
        if old is None:
            yield Emit(RUNS, run_id, run_view(after, run))
            continue
        old_view = run_view(before, old)  # type: ignore[arg-type]
        rv = run_view_after(after, old_view, old, run, changed)
        if rv != old_view:
            yield Emit(RUNS, run_id, rv)


def _catalog_change(before: JobState | None, after: JobState) -> Iterator[Emit]:
    if after.deleted:
        if before is not None and not before.deleted:
            yield Emit(CATALOG, after.job_id, None)
        return
    if (before is None or before.deleted or before.revision != after.revision or before.paused != after.paused
            or before.spec is not after.spec):
        yield Emit(CATALOG, after.job_id, job_definition(after))
