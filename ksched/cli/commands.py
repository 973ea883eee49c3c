"""What the `ksched` subcommands do. Each takes parsed arguments and settings and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from ksched import kafka
from ksched.artifacts import open_store, read_log
from ksched.bulk import bulk_records
from ksched.config import Settings
from ksched.errors import JobSpecError, KschedError
from ksched.partitioning import partition_for
from ksched.reader import current_status, find_run, job_status, read_partition
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    ArtifactRef,
    BackfillAccepted,
    BackfillJob,
    CancelRun,
    DeleteJob,
    JobAccepted,
    JobChanged,
    JobRejected,
    JobSpec,
    PauseJob,
    ReportIgnored,
    RerunTasks,
    ResumeJob,
    RunTriggered,
    SubmitJob,
    TaskReady,
    TriggerJob,
)
from ksched.streams.core.schedule import fire_times, preview
from ksched.topics import MAX_RECORD_BYTES, POOL_LABEL, ensure_topics, submit_topic

from . import render
from .jobfile import JobFile, load_job


def new_command_id() -> str:
    return uuid.uuid4().hex[:16]


def now_ms() -> int:
    return int(time.time() * 1000)


def err(msg: str) -> int:
    print(f"ksched: {msg}", file=sys.stderr)
    return 2


class Progress:
    """A one-line progress bar on stderr for uploads over 1 MiB."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if total < (1 << 20) or not sys.stderr.isatty():
            return
        pct = int(done * 100 / total)
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            end = "\n" if done >= total else ""
            print(f"\r{self.name} [{bar:<25}] {pct:3d}% of {total / 1048576:.1f} MiB", end=end, file=sys.stderr)


def upload(settings: Settings, path: Path) -> ArtifactRef:
    store = open_store(settings.artifacts, settings.s3_endpoint_url)
    return store.put_file(path, Progress(path.name))


def send_and_wait(settings: Settings, job_id: str, event: Any, until: Callable[[Any], bool] | None,
                  timeout_s: float) -> Any | None:
    """Produce `event` to the inbox; if `until` is given, wait for a decision it accepts and return it."""
    return send_and_follow(settings, job_id, event, until, timeout_s)[0]


def send_and_follow(settings: Settings, job_id: str, event: Any, until: Callable[[Any], bool] | None,
                    timeout_s: float, then: Callable[[Any], bool] | None = None,
                    then_s: float = 3.0) -> tuple[Any | None, Any | None]:
    """`send_and_wait`, and then, for at most `then_s` more, a later decision that `then` accepts."""
    codec = default_codec()
    topic = settings.topic("events")
    partition = partition_for(job_id, settings.partitions)
    start = 0
    consumer = None
    if until is not None:
        consumer = kafka.consumer(settings, group=f"{settings.prefix}-cli-{uuid.uuid4().hex[:8]}")
        _, start = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        consumer.assign([TopicPartition(topic, partition, start)])
    value = codec.encode(event)
    if len(value) > MAX_RECORD_BYTES:
        raise JobSpecError("job", f"encoded, it is {len(value)} bytes; the inbox takes at most {MAX_RECORD_BYTES}")
    p = kafka.producer(settings, **{"message.max.bytes": MAX_RECORD_BYTES + 65536})
    errors: list[str] = []
    topic = submit_topic(settings)
    p.produce(topic, key=job_id.encode(), value=value,
              on_delivery=lambda e, _m: errors.append(str(e)) if e else None)
    if p.flush(30) or errors:
        raise KschedError(f"could not deliver to {topic}: {errors or 'timeout'}")
    if consumer is None or until is None:
        return None, None
    first = None
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None or m.error() is not None or m.value() is None:
                continue
            try:
                decision = codec.decode(m.value())
            except KschedError:
                continue
            if first is None:
                if until(decision):
                    first = decision
                    if then is None:
                        return first, None
                    deadline = time.monotonic() + then_s
            elif then is not None and then(decision):
                return first, decision
        return first, None
    finally:
        consumer.close()


