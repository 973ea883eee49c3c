"""`ksched replay`, `ksched history` and `ksched wait`: proving and following what happened."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ksched.config import Settings
from ksched.instants import iso, parse_instant
from ksched.reader import Record, end_offsets, find_run, group_progress, job_history, topic_records
from ksched.schemas.records import to_data
from ksched.streams.replay import ReplayResult, replay
from ksched.topics import app_id

from . import render
from .commands import err

#: Settings that change decisions; a saved history records them so its replay decides the same way.
DECISION_SETTINGS = ("partitions", "lease_s", "lookahead_s", "keep_run_views")


def save_records(path: Path, inbox: list[Record], events: list[Record], settings: Settings) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"settings": {k: getattr(settings, k) for k in DECISION_SETTINGS}}) + "\n")
        for topic, r in [*(("inbox", r) for r in inbox), *(("events", r) for r in events)]:
            f.write(json.dumps({"topic": topic, "partition": r.partition,
                                "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                                "key": base64.b64encode(r.key).decode() if r.key is not None else None,
                                "value": base64.b64encode(r.value).decode() if r.value is not None else None})
                    + "\n")


def load_records(path: Path, settings: Settings) -> tuple[list[Record], list[Record], Settings]:
    inbox: list[Record] = []
    events: list[Record] = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if "settings" in d:
            settings = replace(settings, **{k: v for k, v in d["settings"].items() if k in DECISION_SETTINGS})
            continue
        rec = Record(d["topic"], d["partition"], d["offset"], d["timestamp_ms"],
                     base64.b64decode(d["key"]) if d["key"] is not None else None,
                     base64.b64decode(d["value"]) if d["value"] is not None else None)
        (inbox if d["topic"] == "inbox" else events).append(rec)
    return inbox, events, settings


def _report(result: ReplayResult, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "ok": result.ok, "records": result.records, "state_digest": result.digest(),
            "jobs": {k: to_data(v) for k, v in sorted(result.jobs.items())},
            "violations": [to_data(v) for v in result.violations],
            "decisions_missing_from_log": result.missing_from_log,
            "logged_decisions_not_reproduced": result.not_reproduced,
            "pending_records": result.pending_records, "pending_decisions": result.pending_decisions,
        }, indent=2, default=str)
    lines = [f"replayed {result.records} inbox records into {len(result.jobs)} jobs; "
             f"{len(result.decisions)} decisions; state digest {result.digest()[:16]}"]
    rows = []
    for job_id, st in sorted(result.jobs.items()):
        counts: dict[str, int] = {}
        for r in st.runs.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        rows.append([job_id, "deleted" if st.deleted else ("paused" if st.paused else "active"), str(st.revision),
                     ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "-"])
    if rows:
        lines.append(render.table(rows, ["JOB", "STATE", "REVISION", "RECENT RUNS"]))
    for v in result.violations:
        lines.append(f"VIOLATION {v.invariant}: {v.detail}")
        lines += [f"    {e}" for e in v.events]
    if result.missing_from_log:
        lines.append(f"DIVERGENCE: {len(result.missing_from_log)} replayed decisions are not in the log, e.g. "
                     + ", ".join(result.missing_from_log[:5]))
    if result.not_reproduced:
        lines.append(f"DIVERGENCE: {len(result.not_reproduced)} logged decisions were not reproduced, e.g. "
                     + ", ".join(result.not_reproduced[:5]))
    if result.pending_decisions:
        lines.append(f"{result.pending_records} inbox records lie past the workers' committed offsets (not decided "
                     f"yet, or decided but not committed); their {result.pending_decisions} replayed decisions that "
                     "are not in the log yet were not compared")
    lines.append("all invariants hold" if result.ok else "replay FAILED")
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    until = parse_instant(args.until) if args.until else None
    decided: dict[int, int] | None = None
    if args.from_file:
        inbox, events, settings = load_records(Path(args.from_file), settings)
    else:
        # Against a running installation, in this order: every decision of an input before the committed offsets
        # is in the log by the end offsets read next, and every input of a logged decision up to those ends is
        # in the inbox read after them. Read the other way round, decisions made while the inbox was being read
        # would be logged decisions without their input: a divergence that is not one.
        progress = group_progress(settings, settings.topic("inbox"), app_id(settings))
        decided = {p: done for p, (done, _) in progress.items()}
        logged_until = end_offsets(settings, settings.topic("events"))
        inbox = list(topic_records(settings, settings.topic("inbox")))
        events = list(topic_records(settings, settings.topic("events"), until=logged_until))
        partitions = len({r.partition for r in inbox if r.partition is not None})
        if inbox and partitions > settings.partitions:
            return err(f"{settings.topic('inbox')} has {partitions} partitions but KSCHED_PARTITIONS is "
                       f"{settings.partitions}; replay with the settings the workers run with")
    if args.save:
        save_records(Path(args.save), inbox, events, settings)
    result = replay(settings, inbox, events, until_ms=until, decided=decided)
    print(_report(result, args.json))
    return 0 if result.ok else 1


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    try:
        since = parse_instant(args.since) if args.since else None
        until = parse_instant(args.until) if args.until else None
    except ValueError as exc:
        return err(f"history: {exc}")
    page = job_history(settings, args.job, since_ms=since, until_ms=until, limit=args.limit)
    records = page.records
    if not records and since is None:
        return err(f"no history for job {args.job!r}")
    if args.json:
        print(json.dumps([{"at_ms": t, "topic": topic, "type": type(e).__name__, "event": to_data(e)}
                          for t, topic, e in records], indent=2, default=lambda b: base64.b64encode(b).decode()))
        if page.next_since_ms is not None:
            print(f"more from --since {page.next_since_ms}", file=sys.stderr)
        return 0
    rows = [[render.ts(t), "inbox" if topic.endswith(".inbox") else "decided", type(e).__name__, _describe(e)]
            for t, topic, e in records if type(e).__name__ != "Tick"]
    print(render.table(rows, ["AT (UTC)", "", "EVENT", "WHAT"]))
    if page.next_since_ms is not None:
        print(f"(more: ksched history {args.job} --since {page.next_since_ms} --limit {args.limit})")
    return 0


def _describe(e: Any) -> str:
    for name in ("run_id", "task_id"):
        if getattr(e, name, ""):
            what = getattr(e, name)
            break
    else:
        what = getattr(e, "command_id", "")
    extra = [f"{k}={getattr(e, k)}" for k in ("attempt", "fencing_token", "executor_id", "outcome", "state",
                                             "exit_code", "reason", "trigger") if getattr(e, k, None) not in
             (None, "", 0)]
    instant = getattr(e, "scheduled_for_ms", None)
    if instant is not None and not getattr(e, "run_id", ""):  # a run id names its instant already
        what = f"{getattr(e, 'job_id', '')}@{iso(instant)}"
    return " ".join([str(what), *extra])[:160]


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    """Follow a run until it ends; exit 0 if it succeeded."""
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        run, tasks = find_run(settings, args.run)
        if run is not None:
            counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(run.task_counts.items()))
            line = f"{args.run}: {run.state} ({counts})"
            if line != last:
                print(line, flush=True)
                last = line
            if run.state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                failed = [t.name for t in tasks.values() if t.state in ("FAILED", "UPSTREAM_FAILED")]
                if failed:
                    print(f"failed tasks: {', '.join(failed)}", file=sys.stderr)
                return 0 if run.state == "SUCCEEDED" else 1
        time.sleep(args.interval)
    return err(f"{args.run} did not end within {args.timeout:.0f}s")

