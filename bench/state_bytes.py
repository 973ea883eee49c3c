"""State bytes written per event: what the scheduler writes to its table (and so to RocksDB and the changelog)
for each inbox record, for a small and a large DAG job.

No broker: the streams shell itself, with an in-memory table that counts what is written, runs a fan-out/fan-in
job (start → N-2 parallel tasks → end) to the end: submission, then for every attempt a claim, a start and a
completion, with the executors' reports in the order a fast executor would send them. An event's cost should
follow what it changes, not the size of its job, so the figure for 1,000 tasks should be within 2x of 10's.

`--baseline` also measures the layout before per-entity keys (every job one record, rewritten whole), in the
same run, with nothing kept under keys of its own.

A live worker learns of its outputs' delivery late: the decision log lingers in its producer for about a commit
interval, and the job's outbox keeps every input's outputs until then. So each figure is measured twice: with every
earlier output acknowledged, and with the acknowledgements `--lag` inputs behind (64: the fan-out of `bench dag`
held 67 outbox entries at the median). With `--baseline`, the lagging case is also measured with the outbox kept
whole in the job record (as before its entries got keys of their own).

    python -m bench state_bytes [--tasks 10,1000] [--lag 64] [--baseline]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    ArtifactRef,
    ClaimGranted,
    ClaimTask,
    JobSpec,
    RetryPolicy,
    SubmitJob,
    TaskCompleted,
    TaskReady,
    TaskSpec,
    TaskStarted,
)
from ksched.streams import jobstore
from ksched.streams.jobstore import Message
from ksched.streams.shell import InboxShell

from .common import report, summary

CODEC = default_codec()
T0 = 1_800_000_000_000
DIGEST = "sha256:" + "ab" * 32


@dataclass
class CountingStore:
    """An in-memory table partition that counts every write (key and value bytes; a delete counts its key)."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    written: int = 0
    records: int = 0

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.written += len(key) + len(value)
        self.records += 1

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)
        self.written += len(key)
        self.records += 1

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted(self.data.items())


def fan_job(job_id: str, n: int) -> JobSpec:
    ref = ArtifactRef(DIGEST, "noop.sh", 10)
    once = RetryPolicy(max_attempts=1)
    middle = [TaskSpec(f"t{i:04d}", ref, depends_on=["start"], retry=once) for i in range(max(0, n - 2))]
    return JobSpec(job_id, [TaskSpec("start", ref, retry=once), *middle,
                            TaskSpec("end", ref, depends_on=[t.name for t in middle], retry=once)])


def run_job(n: int, lag: int = 0) -> dict[str, object]:
    """Run an n-task fan-out/fan-in job to the end through the shell; per-event bytes and records written."""
    settings = Settings(prefix="b", partitions=1)
    shell = InboxShell(settings, CODEC)
    store = CountingStore()
    job_id = f"fan{n}"
    p = partition_for(job_id, 1)
    offset = 0
    per_event: list[float] = []
    records: list[float] = []
    now = T0

    def send(event: object) -> list[Message]:
        nonlocal offset
        before, recs = store.written, store.records
        # As a live worker whose producer has had every output acknowledged up to `lag` inputs back (the outbox
        # keeps the outputs of the inputs since then).
        out = shell.process(store, p, offset, job_id.encode(), CODEC.encode(event), delivered=offset - 1 - lag)
        offset += 1
        per_event.append(store.written - before)
        records.append(store.records - recs)
        return out

    def decoded(msgs: list[Message], kind: type) -> list[object]:
        """What went to the executors (ready topics, control), not the same records in the decision log."""
        mine = [m for m in msgs if m.value is not None and m.topic != settings.topic("events")]
        return [e for e in (CODEC.decode(m.value) for m in mine) if isinstance(e, kind)]

    ready = decoded(send(SubmitJob("c1", fan_job(job_id, n), now)), TaskReady)
    done = 0
    while ready:
        nxt: list[object] = []
        for r in ready:
            assert isinstance(r, TaskReady)
            now += 1
            claim = ClaimTask(f"{r.task_id}#{r.attempt}@ex1/x", job_id, r.run_id, r.task_id, r.attempt, "ex1", now)
            (grant,) = decoded(send(claim), ClaimGranted)
            assert isinstance(grant, ClaimGranted)
            send(TaskStarted(job_id, r.run_id, r.task_id, r.attempt, grant.fencing_token, "ex1", now))
            out = send(TaskCompleted(job_id, r.run_id, r.task_id, r.attempt, grant.fencing_token, "ex1", 0, now, now))
            nxt += decoded(out, TaskReady)
            done += 1
        ready = nxt
    assert done == n, f"{done} of {n} tasks ran"
    return {"tasks": n, "events": len(per_event), "bytes_per_event": summary(per_event),
            "records_per_event": summary(records), "bytes_total": store.written}


