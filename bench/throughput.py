"""Sustained end-to-end throughput of no-op tasks with claims, and claim latency.

Submits `--tasks` one-off jobs (each one no-op task) at `--rate` per second straight into the inbox, and
measures, through the real broker, streams worker(s) and executors:
  * throughput: tasks *settled by the scheduler* (TaskSettled in the decision log, not the executors' reports)
    per second over the busy period (first submission to the last task settled, by the decision records'
    timestamps: when the worker produced them);
  * CPU ms per task per role (broker, streams workers, executors with their tasks, and of that the tasks'
    processes themselves), this benchmark's own, and the whole machine's (every core's busy time from
    /proc/stat: what the roles leave out, the kernel's threads and the guardians, is the difference);
  * Kafka records per task, per topic (end offsets before and after; transaction markers included);
  * broker requests per task, by type (the broker's JMX before and after; needs a JDK's attach API);
  * claim latency: TaskReady produced -> the executor's process started (p50/p99);
  * per-step times from the producers' record timestamps, and from the completion reports: the process's
    life as the executor saw it (start -> exit reaped) and exit reaped -> report record written.
Set KSCHED_PROFILE_DIR to write the streams worker's cProfile there (`python -m pstats`).

    python -m bench.throughput [--tasks 3000] [--rate 1000] [--workers 1] [--executors 2] [--slots 32]
                               [--warmup 12000] [--contained] [--no-offers]

`--warmup` tasks run first, the same way, and are not measured: the bench's broker is a JVM it started, whose JIT
compiler otherwise takes a share of the measured window (reported as `broker_of_which_jit_compiler`).

The executors run their jobs uncontained unless `--contained` (the executor's default: bubblewrap and a uid per
attempt, a few ms more per start).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ksched import kafka
from ksched.artifacts import open_store
from ksched.config import Settings
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ClaimGranted, ClaimTask, JobSpec, SubmitJob, TaskCompleted, TaskReady, TaskSpec
from tests.support import Cluster, write_script

from .common import (
    Follower,
    broker,
    broker_pid,
    broker_requests,
    cpu_seconds,
    early_args,
    jit_cpu_seconds,
    machine_cpu_seconds,
    report,
    requests_per_task,
    settle,
    start_of,
    submit_jobs,
    summary,
    timestamped,
    warm_up_broker,
)


def completed(s: Settings) -> dict[str, int]:
    follower = Follower(s, "ksched.TaskSettled", topic="events")
    try:
        return {e.task_id: e.at_ms for e in follower.poll(2.0)}
    finally:
        follower.consumer.close()


def record_counts(s: Settings) -> dict[str, int]:
    """Records in each topic the path of a task writes (the sum of the partitions' end offsets)."""
    from ksched.reader import end_offsets
    from ksched.topics import changelog_topic

    topics = {t: s.topic(t) for t in ("inbox", "events", "ready.normal", "control", "jobs", "runs", "tasks")}
    topics["changelog"] = changelog_topic(s)
    return {name: sum(end_offsets(s, topic).values()) for name, topic in topics.items()}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=1000.0, help="submissions per second")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=12000,
                    help="tasks run first, unmeasured, so the broker's JVM is compiled (0: none)")
    ap.add_argument("--no-offers", action="store_true",
                    help="executors offer no slots with their completions (one-task jobs never take one up)")
    ap.add_argument("--early-from", type=int, default=None,
                    help="executors' --early-from (claims waiting from which processes are created at claims)")
    ap.add_argument("--contained", action="store_true",
                    help="executors with their default containment (bubblewrap, a uid per attempt; needs root and "
                         "bwrap), not --uncontained")
    args = ap.parse_args(argv)
    profile_dir = os.environ.pop("KSCHED_PROFILE_DIR", "")
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ksched-tp-") as tmp:
        s = Settings(bootstrap_servers=bootstrap, prefix=f"tp{uuid.uuid4().hex[:6]}", home=Path(tmp),
                     partitions=args.partitions, ready_partitions=args.partitions, control_partitions=3)
        cluster = Cluster(s)
        ref = open_store(s.artifacts).put_file(write_script(Path(tmp) / "noop.sh", "exit 0\n"))
        for i in range(args.workers):
            if profile_dir:
                os.environ["KSCHED_PROFILE"] = str(Path(profile_dir) / f"streams-w{i}.prof")
            cluster.streams(f"w{i}")
            os.environ.pop("KSCHED_PROFILE", None)
        for _ in range(args.executors):
            cluster.executor(args.slots, None, *(["--no-offers"] if args.no_offers else []),
                             *early_args(args.early_from), contained=args.contained)
        _warm_up(cluster, s, ref)
        p = kafka.producer(s, **{"linger.ms": 5})
        watch = Follower(s, "ksched.TaskSettled", topic="events")
        if args.warmup:
            warm_up_broker(s, ref, args.warmup, args.rate, p, watch)
        cpu_before, cpu_t0 = _cpu(cluster), time.time()
        records_before = record_counts(s)
        requests_before = broker_requests(broker_pid())
        done: dict[str, int] = {}
        start = submit_jobs(p, s, ref, "t", args.tasks, args.rate)
        submitted = time.time()
        settle(watch, "t", args.tasks, done)
        cpu_after, window = _cpu(cluster), time.time() - cpu_t0
        requests_after = broker_requests(broker_pid())
        time.sleep(2 * s.commit_interval_s + 1)  # the views held for coalescing go out with the next commit
        records_after = record_counts(s)
        cluster.stop()
        per_task = {t: round((records_after[t] - records_before[t]) / max(1, len(done)), 2) for t in records_after}
        per_task["all"] = round(sum(per_task.values()), 2)
        executor_stats = [line.split(" stopped: ", 1)[1] for p in cluster.procs if p.name.startswith("executor")
                          for line in p.log.read_text(errors="replace").splitlines() if " stopped: " in line]
        cpu = {role: cpu_after[role] - cpu_before[role] for role in cpu_before}
        busy_s = (max(done.values()) / 1000 - start) if done else float("nan")
        report("throughput", {
            "tasks": args.tasks, "offered_rate_per_s": args.rate, "settled": len(done),
            "submit_s": round(submitted - start, 2), "busy_s": round(busy_s, 2),
            "throughput_tasks_per_s": round(len(done) / busy_s, 1) if done else 0.0,
            "streams_workers": args.workers, "executors": args.executors, "slots": args.slots,
            "executors_contained": args.contained, "executors_offer": not args.no_offers,
            "executors_early_from": args.early_from,
            "partitions": args.partitions, **_steps(s),
            # Where the 2 cores went while the tasks ran: cores busy per role, and CPU per task.
            "cpu_cores_busy": {role: round(c / window, 2) for role, c in cpu.items()},
            "cpu_ms_per_task": {role: round(c * 1000 / max(1, len(done)), 2) for role, c in cpu.items()},
            "records_per_task": per_task,
            "broker_requests_per_task": requests_per_task(requests_before, requests_after, len(done)),
            "executors_at_exit": executor_stats,
        })