def _load_spec(settings: Settings, path: Path) -> JobSpec:
    """A job file validated, its binaries in the artifact store; JobSpecError names what is wrong."""
    jf: JobFile = load_job(path)
    refs: dict[str, ArtifactRef] = {}
    store = open_store(settings.artifacts, settings.s3_endpoint_url)
    for b in jf.binaries:
        if b.path is not None:
            refs[b.task] = store.put_file(b.path, Progress(b.path.name))
        else:
            assert b.digest is not None
            if not store.exists(b.digest):
                raise JobSpecError("binary", f"artifact {b.digest} is not in {store.url} (ksched upload it)")
            refs[b.task] = ArtifactRef(b.digest, b.digest[7:19], store.size(b.digest))
    spec: JobSpec = jf.with_artifacts(refs)
    pools = tuple(sorted({t.labels[POOL_LABEL] for t in spec.tasks if POOL_LABEL in t.labels}))
    if pools:
        ensure_topics(settings, pools=pools)
    return spec


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    if len(args.file) > 1:
        return _submit_many(args, settings)
    path = Path(args.file[0])
    try:
        spec = _load_spec(settings, path)
    except JobSpecError as exc:
        return err(f"{path}: {exc}")
    command_id = new_command_id()
    cmd = SubmitJob(command_id, spec, now_ms(), args.by or "cli")
    # A one-off that runs on submission: wait for the scheduler to name its run (the run id is derived from the
    # instant the scheduler fires it), unless told not to wait.
    oneoff_now = spec.schedule.cron is None and spec.schedule.at_ms is None
    if not (args.wait or (oneoff_now and not args.no_wait)):
        send_and_wait(settings, spec.job_id, cmd, None, 0)
        print(f"submitted {spec.job_id} ({spec.kind}), command {command_id}")
        return 0
    accepted: list[JobAccepted] = []

    def answered(d: Any) -> bool:
        if isinstance(d, JobAccepted) and d.command_id == command_id:
            accepted.append(d)
            return True
        return isinstance(d, JobRejected) and d.command_id == command_id

    decision, run = send_and_follow(
        settings, spec.job_id, cmd, answered, args.timeout,
        then=(lambda d: isinstance(d, RunTriggered) and d.job_id == spec.job_id
              and bool(accepted) and d.revision == accepted[0].revision) if oneoff_now else None)
    if isinstance(decision, JobAccepted):
        print(_accepted(spec, decision, run))
        return 0
    if isinstance(decision, JobRejected):
        return err(f"rejected {spec.job_id}: {decision.reason}")
    return err(f"submitted {spec.job_id}, but no decision within {args.timeout:.0f}s (is a streams worker running?)")


def _submit_many(args: argparse.Namespace, settings: Settings) -> int:
    """Several job files: every one validated first (nothing is produced if any is wrong), then submitted in bulk
    records (`ksched.bulk`), without waiting for the decisions."""
    if args.wait:
        return err("--wait takes one file; submitted in bulk, each job's decision is in `ksched status JOB`")
    specs, errors = [], []
    for name in args.file:
        try:
            specs.append(_load_spec(settings, Path(name)))
        except JobSpecError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return err(f"nothing submitted: {len(errors)} of {len(args.file)} files are not valid")
    seen: dict[str, str] = {}
    for name, spec in zip(args.file, specs, strict=True):
        if spec.job_id in seen:
            return err(f"nothing submitted: {name} and {seen[spec.job_id]} both define job {spec.job_id!r}")
        seen[spec.job_id] = name
    at, by = now_ms(), args.by or "cli"
    cmds = [SubmitJob(new_command_id(), spec, at, by) for spec in specs]
    try:
        records = list(bulk_records(cmds, settings.partitions, default_codec().encode))
    except JobSpecError as exc:
        return err(str(exc))
    p = kafka.producer(settings, **{"message.max.bytes": MAX_RECORD_BYTES + 65536, "linger.ms": 20})
    failures: list[str] = []
    topic = submit_topic(settings)
    for r in records:
        p.produce(topic, key=r.key, value=r.value, partition=r.partition,
                  on_delivery=lambda e, _m: failures.append(str(e)) if e else None)
    if p.flush(60) or failures:
        return err(f"could not deliver to {topic}: {failures[:3] or 'timeout'} (submitting again is safe)")
    print(f"submitted {len(cmds)} jobs in {len(records)} records")
    return 0


