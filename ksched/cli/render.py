"""Readable tables and JSON for the CLI."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from ksched.instants import from_ms
from ksched.reader import JobStatus
from ksched.schemas.records import to_data
from ksched.streams.core.schedule import zone


def ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return from_ms(ms).strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def delay(scheduled_ms: int, started_ms: int | None) -> str:
    """How long after its scheduled instant an attempt started ("-" if it has not)."""
    if started_ms is None:
        return "-"
    late = started_ms - scheduled_ms
    return f"{late / 1000:.3f}s" if abs(late) < 60_000 else f"{late / 60_000:.1f}min"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def status_data(st: JobStatus) -> dict[str, Any]:
    return {
        "job_id": st.job_id,
        "deleted": st.deleted,
        "definition": to_data(st.definition) if st.definition else None,
        "runs": [
            {**to_data(r), "tasks": [to_data(t) for t in st.tasks.get(r.run_id, {}).values()]}
            for r in st.ordered_runs()
        ],
    }


def status_json(st: JobStatus) -> str:
    return json.dumps(status_data(st), indent=2)


def describe_job(st: JobStatus) -> str:
    d = st.definition
    if d is None:
        return f"job {st.job_id}: " + ("deleted" if st.deleted else "not in the catalog")
    s = d.job.schedule
    if s.cron:
        when = f'cron "{s.cron}" in {s.timezone}'
    elif s.at_ms is not None:
        when = f"once at {ts(s.at_ms)} UTC"
    else:
        when = "once, on submit"
    state = "paused" if d.paused else "active"
    return f"job {d.job_id}: {d.job.kind}, {when}, revision {d.revision}, {state}"


def status_text(st: JobStatus, now_ms: int | None = None) -> str:
    """The job and its runs as a table. A run an executor claimed ahead of its instant reads STAGED."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    rows: list[list[str]] = []
    staged = False
    for r in st.ordered_runs():
        tasks = st.tasks.get(r.run_id, {})
        single = len(tasks) <= 1
        for t in tasks.values() if tasks else []:
            a = t.attempts[-1] if t.attempts else None
            state = t.state if not single or r.state in ("RUNNING", "QUEUED") else r.state
            if state == "CLAIMED" and r.scheduled_for_ms > now_ms and (a is None or a.started_at_ms is None):
                state, staged = "STAGED", True
            rows.append([
                r.run_id if single else f"{r.run_id} {t.name}",
                state,
                ts(r.scheduled_for_ms),
                ts(a.started_at_ms if a else None),
                delay(r.scheduled_for_ms, a.started_at_ms if a else None),
                ts(a.finished_at_ms if a else None),
                "-" if a is None or a.exit_code is None else str(a.exit_code),
                str(t.attempt),
            ])
        if not tasks:
            rows.append([r.run_id, r.state, ts(r.scheduled_for_ms), "-", "-", "-", "-", "0"])
    head = describe_job(st)
    if not rows:
        return head + "\n(no runs yet)"
    out = head + "\n" + table(rows, ["RUN", "STATE", "SCHEDULED (UTC)", "STARTED", "LATE", "FINISHED", "EXIT",
                                     "ATTEMPTS"])
    if staged:
        out += "\nSTAGED: claimed by an executor ahead of its instant, with its binary fetched; it starts on time"
    backfill = Counter(r.state for r in st.ordered_runs() if r.trigger == "BACKFILL")
    if backfill:
        out += (f"\nBACKFILL: {sum(backfill.values())} runs of past occurrences (" +
                ", ".join(f"{n} {s.lower()}" for s, n in sorted(backfill.items())) + ")")
    return out


CELL = {
    "SUCCEEDED": "ok", "FAILED": "FAILED", "RUNNING": "running", "READY": "ready", "WAITING": "waiting",
    "CLAIMED": "claimed", "RETRY_WAIT": "retry", "SKIPPED": "skipped", "UPSTREAM_FAILED": "upstream_failed",
    "CANCELLED": "cancelled",
}


def task_order(st: JobStatus) -> list[str]:
    """Task names in dependency order (from the job's definition), else as first seen."""
    if st.definition is not None:
        from ksched.streams.core.dag import topological_order

        return topological_order(st.definition.job.tasks)
    names: list[str] = []
    for tasks in st.tasks.values():
        names += [n for n in tasks if n not in names]
    return names


def runs_grid(st: JobStatus, limit: int) -> str:
    """Runs by tasks: one row per run (latest last), one column per task, each cell the task's state."""
    runs = st.ordered_runs()[-limit:]
    names = task_order(st)
    rows = []
    for r in runs:
        tasks = st.tasks.get(r.run_id, {})
        cells = []
        for n in names:
            t = tasks.get(n)
            cells.append("-" if t is None else CELL.get(t.state, t.state) + (f"#{t.attempt}" if t.attempt > 1 else ""))
        rows.append([r.run_id, r.state, *cells])
    head = describe_job(st)
    if not rows:
        return head + "\n(no runs yet)"
    return head + "\n" + table(rows, ["RUN", "STATE", *names])


def zoned(ms: int, tz: str) -> str:
    return from_ms(ms, zone(tz)).isoformat()