def _cpu(cluster: Cluster) -> dict[str, float]:
    """CPU seconds used so far by the broker, the streams workers, the executors with their (reaped) tasks, those
    tasks alone, this process, and the whole machine."""
    procs = cluster.procs
    return {
        "broker": cpu_seconds(broker_pid()),
        "broker_of_which_jit_compiler": jit_cpu_seconds(broker_pid()),
        "streams": sum(cpu_seconds(p.popen.pid) for p in procs if p.name.startswith("streams")),
        "executors_and_tasks": sum(cpu_seconds(p.popen.pid, children=True) for p in procs
                                   if p.name.startswith("executor")),
        "executors_of_which_tasks": sum(cpu_seconds(p.popen.pid, children=True) - cpu_seconds(p.popen.pid)
                                        for p in procs if p.name.startswith("executor")),
        "this_benchmark": cpu_seconds(os.getpid()),
        "whole_machine": machine_cpu_seconds(),
    }


def _warm_up(cluster: Cluster, s: Settings, ref: object) -> None:
    """One task through the whole path first, so start-up (group joins, recovery) is not measured."""
    codec = default_codec()
    p = kafka.producer(s)
    spec = JobSpec("warmup", [TaskSpec("main", ref)])  # type: ignore[arg-type]
    p.produce(s.topic("inbox"), key=b"warmup", value=codec.encode(SubmitJob("w", spec, int(time.time() * 1000))))
    p.flush(10)
    deadline = time.time() + 120
    while time.time() < deadline and not any(k.startswith("warmup") for k in completed(s)):
        pass


def _steps(s: Settings) -> dict[str, object]:
    ready: dict[str, int] = {}
    for ts, e in timestamped(s, s.topic("ready.normal"), s.ready_partitions):
        if isinstance(e, TaskReady):
            ready.setdefault(e.task_id, ts)
    claimed: dict[str, int] = {}
    started: dict[str, int] = {}
    lifetime: dict[str, tuple[int, int]] = {}  # task -> (finished - started, report record - finished)
    by_executor: collections.Counter[str] = collections.Counter()
    for ts, e in timestamped(s, s.topic("inbox"), s.partitions):
        if isinstance(e, ClaimTask):
            claimed.setdefault(e.task_id, ts)
        elif start_of(e) is not None and e.task_id not in started:
            started[e.task_id] = start_of(e) or 0
            by_executor[e.executor_id] += 1
        if isinstance(e, TaskCompleted) and e.task_id not in lifetime:
            lifetime[e.task_id] = (e.finished_at_ms - e.started_at_ms, ts - e.finished_at_ms)
    granted: dict[str, int] = {}
    for ts, e in timestamped(s, s.topic("control"), s.control_partitions):
        if isinstance(e, ClaimGranted):
            granted.setdefault(e.task_id, ts)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for tid, r in ready.items():
        if tid.startswith("t") and tid in claimed and tid in granted and tid in started:
            steps["claim_latency_ms (ready -> process started)"].append(started[tid] - r)
            steps["ready_to_claim_committed_ms"].append(claimed[tid] - r)
            steps["claim_to_grant_ms"].append(granted[tid] - claimed[tid])
            steps["grant_to_process_start_ms"].append(started[tid] - granted[tid])
        if tid.startswith("t") and tid in lifetime:
            steps["process_start_to_exit_seen_ms"].append(lifetime[tid][0])
            steps["exit_seen_to_report_written_ms"].append(lifetime[tid][1])
    return {"started_per_executor": sorted(by_executor.values(), reverse=True),
            **{k: summary(v) for k, v in steps.items()}}


if __name__ == "__main__":
    main(sys.argv[1:])
