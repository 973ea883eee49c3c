"""Shared helpers for benchmarks: percentiles, result files, a private installation on a broker."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_BROKER_PID: list[int] = []  # the benchmark's own broker, while it runs


def broker_pid() -> int | None:
    return _BROKER_PID[-1] if _BROKER_PID else None


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """CPU time (user + system) a process has used so far; with `children`, also its reaped children's."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time all cores have spent busy so far (user, nice, system, irq, softirq, steal; not idle or iowait):
    what the roles measured per process leave out (the kernel's threads, short-lived processes not yet reaped,
    this benchmark itself) is the difference."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def jit_cpu_seconds(pid: int | None) -> float:
    """CPU time a JVM's JIT compiler threads (C1, C2) have used so far: the broker's warm-up, not its work."""
    if pid is None:
        return float("nan")
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if not (task / "comm").read_text().startswith(("C1 CompilerThre", "C2 CompilerThre")):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


#: Kafka's sub-counts of another request type (counted once, under "Fetch").
_SUBCOUNTS = ("FetchConsumer", "FetchFollower")


def broker_requests(pid: int | None) -> dict[str, int] | None:
    """The broker's requests so far, by type (its JMX, read by `BrokerRequests.java` through the attach API), or
    None where that cannot be read (no broker of the bench's own, no JDK with jdk.attach)."""
    import shutil
    import subprocess

    java = shutil.which("java")
    if pid is None or java is None:
        return None
    try:
        out = subprocess.run([java, str(Path(__file__).with_name("BrokerRequests.java")), str(pid)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        counts = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return {k: int(v) for k, v in counts.items() if k not in _SUBCOUNTS}


def requests_per_task(before: dict[str, int] | None, after: dict[str, int] | None, tasks: int) -> dict[str, float]:
    """Broker requests per task by type between two `broker_requests` readings (types under 0.01 left out), and
    their total as "all"."""
    if before is None or after is None or tasks <= 0:
        return {}
    per = {k: (n - before.get(k, 0)) / tasks for k, n in after.items()}
    out = {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    out["all"] = round(sum(per.values()), 2)
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": max(values, default=0.0),
            "mean": statistics.fmean(values) if values else float("nan")}


def report(name: str, figures: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    figures = {"bench": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


@contextmanager
def broker() -> Iterator[str]:
    """KSCHED_BOOTSTRAP_SERVERS if set, else a fresh local broker for the benchmark."""
    if os.environ.get("KSCHED_BOOTSTRAP_SERVERS"):
        yield os.environ["KSCHED_BOOTSTRAP_SERVERS"]
        return
    import tempfile

    from ksched import devbroker

    with tempfile.TemporaryDirectory(prefix="ksched-bench-") as d:
        info = devbroker.up(Path(d) / "broker", heap_mb=1024)
        if info.pid is not None:
            _BROKER_PID.append(info.pid)
        try:
            yield info.bootstrap
        finally:
            if info.pid is not None:
                _BROKER_PID.remove(info.pid)
            devbroker.down(Path(d) / "broker")


def start_of(e: Any) -> int | None:
    """When an attempt's process started, from the report that says so: its start report, or (for an attempt that
    ended before its start was reported: the executor folds the two) its end report."""
    from ksched.schemas.events import TaskCompleted, TaskFailed, TaskStarted

    if isinstance(e, TaskStarted | TaskCompleted | TaskFailed):
        return e.started_at_ms
    return None


#: The reports that can carry an attempt's start (see `start_of`).
START_SCHEMAS = ("ksched.TaskStarted", "ksched.TaskCompleted", "ksched.TaskFailed")


class Follower:
    """Follows a topic with one consumer from its start, decoding only records of one schema."""

    def __init__(self, settings: Any, schema: str | tuple[str, ...], topic: str = "inbox") -> None:
        from ksched import kafka
        from ksched.schemas.codec import default_codec

        self.codec = default_codec()
        self.prefixes = {self.codec.prefix(x) for x in ((schema,) if isinstance(schema, str) else schema)}
        # Lazy fetches (up to 1 MiB or 500 ms): the figures come from the records' own times, not from when this
        # consumer sees them, and the bench should not load the broker it measures (20 ms fetches were 0.4
        # broker requests per task in the throughput bench).
        self.consumer = kafka.consumer(settings, group=f"{settings.prefix}-bench-{time.time_ns()}",
                                       **{"fetch.min.bytes": 1 << 20, "fetch.wait.max.ms": 500})
        self.consumer.subscribe([settings.topic(topic)])

    def poll(self, seconds: float) -> list[Any]:
        return [e for _, e in self.poll_timestamped(seconds)]

    def poll_timestamped(self, seconds: float) -> list[tuple[int, Any]]:
        """The records of the schema that came within `seconds`, each with its producer's timestamp (when the
        producer, for a decision the streams worker, produced it)."""
        out = []
        deadline = time.time() + seconds
        while time.time() < deadline:
            for m in self.consumer.consume(1000, timeout=0.2):
                value = m.value()
                if m.error() is None and value is not None and value[:10] in self.prefixes:
                    out.append((m.timestamp()[1], self.codec.decode(value)))
        return out


def timestamped(settings: Any, topic: str, partitions: int) -> list[tuple[int, Any]]:
    """Every decodable record of a topic with its producer timestamp (for splitting latencies into steps)."""
    from ksched.reader import read_partition
    from ksched.schemas.codec import default_codec

    codec = default_codec()
    out = []
    for p in range(partitions):
        for m in read_partition(settings, topic, p, timeout_s=120):
            if m.value() is not None:
                try:
                    out.append((m.timestamp()[1], codec.decode(m.value())))
                except Exception:  # ticks of other runs, dead letters: not ours to count
                    continue
    return unbatched(out)


def early_args(early_from: int | None) -> list[str]:
    """The executors' `--early-from`, if a bench was given one."""
    return [] if early_from is None else ["--early-from", str(early_from)]


def unbatched(records: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Timestamped records with each batch of claims (`ClaimTasks`) as its claims, each at the batch's time."""
    from ksched.schemas.events import ClaimTasks

    return [(ts, one) for ts, e in records for one in (e.claims if isinstance(e, ClaimTasks) else [e])]


def submit_jobs(p: Any, s: Any, ref: Any, prefix: str, n: int, rate: float) -> float:
    """Submit `n` one-task jobs named `prefix`NNNNNN at `rate` a second through producer `p`; when the first
    went."""
    from ksched.schemas.codec import default_codec
    from ksched.schemas.events import JobSpec, SubmitJob, TaskSpec

    codec = default_codec()
    start = time.time()
    for i in range(n):
        due = start + i / rate
        if (delay := due - time.time()) > 0:
            time.sleep(delay)
        spec = JobSpec(f"{prefix}{i:06d}", [TaskSpec("main", ref)])
        p.produce(s.topic("inbox"), key=spec.job_id.encode(),
                  value=codec.encode(SubmitJob(f"c{prefix}{i}", spec, int(time.time() * 1000))))
        p.poll(0)
    p.flush(60)
    return start


def settle(watch: Follower, prefix: str, n: int, done: dict[str, int]) -> None:
    """Wait (up to 10 minutes) until `n` tasks of jobs named `prefix`... are settled, recording when each was."""
    deadline = time.time() + 600
    while time.time() < deadline:
        # When the worker produced the decision: a settlement's own `at_ms` is the decision's clock, the
        # executor's report time for a completion, seconds earlier than the decision when the worker lags.
        done.update({e.task_id: ts for ts, e in watch.poll_timestamped(3.0) if e.task_id.startswith(prefix)})
        print(f"  {len(done)}/{n} settled", file=sys.stderr)
        if len(done) >= n:
            return


def warm_up_broker(s: Any, ref: Any, n: int, rate: float, p: Any, watch: Follower) -> None:
    """Run `n` one-task jobs (named wu...) through the installation, unmeasured. The bench's broker is a JVM it
    started: its JIT compiler took half of the broker's CPU in a throughput run measured at once (1.64 of 3.36 ms
    per task), still 1.54 after 3,000 tasks, 0.41 after 12,000. A broker in service has long been compiled."""
    print(f"  warm-up: {n} tasks, not measured", file=sys.stderr)
    submit_jobs(p, s, ref, "wu", n, rate)
    settle(watch, "wu", n, {})
