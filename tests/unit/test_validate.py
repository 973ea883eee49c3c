"""Job validation as a table: each invalid definition and the one-line error naming its field."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ksched.errors import JobSpecError
from ksched.schemas.events import JobSpec, Level, Limits, RetryPolicy, Schedule, TaskSpec
from ksched.streams.core.validate import MAX_TASKS, validate_job
from tests.samples import job

ONE = job("j1")
TASK = ONE.tasks[0]


def dag(*tasks: TaskSpec) -> JobSpec:
    return replace(ONE, tasks=list(tasks))


def task(name: str = "main", **changes: Any) -> TaskSpec:
    return replace(TASK, name=name, **changes)


@pytest.mark.parametrize(("spec", "field", "message"), [
    (replace(ONE, job_id="-bad"), "job", "invalid job id '-bad': use letters, digits, '.', '_' and '-' (max 128)"),
    (replace(ONE, schedule=Schedule(cron="* * * * *", at_ms=1)), "at",
     "a job has either a cron 'schedule' or a one-off 'at', not both"),
    (replace(ONE, schedule=Schedule(misfire="later")), "misfire", "unknown policy 'later' (one of skip, once, all)"),
    (replace(ONE, schedule=Schedule(overlap="queue")), "overlap",
     "unknown policy 'queue' (one of allow, forbid, replace)"),
    (replace(ONE, schedule=Schedule(misfire_grace_ms=-1)), "misfire_grace", "must not be negative"),
    (replace(ONE, schedule=Schedule(catchup_window_ms=-1)), "catchup_window", "must not be negative"),
    (replace(ONE, schedule=Schedule(spread_ms=-1)), "spread", "must not be negative"),
    (dag(), "tasks", "a job needs at least one task (an empty DAG cannot run)"),
    (dag(*[task(f"t{i}") for i in range(MAX_TASKS + 1)]), "tasks", f"{MAX_TASKS + 1} tasks; at most {MAX_TASKS} "
                                                                   "per job"),
    (replace(ONE, max_active_runs=-1), "max_active_runs", "must be 0 (no limit) or more"),
    (dag(task("a"), task("a")), "tasks.a", "duplicate task name 'a'"),
    (dag(task("a b")), "name", "invalid task name 'a b'"),  # one task: fields are the job's own
    (dag(task("ok"), task("a b")), "tasks.a b.name", "invalid task name 'a b'"),
    (dag(task(artifact=replace(TASK.artifact, digest="md5:x"))), "binary",
     "artifact digest 'md5:x' is not sha256:<64 hex>"),
    (dag(task(priority="urgent")), "priority", "unknown priority 'urgent' (one of high, normal, low)"),
    (dag(task("a"), task("b", depends_on=["a"], trigger_rule="any")), "tasks.b.trigger_rule",
     "unknown rule 'any' (one of all_success, all_done, one_success, one_failed, none_failed)"),
    (dag(task(timeout_ms=-1)), "timeout", "must not be negative"),
    (dag(task("x"), task(levels=[Level("urgent", 10)])), "tasks.main.levels[0].priority",
     "unknown priority 'urgent'"),
    (dag(task(levels=[Level("high", 10), Level("high", 0)])), "levels[1].timeout", "must be positive"),
    (dag(task(limits=Limits(memory_mb=-1))), "limits", "limits must not be negative"),
    (dag(task(limits=Limits(log_bytes=-1))), "limits", "limits must not be negative"),
    (dag(task(limits=Limits(cpu_seconds=-1))), "limits", "limits must not be negative"),
    (dag(task(limits=Limits(open_files=-1))), "limits", "limits must not be negative"),
    (dag(task(limits=Limits(processes=-1))), "limits", "limits must not be negative"),
    (dag(task(labels={"pool": "GPU"})), "labels.pool",
     "invalid pool name 'GPU': lowercase letters, digits and '-' (max 32)"),
    (dag(task(retry=RetryPolicy(max_attempts=0))), "retries.max_attempts", "must be at least 1"),
    (dag(task(retry=RetryPolicy(backoff_ms=-1))), "retries", "backoff must be >= 0, multiplier >= 1 and jitter "
                                                             "in [0, 1]"),
    (dag(task(retry=RetryPolicy(backoff_max_ms=-1))), "retries", "backoff must be >= 0, multiplier >= 1 and "
                                                                 "jitter in [0, 1]"),
    (dag(task(retry=RetryPolicy(multiplier=0.5))), "retries", "backoff must be >= 0, multiplier >= 1 and jitter "
                                                              "in [0, 1]"),
    (dag(task(retry=RetryPolicy(jitter=1.5))), "retries", "backoff must be >= 0, multiplier >= 1 and jitter in "
                                                          "[0, 1]"),
    (dag(task(retry=RetryPolicy(jitter=-0.1))), "retries", "backoff must be >= 0, multiplier >= 1 and jitter in "
                                                           "[0, 1]"),
    (dag(task("a", depends_on=["ghost"]), task("b")), "tasks.a.depends_on", "unknown dependency 'ghost'"),
    (dag(task("a", depends_on=["a"]), task("b")), "tasks.a.depends_on", "a task cannot depend on itself"),
    (dag(task("a", depends_on=["b"]), task("b", depends_on=["a"])), "tasks", "dependency cycle: a -> b -> a"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_an_invalid_job_is_refused_naming_its_field(spec: JobSpec, field: str, message: str) -> None:
    with pytest.raises(JobSpecError) as err:
        validate_job(spec)
    assert (err.value.field, err.value.message, str(err.value)) == (field, message, f"{field}: {message}")


@pytest.mark.parametrize("spec", [
    ONE,
    dag(*[task(f"t{i}") for i in range(MAX_TASKS)]),
    replace(ONE, max_active_runs=0, schedule=Schedule(cron="*/5 * * * *", misfire_grace_ms=0, catchup_window_ms=0)),
    dag(task(levels=[Level("high", 1)], limits=Limits(0, 0, 0, 0, 0), labels={"pool": "gpu-2"},
             retry=RetryPolicy(max_attempts=1, backoff_ms=0, backoff_max_ms=0, multiplier=1.0, jitter=1.0))),
    dag(task(retry=RetryPolicy(jitter=0.0))),
    dag(task("a"), task("b", depends_on=["a"]), task("c", depends_on=["a", "b"], trigger_rule="all_done")),
], ids=["one-task", "max-tasks", "zero-windows", "edges", "no-jitter", "dag"])
def test_a_valid_job_passes(spec: JobSpec) -> None:
    validate_job(spec)