def measure(tasks: list[int], one_record: bool, lag: int = 0, outbox_inline: bool = False
            ) -> dict[int, dict[str, object]]:
    saved = jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS, jobstore.OUTBOX_INLINE
    if one_record:
        jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS = 1 << 30, False
    if outbox_inline:
        jobstore.OUTBOX_INLINE = 1 << 30
    try:
        return {n: run_job(n, lag) for n in tasks}
    finally:
        jobstore.SPLIT_TASKS, jobstore.SPLIT_SPECS, jobstore.OUTBOX_INLINE = saved


def _line(label: str, n: int, fig: dict[str, object]) -> str:
    b = fig["bytes_per_event"]
    r = fig["records_per_event"]
    assert isinstance(b, dict) and isinstance(r, dict)
    return (f"{label:<10} {n:>6} tasks  {fig['events']:>6} events  bytes/event mean {b['mean']:>10,.0f}  "
            f"p50 {b['p50']:>9,.0f}  p99 {b['p99']:>10,.0f}  max {b['max']:>11,.0f}  records/event {r['mean']:.2f}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench state_bytes")
    ap.add_argument("--tasks", default="10,1000")
    ap.add_argument("--baseline", action="store_true", help="also measure one record per job (the old layout)")
    ap.add_argument("--lag", type=int, default=64, help="inputs the delivery acknowledgements lag behind")
    args = ap.parse_args(argv)
    tasks = [int(t) for t in args.tasks.split(",")]
    print("state bytes written per inbox event (key + value, to the table and so to RocksDB and the changelog),\n"
          "fan-out/fan-in job run to the end: submit, then claim, start, complete for every task", file=sys.stderr)
    figures: dict[str, object] = {}
    now = measure(tasks, False)
    for n, fig in now.items():
        print(_line("per-entity", n, fig))
    figures["per_entity"] = {str(n): f for n, f in now.items()}
    means = {n: f["bytes_per_event"]["mean"] for n, f in now.items()}  # type: ignore[index]
    lo, hi = min(tasks), max(tasks)
    ratio = means[hi] / means[lo]
    print(f"ratio of mean bytes/event, {hi} tasks / {lo} tasks: {ratio:.2f} (target: within 2x)")
    figures["ratio_large_to_small"] = ratio
    lagging = measure(tasks, False, args.lag)
    for n, fig in lagging.items():
        print(_line(f"lag {args.lag}", n, fig))
    figures[f"per_entity_deliveries_{args.lag}_inputs_behind"] = {str(n): f for n, f in lagging.items()}
    lag_means = {n: f["bytes_per_event"]["mean"] for n, f in lagging.items()}  # type: ignore[index]
    print(f"deliveries {args.lag} inputs behind: ratio {hi}/{lo} tasks {lag_means[hi] / lag_means[lo]:.2f}")
    figures["lagging_ratio_large_to_small"] = lag_means[hi] / lag_means[lo]
    if args.baseline:
        old = measure(tasks, True)
        for n, fig in old.items():
            print(_line("one-record", n, fig))
        figures["one_record"] = {str(n): f for n, f in old.items()}
        old_means = {n: f["bytes_per_event"]["mean"] for n, f in old.items()}  # type: ignore[index]
        print(f"one record per job: ratio {hi}/{lo} tasks {old_means[hi] / old_means[lo]:.2f}; per-entity writes "
              f"{old_means[hi] / means[hi]:.1f}x fewer bytes per event at {hi} tasks")
        figures["baseline_ratio_large_to_small"] = old_means[hi] / old_means[lo]
        inline = measure(tasks, False, args.lag, outbox_inline=True)
        for n, fig in inline.items():
            print(_line("lag inline", n, fig))
        figures[f"outbox_inline_deliveries_{args.lag}_inputs_behind"] = {str(n): f for n, f in inline.items()}
        inline_means = {n: f["bytes_per_event"]["mean"] for n, f in inline.items()}  # type: ignore[index]
        print(f"deliveries {args.lag} inputs behind, outbox in the job record: "
              f"{inline_means[hi] / lag_means[hi]:.1f}x the bytes per event at {hi} tasks")
    report("state_bytes", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
