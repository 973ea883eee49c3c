"""Validation of a job definition, shared by `ksched submit` (before producing) and the scheduler agent
(for submissions from any other Kafka client). Errors name the field at fault, in one line."""

from __future__ import annotations

import re

from ksched.errors import JobSpecError
from ksched.schemas.events import (
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    POOL_LABEL,
    PRIORITIES,
    TRIGGER_RULES,
    JobSpec,
    TaskSpec,
)

from .dag import find_cycle
from .schedule import parse_cron, zone

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
POOL = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MAX_TASKS = 2000


def validate_job(job: JobSpec) -> None:
    """Raise JobSpecError for the first problem found; return None if the job is valid."""
    if not JOB_ID.match(job.job_id):
        raise JobSpecError("job", f"invalid job id {job.job_id!r}: use letters, digits, '.', '_' and '-' (max 128)")
    _validate_schedule(job)
    if not job.tasks:
        raise JobSpecError("tasks", "a job needs at least one task (an empty DAG cannot run)")
    if len(job.tasks) > MAX_TASKS:
        raise JobSpecError("tasks", f"{len(job.tasks)} tasks; at most {MAX_TASKS} per job")
    if job.max_active_runs < 0:
        raise JobSpecError("max_active_runs", "must be 0 (no limit) or more")
    names: set[str] = set()
    for t in job.tasks:
        where = "tasks" if len(job.tasks) > 1 else ""
        prefix = f"{where}.{t.name}." if where else ""
        if t.name in names:
            raise JobSpecError(f"tasks.{t.name}", f"duplicate task name {t.name!r}")
        names.add(t.name)
        _validate_task(t, prefix)
    for t in job.tasks:
        for d in t.depends_on:
            if d not in names:
                raise JobSpecError(f"tasks.{t.name}.depends_on", f"unknown dependency {d!r}")
            if d == t.name:
                raise JobSpecError(f"tasks.{t.name}.depends_on", "a task cannot depend on itself")
    cycle = find_cycle(job.tasks)
    if cycle:
        raise JobSpecError("tasks", "dependency cycle: " + " -> ".join(cycle))


def _validate_schedule(job: JobSpec) -> None:
    s = job.schedule
    if s.cron and s.at_ms is not None:
        raise JobSpecError("at", "a job has either a cron 'schedule' or a one-off 'at', not both")
    if s.cron:
        parse_cron(s.cron)
    zone(s.timezone)
    if s.misfire not in MISFIRE_POLICIES:
        raise JobSpecError("misfire", f"unknown policy {s.misfire!r} (one of {', '.join(MISFIRE_POLICIES)})")
    if s.overlap not in OVERLAP_POLICIES:
        raise JobSpecError("overlap", f"unknown policy {s.overlap!r} (one of {', '.join(OVERLAP_POLICIES)})")
    for name, value in (("misfire_grace", s.misfire_grace_ms), ("catchup_window", s.catchup_window_ms),
                        ("spread", s.spread_ms)):
        if value < 0:
            raise JobSpecError(name, "must not be negative")


def _validate_task(t: TaskSpec, prefix: str) -> None:
    if not TASK_NAME.match(t.name):
        raise JobSpecError(f"{prefix}name", f"invalid task name {t.name!r}")
    if not DIGEST.match(t.artifact.digest):
        raise JobSpecError(f"{prefix}binary", f"artifact digest {t.artifact.digest!r} is not sha256:<64 hex>")
    if t.priority not in PRIORITIES:
        raise JobSpecError(f"{prefix}priority", f"unknown priority {t.priority!r} (one of {', '.join(PRIORITIES)})")
    if t.trigger_rule not in TRIGGER_RULES:
        raise JobSpecError(
            f"{prefix}trigger_rule", f"unknown rule {t.trigger_rule!r} (one of {', '.join(TRIGGER_RULES)})"
        )
    if t.timeout_ms < 0:
        raise JobSpecError(f"{prefix}timeout", "must not be negative")
    _validate_extras(t, prefix)
    r = t.retry
    if r.max_attempts < 1:
        raise JobSpecError(f"{prefix}retries.max_attempts", "must be at least 1")
    if r.backoff_ms < 0 or r.backoff_max_ms < 0 or r.multiplier < 1.0 or not 0.0 <= r.jitter <= 1.0:
        raise JobSpecError(f"{prefix}retries", "backoff must be >= 0, multiplier >= 1 and jitter in [0, 1]")


def _validate_extras(t: TaskSpec, prefix: str) -> None:
    """Levels, limits and the pool label."""
    for i, level in enumerate(t.levels):
        if level.priority not in PRIORITIES:
            raise JobSpecError(f"{prefix}levels[{i}].priority", f"unknown priority {level.priority!r}")
        if level.timeout_ms <= 0:
            raise JobSpecError(f"{prefix}levels[{i}].timeout", "must be positive")
    lim = t.limits
    if min(lim.cpu_seconds, lim.memory_mb, lim.open_files, lim.processes, lim.log_bytes) < 0:
        raise JobSpecError(f"{prefix}limits", "limits must not be negative")
    _validate_env_from(t, prefix)
    pool = t.labels.get(POOL_LABEL)
    if pool is not None and not POOL.match(pool):
        raise JobSpecError(f"{prefix}labels.pool",
                           f"invalid pool name {pool!r}: lowercase letters, digits and '-' (max 32)")


SECRET_REF = re.compile(r"^secret:([A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate_env_from(t: TaskSpec, prefix: str) -> None:
    """Secret references: `NAME: secret:<name>`; a name the executor sets itself, or `env:` too, is refused."""
    for name, ref in t.env_from.items():
        where = f"{prefix}env_from.{name}"
        if not ENV_NAME.match(name) or name.startswith("KSCHED_"):
            raise JobSpecError(where, "not a variable name a job may set (letters, digits, '_'; not KSCHED_*)")
        if not SECRET_REF.match(ref):
            raise JobSpecError(where, f"expected secret:<name>, got {ref!r} (a plain value belongs in env:)")
        if name in t.env:
            raise JobSpecError(where, "also set in env: one source per variable")