def _accepted(spec: JobSpec, decision: JobAccepted, run: RunTriggered | None) -> str:
    """What `submit` says of an accepted job: its revision, and a one-off's run."""
    what = f"accepted {spec.job_id} ({spec.kind}), revision {decision.revision}"
    if run is not None:
        return what + f", run {run.run_id}"
    if spec.schedule.cron is None and spec.schedule.at_ms is not None:
        first = preview(spec.schedule, spec.job_id, now_ms() - 1, 1)
        return what + (f", runs at {render.ts(first[0])} UTC" if first else ", its instant has passed")
    if spec.schedule.cron is None:
        return what + " (its run has not started: is the job paused?)"
    return what


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    if not path.is_file():
        return err(f"{path}: file not found")
    ref = upload(settings, path)
    print(f"{ref.digest}  {ref.name}  {ref.size} bytes")
    return 0


#: Occurrences `ksched backfill` lists before it answers (a backfill itself has no such limit).
BACKFILL_PREVIEW = 100_000


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    st = current_status(settings, args.job)
    if not st.known:
        return err(f"unknown job {args.job!r}")
    print(render.status_json(st) if args.json else render.status_text(st))
    if st.older_runs and not args.json:
        print(f"(the runs the scheduler holds; older ones: ksched runs {args.job} --limit N)")
    return 0


def _lifecycle(args: argparse.Namespace, settings: Settings, event: Any, verb: str) -> int:
    decision = send_and_wait(
        settings, args.job, event,
        lambda d: isinstance(d, JobChanged | JobRejected) and d.command_id == event.command_id, args.timeout)
    if isinstance(decision, JobRejected):
        return err(decision.reason)
    print(f"{verb} {args.job}" if decision else f"requested: {verb} {args.job} (no answer yet)")
    return 0


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _lifecycle(args, settings, PauseJob(new_command_id(), args.job, now_ms(), args.reason or ""), "paused")


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _lifecycle(args, settings, ResumeJob(new_command_id(), args.job, now_ms()), "resumed")


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    return _lifecycle(args, settings, DeleteJob(new_command_id(), args.job, now_ms()), "deleted")


def cmd_trigger(args: argparse.Namespace, settings: Settings) -> int:
    command_id = new_command_id()
    send_and_wait(settings, args.job, TriggerJob(command_id, args.job, now_ms()), None, 0)
    print(f"triggered {args.job}: run {args.job}@manual-{command_id}")
    return 0


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Fire a cron job's past occurrences in [--from, --to] as runs of their own, at most --max-active at once."""
    from ksched.instants import iso, parse_instant
    from ksched.streams.core.decide import backfill_run_id

    try:
        frm, to = parse_instant(args.from_), parse_instant(args.to)
    except ValueError as exc:
        return err(f"backfill: {exc}")
    if frm > to:
        return err(f"backfill: --from {iso(frm)} is after --to {iso(to)}")
    if args.max_active < 1:
        return err("backfill: --max-active must be 1 or more")
    st = job_status(settings, args.job)
    if st.definition is None:
        return err(f"unknown job {args.job!r}")
    schedule = st.definition.job.schedule
    if schedule.cron is None:
        return err(f"backfill: job {args.job!r} has no cron schedule (ksched trigger runs it now)")
    times: list[int] = []
    for t in fire_times(schedule, args.job, frm - 1):
        if t > to or len(times) > BACKFILL_PREVIEW:
            break
        times.append(t)
    count = f"{len(times)}" if len(times) <= BACKFILL_PREVIEW else f"more than {BACKFILL_PREVIEW}"
    command_id = new_command_id()
    cmd = BackfillJob(command_id, args.job, frm, to, now_ms(), args.max_active)
    decision = send_and_wait(settings, args.job, cmd,
                             lambda d: isinstance(d, BackfillAccepted | JobRejected) and d.command_id == command_id,
                             args.timeout)
    if isinstance(decision, JobRejected):
        return err(f"backfill of {args.job} rejected: {decision.reason}")
    span = f"{iso(frm)} .. {iso(to)}: {count} occurrences, at most {args.max_active} running at once"
    if not isinstance(decision, BackfillAccepted):
        print(f"backfill of {args.job} requested ({span}); no answer within {args.timeout:.0f}s")
        return 0
    new = [t for t in times if any(lo <= t <= hi for lo, hi in decision.ranges)]
    print(f"backfill of {args.job} accepted ({span}); {len(new)} not covered by an earlier backfill"
          + (f", first run {backfill_run_id(args.job, new[0])}" if new else ""))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    job_id = args.run.split("@", 1)[0]
    send_and_wait(settings, job_id, CancelRun(new_command_id(), job_id, args.run, now_ms(), args.reason or ""),
                  None, 0)
    print(f"cancel requested for {args.run}")
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    st = job_status(settings, args.job)
    if not st.known:
        return err(f"unknown job {args.job!r}")
    if args.json:
        data = render.status_data(st)
        data["runs"] = data["runs"][-args.limit:]
        print(json.dumps(data, indent=2))
    else:
        print(render.runs_grid(st, args.limit))
    return 0


