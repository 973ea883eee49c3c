"""Job files (YAML) to `JobSpec`: every field checked, every error one line naming the field.

    job: nightly-report            # id: letters, digits, . _ -
    schedule: "0 2 * * *"          # cron (5 fields, or 6 with seconds first, or @daily...), or
    at: 2026-12-01T08:00:00Z       # a one-off instant ("now" or absent: run once, now)
    timezone: Europe/Berlin
    binary: ./report.sh            # a file next to this one (uploaded), or sha256:<digest>
    args: [--full]
    timeout: 10m
    retries: {max_attempts: 3, backoff: 5s}

A DAG has `tasks:` (name -> task fields, with `depends_on` and `trigger_rule`) instead of `binary`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ksched.errors import JobSpecError
from ksched.schemas.events import ArtifactRef, JobSpec, Level, Limits, RetryPolicy, Schedule, TaskSpec
from ksched.streams.core.validate import DIGEST, validate_job

JOB_FIELDS = {
    "job", "description", "schedule", "at", "timezone", "misfire", "misfire_grace", "catchup_window", "overlap",
    "spread", "max_active_runs", "tasks",
}
TASK_FIELDS = {"binary", "args", "env", "env_from", "priority", "timeout", "retries", "labels", "depends_on",
               "trigger_rule", "levels", "limits"}
LEVEL_FIELDS = {"priority", "timeout"}
LIMIT_FIELDS = {"cpu", "memory", "open_files", "processes", "log_bytes"}
RETRY_FIELDS = {"max_attempts", "backoff", "max_backoff", "multiplier", "jitter", "no_retry_exit_codes"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


@dataclass(frozen=True)
class Binary:
    """A binary the job needs: a local file to upload, or a digest already in the store."""

    task: str
    path: Path | None
    digest: str | None


@dataclass(frozen=True)
class JobFile:
    spec: JobSpec  # artifact digests are placeholders until `with_artifacts`
    binaries: list[Binary]

    def with_artifacts(self, refs: dict[str, ArtifactRef]) -> JobSpec:
        from dataclasses import replace

        tasks = [replace(t, artifact=refs[t.name]) for t in self.spec.tasks]
        spec = replace(self.spec, tasks=tasks)
        validate_job(spec)
        return spec


def parse_duration(value: Any, field: str) -> int:
    """`30s`, `5m`, `1h`, `250ms`, `2d`, or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise JobSpecError(field, f"expected a duration like 30s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise JobSpecError(field, "must not be negative")
        return int(value * 1000)
    m = _DURATION.match(str(value))
    if not m:
        raise JobSpecError(field, f"expected a duration like 30s, 5m or 1h, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _check_fields(data: dict[str, Any], allowed: set[str], where: str, hints: set[str] | None = None) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(hints or allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise JobSpecError(f"{where}{key}", f"unknown field{hint}")


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        value = None
    if value is None or not isinstance(value, kinds):
        names = " or ".join(k.__name__.replace("str", "string").replace("dict", "mapping").replace("list", "list")
                            for k in kinds)
        raise JobSpecError(f"{where}{key}", f"expected {names}, got {type(data[key]).__name__} {data[key]!r}")
    return value


def _string_list(data: dict[str, Any], key: str, where: str) -> list[str]:
    values = _typed(data, key, list, where, [])
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise JobSpecError(f"{where}{key}[{i}]", f"expected a string, got {type(v).__name__}")
        out.append(str(v))
    return out


def _string_map(data: dict[str, Any], key: str, where: str) -> dict[str, str]:
    values = _typed(data, key, dict, where, {})
    out = {}
    for k, v in values.items():
        if isinstance(v, dict | list) or v is None:
            raise JobSpecError(f"{where}{key}.{k}", f"expected a string, got {type(v).__name__}")
        out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _retry(data: dict[str, Any], where: str) -> RetryPolicy:
    raw = data.get("retries")
    if raw is None:
        return RetryPolicy()
    if isinstance(raw, int) and not isinstance(raw, bool):
        return RetryPolicy(max_attempts=raw + 1)
    if not isinstance(raw, dict):
        raise JobSpecError(f"{where}retries", f"expected a number of retries or a mapping, got {raw!r}")
    w = f"{where}retries."
    _check_fields(raw, RETRY_FIELDS, w)
    d = RetryPolicy()
    codes = _typed(raw, "no_retry_exit_codes", list, w, [])
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise JobSpecError(f"{w}no_retry_exit_codes", "expected a list of integers")
    return RetryPolicy(
        max_attempts=_typed(raw, "max_attempts", int, w, d.max_attempts),
        backoff_ms=parse_duration(raw["backoff"], f"{w}backoff") if "backoff" in raw else d.backoff_ms,
        backoff_max_ms=parse_duration(raw["max_backoff"], f"{w}max_backoff") if "max_backoff" in raw
        else d.backoff_max_ms,
        multiplier=float(_typed(raw, "multiplier", (int, float), w, d.multiplier)),
        jitter=float(_typed(raw, "jitter", (int, float), w, d.jitter)),
        no_retry_exit_codes=list(codes),
    )


def _levels(data: dict[str, Any], where: str) -> list[Level]:
    """`levels: [{priority: normal, timeout: 5m}, ...]`: where an attempt goes after each timeout."""
    raw = _typed(data, "levels", list, where, [])
    levels = []
    for i, item in enumerate(raw):
        w = f"{where}levels[{i}]."
        if not isinstance(item, dict):
            raise JobSpecError(f"{where}levels[{i}]", "expected a mapping with priority and timeout")
        _check_fields(item, LEVEL_FIELDS, w)
        if "timeout" not in item:
            raise JobSpecError(f"{w}timeout", "missing: each level needs its own timeout")
        levels.append(Level(_typed(item, "priority", str, w, "normal"), parse_duration(item["timeout"], f"{w}timeout")))
    return levels


def _limits(data: dict[str, Any], where: str) -> Limits:
    """`limits: {cpu: 60s, memory: 512, open_files: 1024, processes: 64, log_bytes: 1048576}` (memory in MiB)."""
    raw = _typed(data, "limits", dict, where, None)
    if raw is None:
        return Limits()
    w = f"{where}limits."
    _check_fields(raw, LIMIT_FIELDS, w)
    d = Limits()
    return Limits(
        cpu_seconds=parse_duration(raw["cpu"], f"{w}cpu") // 1000 if "cpu" in raw else d.cpu_seconds,
        memory_mb=_typed(raw, "memory", int, w, d.memory_mb),
        open_files=_typed(raw, "open_files", int, w, d.open_files),
        processes=_typed(raw, "processes", int, w, d.processes),
        log_bytes=_typed(raw, "log_bytes", int, w, d.log_bytes),
    )


_PLACEHOLDER = ArtifactRef("sha256:" + "0" * 64, "", 0)


def _task(name: str, data: dict[str, Any], where: str, base: Path) -> tuple[TaskSpec, Binary]:
    _check_fields(data, TASK_FIELDS, where)
    binary = _typed(data, "binary", str, where)
    if not binary:
        raise JobSpecError(f"{where}binary", "missing: the file to run (a path next to the job file, or sha256:...)")
    if DIGEST.match(binary):
        bin_ref = Binary(name, None, binary)
    else:
        path = (base / binary).resolve()
        if not path.is_file():
            raise JobSpecError(f"{where}binary", f"file not found: {path}")
        bin_ref = Binary(name, path, None)
    spec = TaskSpec(
        name=name,
        artifact=_PLACEHOLDER,
        args=_string_list(data, "args", where),
        env=_string_map(data, "env", where),
        priority=_typed(data, "priority", str, where, "normal"),
        timeout_ms=parse_duration(data["timeout"], f"{where}timeout") if data.get("timeout") is not None else 0,
        retry=_retry(data, where),
        depends_on=_string_list(data, "depends_on", where),
        trigger_rule=_typed(data, "trigger_rule", str, where, "all_success"),
        labels=_string_map(data, "labels", where),
        levels=_levels(data, where),
        limits=_limits(data, where),
        env_from=_string_map(data, "env_from", where),
    )
    return spec, bin_ref


def _instant(value: Any) -> int | None:
    if value is None or value == "now":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise JobSpecError("at", f"expected an ISO-8601 instant like 2026-12-01T08:00:00Z, got {value!r}") from None
    if dt.tzinfo is None:
        raise JobSpecError("at", f"instant {value!r} has no time zone offset (add Z or +01:00)")
    return int(dt.timestamp() * 1000)


def parse_job(text: str, base: Path, source: str = "job file") -> JobFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise JobSpecError("", f"{source} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise JobSpecError("", f"{source} must be a mapping of fields")
    job_only = {k: v for k, v in data.items() if k not in TASK_FIELDS}
    _check_fields(job_only, JOB_FIELDS, "", JOB_FIELDS | TASK_FIELDS)
    job_id = _typed(data, "job", str, "")
    if not job_id:
        raise JobSpecError("job", "missing: the job's id")
    cron = _typed(data, "schedule", str, "")
    schedule = Schedule(
        cron=cron,
        at_ms=_instant(data.get("at")),
        timezone=_typed(data, "timezone", str, "", "UTC"),
        misfire=_typed(data, "misfire", str, "", "once"),
        misfire_grace_ms=parse_duration(data["misfire_grace"], "misfire_grace") if "misfire_grace" in data
        else Schedule().misfire_grace_ms,
        catchup_window_ms=parse_duration(data["catchup_window"], "catchup_window") if "catchup_window" in data
        else Schedule().catchup_window_ms,
        overlap=_typed(data, "overlap", str, "", "allow"),
        spread_ms=parse_duration(data["spread"], "spread") if "spread" in data else 0,
    )
    tasks_raw = data.get("tasks")
    specs: list[TaskSpec] = []
    binaries: list[Binary] = []
    if tasks_raw is not None:
        if any(k in data for k in TASK_FIELDS):
            extra = next(k for k in data if k in TASK_FIELDS)
            raise JobSpecError(extra, "belongs inside a task when the job has 'tasks'")
        if not isinstance(tasks_raw, dict):
            raise JobSpecError("tasks", "expected a mapping of task name to task fields")
        if not tasks_raw:
            raise JobSpecError("tasks", "a job needs at least one task (an empty DAG cannot run)")
        for name, body in tasks_raw.items():
            if not isinstance(body, dict):
                raise JobSpecError(f"tasks.{name}", "expected a mapping of task fields")
            spec, b = _task(str(name), body, f"tasks.{name}.", base)
            specs.append(spec)
            binaries.append(b)
    else:
        spec, b = _task("main", {k: v for k, v in data.items() if k in TASK_FIELDS}, "", base)
        specs.append(spec)
        binaries.append(b)
    job = JobSpec(job_id=job_id, tasks=specs, schedule=schedule,
                  description=_typed(data, "description", str, "", ""),
                  max_active_runs=_typed(data, "max_active_runs", int, "", 0))
    validate_job(job)  # everything but the artifacts, which are checked after upload
    return JobFile(job, binaries)


def load_job(path: Path) -> JobFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobSpecError("", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise JobSpecError("", f"not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
                           ) from None
    return parse_job(text, path.parent, path.name)
