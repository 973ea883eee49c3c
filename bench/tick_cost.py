"""CPU cost of one tick with 1,000 vs 100,000 registered cron jobs, the same 10 of them due.

Measured through the real shell (decode, due index, decide, encode, outbox) over an in-memory store, so
the figure is the scheduler's own CPU per tick without Kafka I/O. The baseline is what a tick costs if
it scans every registered job for due work (what the due index avoids), measured in the same run.
"""

from __future__ import annotations

import sys
import time

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ClaimTask, SubmitJob, TaskCompleted, TaskReady, TaskStarted, Tick
from ksched.streams.core import decide as core
from ksched.streams.jobstore import decode_state, is_job_key
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job

from .common import report, summary

T0 = 1_800_000_000_000  # a whole minute
DUE = 10


def registered(n: int) -> tuple[InboxShell, MemoryStore, int, int]:
    """`n` jobs in partition 0: DUE fire every minute, the rest yearly. Returns shell, store, next offset."""
    settings = Settings(prefix="bench", partitions=1)
    codec = default_codec()
    shell, store = InboxShell(settings, codec), MemoryStore()
    offset = 0
    for i in range(n):
        cron = "0 * * * * *" if i < DUE else "0 0 1 1 *"
        raw = codec.encode(SubmitJob(f"c{i}", job(f"job{i}", cron), T0))
        assert partition_for(f"job{i}", 1) == 0
        shell.process(store, 0, offset, None, raw)
        offset += 1
    return shell, store, offset, n


def time_ticks(shell: InboxShell, store: MemoryStore, offset: int, minutes: int) -> list[float]:
    """CPU per tick; between ticks (untimed) an executor claims, starts and completes what became ready."""
    codec = default_codec()
    costs = []
    for m in range(1, minutes + 1):
        now = T0 + m * 60_000
        raw = codec.encode(Tick(0, now))
        t = time.process_time()
        out = shell.process(store, 0, offset, None, raw)
        costs.append((time.process_time() - t) * 1000)
        offset += 1
        ready = [codec.decode(x.value) for x in out if x.topic == "bench.ready.normal"]
        assert len(ready) == DUE
        offset = _execute(shell, store, offset, ready, now)
    return costs


def _execute(shell: InboxShell, store: MemoryStore, offset: int, ready: list[TaskReady], now: int) -> int:
    codec = default_codec()
    for r in ready:
        claim = ClaimTask(f"{r.task_id}#1@ex", r.job_id, r.run_id, r.task_id, r.attempt, "ex", now)
        out = shell.process(store, 0, offset, None, codec.encode(claim))
        grant = next(codec.decode(x.value) for x in out if x.topic == "bench.control")
        started = TaskStarted(r.job_id, r.run_id, r.task_id, r.attempt, grant.fencing_token, "ex", now)
        done = TaskCompleted(r.job_id, r.run_id, r.task_id, r.attempt, grant.fencing_token, "ex", 0, now, now)
        shell.process(store, 0, offset + 1, None, codec.encode(started))
        shell.process(store, 0, offset + 2, None, codec.encode(done))
        offset += 3
    return offset


def scan_tick_cost(store: MemoryStore, minutes: int) -> list[float]:
    """Baseline: load every job and ask whether it is due, as a tick without an index would."""
    costs = []
    for m in range(1, minutes + 1):
        now = T0 + m * 60_000
        t = time.process_time()
        due = 0
        for key, raw in store.items():
            if key.startswith(b"job") and is_job_key(key):
                _, state = decode_state(raw, store.get)
                wake = core.next_wakeup(state)
                due += wake is not None and wake <= now
        costs.append((time.process_time() - t) * 1000)
    return costs


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1_000, 100_000]
    figures: dict[str, object] = {"due_per_tick": DUE}
    for n in sizes:
        t = time.monotonic()
        shell, store, offset, _ = registered(n)
        print(f"registered {n} jobs in {time.monotonic() - t:.1f}s", file=sys.stderr)
        figures[f"tick_cpu_ms_{n}"] = summary(time_ticks(shell, store, offset, 20))
        figures[f"scan_baseline_cpu_ms_{n}"] = summary(scan_tick_cost(store, 3))
    lo, hi = sizes[0], sizes[-1]
    figures["tick_cost_ratio"] = figures[f"tick_cpu_ms_{hi}"]["p50"] / figures[f"tick_cpu_ms_{lo}"]["p50"]  # type: ignore[index]
    figures["scan_baseline_ratio"] = (figures[f"scan_baseline_cpu_ms_{hi}"]["p50"]  # type: ignore[index]
                                      / figures[f"scan_baseline_cpu_ms_{lo}"]["p50"])  # type: ignore[index]
    report("tick_cost", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
