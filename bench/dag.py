"""DAG hand-offs: a 100-task chain of no-op tasks (hand-off = parent's process finished -> child's process
started, p50/p99, and its steps from the records' timestamps) and a 1,000-task fan-out/fan-in (time from the run's
trigger to the last task's end; the fan-in hand-off, last parent's exit -> the fan-in task's process start, and its
steps).

An executor with a slot free offers it with each completion, and the scheduler grants it the child that the
completion made ready at once (no ready record on the ready topic, no claim): such a hand-off has no
ready -> claim -> grant steps, only completion -> grant. `--no-offers` runs the executor without offers (every
attempt claimed from the ready topic), the path as it was before offers.

    python -m bench.dag [--chain 100] [--fan 1000] [--slots 16] [--warmup 12000] [--no-offers]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ksched import kafka
from ksched.artifacts import open_store
from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.reader import read_partition
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    ArtifactRef,
    ClaimGranted,
    ClaimTask,
    JobSpec,
    RunFinished,
    RunTriggered,
    SubmitJob,
    TaskCompleted,
    TaskReady,
    TaskSpec,
)
from tests.support import Cluster, write_script

from .common import Follower, broker, early_args, report, start_of, summary, unbatched, warm_up_broker


def _submit(s: Settings, spec: JobSpec) -> None:
    p = kafka.producer(s)
    p.produce(s.topic("inbox"), key=spec.job_id.encode(),
              value=default_codec().encode(SubmitJob(uuid.uuid4().hex, spec, int(time.time() * 1000))))
    p.flush(10)


def _follow(s: Settings, job_id: str, timeout_s: float) -> tuple[list[Any], list[tuple[int, Any]]]:
    """Wait for the job's run to finish; return the inbox reports (timestamped) and the decisions."""
    codec = default_codec()
    part = partition_for(job_id, s.partitions)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        decisions = [(m.timestamp()[1], codec.decode(m.value())) for m in
                     read_partition(s, s.topic("events"), part, timeout_s=120) if m.key() == job_id.encode()]
        if any(isinstance(e, RunFinished) for _, e in decisions):
            reports = [(m.timestamp()[1], codec.decode(m.value()))
                       for m in read_partition(s, s.topic("inbox"), part, timeout_s=120)
                       if m.key() == job_id.encode() and m.value() is not None]
            return unbatched(reports), decisions
        time.sleep(2)
    raise TimeoutError(f"{job_id} did not finish in {timeout_s:.0f}s")


def chain(s: Settings, ref: ArtifactRef, n: int) -> dict[str, object]:
    tasks = [TaskSpec(f"s{i:03d}", ref, depends_on=[f"s{i - 1:03d}"] if i else []) for i in range(n)]
    _submit(s, JobSpec("chain", tasks))
    reports, decisions = _follow(s, "chain", 600)
    name = lambda tid: tid.rsplit("/", 1)[1]  # noqa: E731
    started = {name(e.task_id): start_of(e) for _, e in reports if start_of(e) is not None}
    finished = {name(e.task_id): e.finished_at_ms for _, e in reports if isinstance(e, TaskCompleted)}
    completed_ts = {name(e.task_id): ts for ts, e in reports if isinstance(e, TaskCompleted)}
    claimed_ts = {name(e.task_id): ts for ts, e in reports if isinstance(e, ClaimTask)}
    ready_ts = {name(e.task_id): ts for ts, e in decisions if isinstance(e, TaskReady)}
    granted_ts = {name(e.task_id): ts for ts, e in decisions if isinstance(e, ClaimGranted)}
    handoffs = [float(started[f"s{i:03d}"] - finished[f"s{i - 1:03d}"]) for i in range(1, n)]
    steps: dict[str, list[float]] = {k: [] for k in (
        "parent_exit_to_completion_produced_ms", "completion_to_child_ready_ms", "ready_to_claim_committed_ms",
        "claim_to_grant_ms", "completion_to_grant_on_offer_ms", "grant_to_process_start_ms")}
    for i in range(1, n):
        parent, child = f"s{i - 1:03d}", f"s{i:03d}"
        steps["parent_exit_to_completion_produced_ms"].append(completed_ts[parent] - finished[parent])
        if child in claimed_ts:
            steps["completion_to_child_ready_ms"].append(ready_ts[child] - completed_ts[parent])
            steps["ready_to_claim_committed_ms"].append(claimed_ts[child] - ready_ts[child])
            steps["claim_to_grant_ms"].append(granted_ts[child] - claimed_ts[child])
        else:  # granted on the parent's offer: ready and granted in one decision
            steps["completion_to_grant_on_offer_ms"].append(granted_ts[child] - completed_ts[parent])
        steps["grant_to_process_start_ms"].append(started[child] - granted_ts[child])
    total = finished[f"s{n - 1:03d}"] - started["s000"]
    return {"chain_tasks": n, "handoff_ms": summary(handoffs), "chain_total_s": round(total / 1000, 2),
            "chain_granted_on_offers": len(steps["completion_to_grant_on_offer_ms"]),
            "handoff_steps": {k: summary(v) for k, v in steps.items() if v}}