def cmd_rerun(args: argparse.Namespace, settings: Settings) -> int:
    job_id = args.run.split("@", 1)[0]
    command_id = new_command_id()
    decision = send_and_wait(
        settings, job_id, RerunTasks(command_id, job_id, args.run, args.from_task, now_ms()),
        lambda d: (isinstance(d, ReportIgnored) and d.event_id == f"{command_id}/ignored")
        or (isinstance(d, TaskReady) and d.run_id == args.run), args.timeout)
    if isinstance(decision, ReportIgnored):
        return err(f"cannot rerun {args.run} from {args.from_task}: {decision.reason}")
    print(f"rerunning {args.run} from {args.from_task}" if decision else f"rerun requested for {args.run}")
    return 0


def cmd_next(args: argparse.Namespace, settings: Settings) -> int:
    target = Path(args.job)
    if target.suffix in (".yaml", ".yml") and target.exists():
        try:
            spec = load_job(target).spec
        except JobSpecError as exc:
            return err(f"{target}: {exc}")
    else:
        st = job_status(settings, args.job)
        if st.definition is None:
            return err(f"unknown job {args.job!r}")
        spec = st.definition.job
    s = spec.schedule
    times = preview(s, spec.job_id, now_ms(), args.count)
    if args.json:
        print(json.dumps([{"utc": render.zoned(t, "UTC"), s.timezone: render.zoned(t, s.timezone)} for t in times]))
        return 0
    rows = [[render.zoned(t, "UTC"), render.zoned(t, s.timezone)] for t in times]
    print(render.table(rows, ["UTC", s.timezone]) if rows else "(no further fire times)")
    return 0


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    run, tasks = find_run(settings, args.run)
    if run is None:
        return err(f"unknown run {args.run!r}")
    store = open_store(settings.artifacts, settings.s3_endpoint_url)
    selected = [t for t in tasks.values() if args.task is None or t.name == args.task]
    if not selected:
        return err(f"run {args.run} has no task {args.task!r}")
    for t in selected:
        for a in t.attempts:
            if args.attempt is not None and a.attempt != args.attempt:
                continue
            print(f"==> {t.task_id} attempt {a.attempt} ({a.outcome or 'running'}) <==")
            if not a.log_ref:
                print("(no log stored)")
                continue
            try:
                sys.stdout.write(read_log(store, a.log_ref).decode(errors="replace"))
            except KschedError as exc:
                print(f"({exc})")
    return 0


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    codec = default_codec()
    rows = []
    for p in range(settings.partitions):
        for m in read_partition(settings, settings.topic("dlq"), p):
            d = codec.decode(m.value())
            rows.append([d.source_topic, str(d.partition), str(d.offset), d.reason])
    print(render.table(rows, ["TOPIC", "PARTITION", "OFFSET", "REASON"]) if rows else "(dead-letter topic is empty)")
    return 0
