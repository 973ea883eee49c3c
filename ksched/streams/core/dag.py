"""Dependencies between the tasks of one run: trigger rules, propagation of failure, and the run's end.

Trigger rules (as in Airflow), for a task whose parents are P:
    all_success  every parent SUCCEEDED.         Any parent failed -> UPSTREAM_FAILED; else any skipped -> SKIPPED.
    all_done     every parent ended, however.
    one_success  some parent SUCCEEDED (at once). All ended, none succeeded -> UPSTREAM_FAILED if one failed,
                 else SKIPPED.
    one_failed   some parent failed (at once).    All ended, none failed -> SKIPPED.
    none_failed  every parent ended and none failed (skipped is fine). Any failed -> UPSTREAM_FAILED.
"Failed" means FAILED or UPSTREAM_FAILED. A CANCELLED parent counts as failed.

A run ends when every task has ended: SUCCEEDED when none ended FAILED or UPSTREAM_FAILED (SKIPPED is
fine), CANCELLED when it was cancelled, FAILED otherwise.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ksched.schemas.events import RunState, TaskSpec, TaskState

from .model import Task

_FAILED = frozenset({TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED})


def _sorter(specs: Sequence[TaskSpec]) -> graphlib.TopologicalSorter[str]:
    known = {t.name for t in specs}
    return graphlib.TopologicalSorter({t.name: [d for d in t.depends_on if d in known] for t in specs})


def topological_order(specs: Sequence[TaskSpec]) -> list[str]:
    """Task names with every task after its dependencies, in waves (a task comes in the wave after its last
    dependency's); within a wave the spec's order. Iterative (graphlib), so a 2,000-task chain listed
    last-first costs what any other order does. A cycle's tasks come last, in the spec's order (validation
    rejects cycles before they get here)."""
    index = {t.name: i for i, t in enumerate(specs)}
    sorter = _sorter(specs)
    try:
        sorter.prepare()
    except graphlib.CycleError:
        return _order_with_cycles(specs)
    order: list[str] = []
    while sorter.is_active():
        wave = sorted(sorter.get_ready(), key=index.__getitem__)
        order += wave
        sorter.done(*wave)
    return order


def _order_with_cycles(specs: Sequence[TaskSpec]) -> list[str]:
    remaining = {t.name: set(t.depends_on) for t in specs}
    order: list[str] = []
    while remaining:
        done = set(order)
        wave = [n for n in remaining if remaining[n] <= done] or list(remaining)
        order += wave
        for n in wave:
            del remaining[n]
    return order


def find_cycle(specs: Sequence[TaskSpec]) -> list[str] | None:
    """A dependency cycle as a path `[a, b, ..., a]` where each task depends on the next, or None."""
    if not any(spec.depends_on for spec in specs):  # most jobs: one task, or tasks that depend on none
        return None
    try:
        _sorter(specs).prepare()
    except graphlib.CycleError as err:
        # graphlib lists each node before the ones that depend on it; a job file's reader thinks in
        # `depends_on`, so the path is reported the other way round.
        return list(reversed(err.args[1]))
    return None


@dataclass(frozen=True)
class _Parents:
    ended: bool
    failed: bool
    succeeded: bool
    all_succeeded: bool


def _all_success(p: _Parents) -> str | None:
    if p.failed:
        return TaskState.UPSTREAM_FAILED
    if not p.ended:
        return None
    return TaskState.READY if p.all_succeeded else TaskState.SKIPPED


def _one_success(p: _Parents) -> str | None:
    if p.succeeded:
        return TaskState.READY
    if not p.ended:
        return None
    return TaskState.UPSTREAM_FAILED if p.failed else TaskState.SKIPPED


def _one_failed(p: _Parents) -> str | None:
    if p.failed:
        return TaskState.READY
    return TaskState.SKIPPED if p.ended else None


def _none_failed(p: _Parents) -> str | None:
    if p.failed:
        return TaskState.UPSTREAM_FAILED
    return TaskState.READY if p.ended else None


_RULES: dict[str, Callable[[_Parents], str | None]] = {
    "all_success": _all_success,
    "all_done": lambda p: TaskState.READY if p.ended else None,
    "one_success": _one_success,
    "one_failed": _one_failed,
    "none_failed": _none_failed,
}


def verdict(rule: str, parents: Iterable[str]) -> str | None:
    """What a WAITING task becomes given its parents' states, or None if it must keep waiting."""
    distinct = set(parents)  # a fan-in's thousand parents hold a handful of states: one pass, then set algebra
    if not distinct:
        return TaskState.READY
    if rule not in _RULES:
        raise ValueError(f"unknown trigger rule {rule!r}")
    return _RULES[rule](_Parents(
        ended=distinct <= TaskState.TERMINAL,
        failed=not distinct.isdisjoint(_FAILED),
        succeeded=TaskState.SUCCEEDED in distinct,
        all_succeeded=distinct == {TaskState.SUCCEEDED},
    ))


def settle_waiting(specs: Sequence[TaskSpec], tasks: Mapping[str, Task], by_name: Mapping[str, TaskSpec],
                   children: Mapping[str, list[str]], changed: Iterable[str] | None = None) -> dict[str, str]:
    """Every WAITING task whose fate is now decided, with its new state (READY, SKIPPED, UPSTREAM_FAILED).

    With `changed` (tasks whose state changed since the last call), only their children are looked at, so
    a task finishing in a 1,000-task run costs what its children cost. Propagates through chains: a task
    skipped here lets its own children decide in the same call.
    """
    if changed is None:
        todo = [n for n in topological_order(specs) if tasks[n].state == TaskState.WAITING]
    else:
        todo = [c for n in changed for c in children.get(n, ())]
    states: dict[str, str] = {}
    changes: dict[str, str] = {}
    seen_ready: set[str] = set()
    i = 0
    while i < len(todo):
        name = todo[i]
        i += 1
        if name in seen_ready or states.get(name, tasks[name].state) != TaskState.WAITING:
            continue
        spec = by_name[name]
        parents = ([states.get(d, tasks[d].state) for d in spec.depends_on] if states
                   else [tasks[d].state for d in spec.depends_on])
        new = verdict(spec.trigger_rule, parents)
        if new is None:
            continue
        changes[name] = new
        states[name] = new
        if new == TaskState.READY:
            seen_ready.add(name)  # not terminal: its children keep waiting on it
        else:
            todo.extend(children.get(name, ()))
    return changes


def run_outcome(tasks: Mapping[str, Task], cancelled: bool) -> str | None:
    """The run's final state once every task has ended, else None."""
    if any(t.state not in TaskState.TERMINAL for t in tasks.values()):
        return None
    if cancelled:
        return RunState.CANCELLED
    if any(t.state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED) for t in tasks.values()):
        return RunState.FAILED
    if any(t.state == TaskState.CANCELLED for t in tasks.values()):
        return RunState.CANCELLED
    return RunState.SUCCEEDED


def descendants(specs: Sequence[TaskSpec], root: str) -> list[str]:
    """`root` and every task downstream of it, in topological order."""
    children: dict[str, list[str]] = {t.name: [] for t in specs}
    for t in specs:
        for d in t.depends_on:
            children.setdefault(d, []).append(t.name)
    seen = {root}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return [n for n in topological_order(specs) if n in seen]