def fan(s: Settings, ref: ArtifactRef, n: int) -> dict[str, object]:
    middle = [TaskSpec(f"t{i:04d}", ref, depends_on=["start"]) for i in range(n)]
    tasks = [TaskSpec("start", ref), *middle, TaskSpec("end", ref, depends_on=[t.name for t in middle])]
    _submit(s, JobSpec("fan", tasks))
    reports, decisions = _follow(s, "fan", 1800)
    triggered = next(ts for ts, e in decisions if isinstance(e, RunTriggered))
    finished = max(e.finished_at_ms for _, e in reports if isinstance(e, TaskCompleted))
    end_started = next(start_of(e) or 0 for _, e in reports if start_of(e) and e.task_id.endswith("/end"))
    middles = [(e.finished_at_ms, ts) for ts, e in reports if isinstance(e, TaskCompleted) and "/t" in e.task_id]
    last_middle, last_reported = max(middles)
    last_report = max(ts for _, ts in middles)  # the fan-in is ready once every parent's report is decided
    first = lambda kind, events: next(ts for ts, e in events  # noqa: E731
                                      if isinstance(e, kind) and e.task_id.endswith("/end"))
    end_ready, end_granted = first(TaskReady, decisions), first(ClaimGranted, decisions)
    end_claimed = next((ts for ts, e in reports if isinstance(e, ClaimTask) and e.task_id.endswith("/end")), None)
    # Where a middle task's time goes, step by step, while a thousand of them pass through the single executor.
    at: dict[str, dict[str, int]] = {k: {} for k in ("ready", "claimed", "granted", "started", "ended", "reported")}
    for ts, e in decisions:
        if "/t" in getattr(e, "task_id", ""):
            if isinstance(e, TaskReady):
                at["ready"].setdefault(e.task_id, ts)
            elif isinstance(e, ClaimGranted):
                at["granted"].setdefault(e.task_id, ts)
    for ts, e in reports:
        if "/t" in getattr(e, "task_id", ""):
            if isinstance(e, ClaimTask):
                at["claimed"].setdefault(e.task_id, ts)
            elif isinstance(e, TaskCompleted):
                at["started"][e.task_id], at["ended"][e.task_id], at["reported"][e.task_id] = \
                    e.started_at_ms, e.finished_at_ms, ts
    order = list(at)
    steps = {f"{a}_to_{b}": summary([at[b][t] - at[a][t] for t in at["reported"] if t in at[a] and t in at[b]])
             for a, b in itertools.pairwise(order)}
    span = max(at["reported"].values()) - min(at["ready"].values())
    running = sum(at["ended"][t] - at["started"][t] for t in at["ended"]) / max(1, span)
    in_flight = sum(at["reported"][t] - at["claimed"][t] for t in at["reported"] if t in at["claimed"]) / max(1, span)
    return {"fan_tasks": n + 2, "fan_time_to_finish_s": round((finished - triggered) / 1000, 2),
            "fan_in_handoff_ms": end_started - last_middle,
            "fan_in_handoff_steps_ms": {
                "last_parent_exit_to_its_completion_produced": last_reported - last_middle,
                "last_completion_produced_to_end_ready": end_ready - last_report,
                **({"end_ready_to_claim_committed": end_claimed - end_ready,
                    "claim_to_grant": end_granted - end_claimed} if end_claimed is not None
                   else {"end_granted_on_the_last_parents_offer": True}),
                "grant_to_process_start": end_started - end_granted},
            "fan_tasks_granted_on_offers": sum(1 for t in at["granted"] if t not in at["claimed"]),
            "fan_middle_task_steps_ms": steps,
            "fan_mean_processes_running": round(running, 1),
            "fan_mean_claimed_not_reported": round(in_flight, 1)}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain", type=int, default=100)
    ap.add_argument("--fan", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--no-offers", action="store_true", help="the executor offers no slots with its completions")
    ap.add_argument("--early-from", type=int, default=None,
                    help="executors' --early-from (claims waiting from which processes are created at claims)")
    ap.add_argument("--warmup", type=int, default=12000,
                    help="one-task jobs run first, unmeasured, so the broker's JVM is compiled (0: none)")
    args = ap.parse_args(argv)
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ksched-dag-") as tmp:
        s = Settings(bootstrap_servers=bootstrap, prefix=f"dag{uuid.uuid4().hex[:6]}", home=Path(tmp),
                     partitions=3, ready_partitions=3, control_partitions=1)
        cluster = Cluster(s)
        ref = open_store(s.artifacts).put_file(write_script(Path(tmp) / "noop.sh", "exit 0\n"))
        cluster.streams("w0")
        cluster.executor(args.slots, None, *(["--no-offers"] if args.no_offers else []),
                         *early_args(args.early_from))
        if args.warmup:
            warm_up_broker(s, ref, args.warmup, 1000.0, kafka.producer(s, **{"linger.ms": 5}),
                           Follower(s, "ksched.TaskSettled", topic="events"))
        figures: dict[str, object] = {"executors_early_from": args.early_from}
        try:
            if args.chain:
                figures.update(chain(s, ref, args.chain))
                print(f"chain: {figures}", file=sys.stderr)
            if args.fan:
                figures.update(fan(s, ref, args.fan))
        finally:
            cluster.stop()
        report("dag", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
