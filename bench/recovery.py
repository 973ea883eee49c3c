"""Recovery: a streams worker killed -9 with N jobs registered, and what that does to firing.

Registers N daily cron jobs (default 100,000; through the inbox in bulk records of `--batch` submissions, 200;
`--batch 0`: a record per job) and 10 per-second
jobs, lets them fire for a while, then kills a worker with kill -9, twice over:

- `lone`: the only worker, restarted at once under the same name (its local state not shut down cleanly);
- `pair`: one of two workers (the survivor takes over its partitions);
- `register`, `register-pair` (only when named): one worker, or two, the registration alone, no firing and
  no kill.

Prints per case: the firing pause (the longest gap between two process starts of the per-second jobs around
the kill), runs that started more than 1 s late, occurrences lost (due in the window, neither started nor
recorded missed), occurrences recorded missed, the time from the kill to the first tick a worker wrote
after it, and the workers' RSS before the kill and at the end. Also the registration rate and the RSS per
registered job.

    python -m bench.recovery [--jobs 100000] [--cases lone,pair|register|register-pair] [--steady 20]
                             [--after 60] [--batch 200]

With `--steady 1800` it is also the 30-minute memory run: the RSS of the worker every minute of firing.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ksched import kafka
from ksched.artifacts import open_store
from ksched.bulk import bulk_records
from ksched.config import Settings
from ksched.reader import group_progress
from ksched.schemas.codec import default_codec
from ksched.schemas.events import JobSpec, OccurrenceMissed, OccurrenceSkipped, Schedule, SubmitJob, TaskSpec, Tick
from ksched.topics import MAX_RECORD_BYTES, app_id
from tests.support import Cluster, Proc, write_script

from .common import broker, report, start_of, summary, timestamped

PER_SECOND = 10


def rss_mib(proc: Proc) -> float:
    try:
        for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def register(s: Settings, cluster: Cluster, jobs: int, ref: object, batch: int) -> float:
    """Produce the submissions (in bulk records of `batch` jobs, or one record per job if 0) and wait until the
    workers decided all of them; returns jobs/s."""
    codec = default_codec()
    p = kafka.producer(s, **{"linger.ms": 20, "batch.num.messages": 10000,
                             "message.max.bytes": MAX_RECORD_BYTES + 65536})
    task = TaskSpec("main", ref)  # type: ignore[arg-type]
    t0 = time.monotonic()
    now = int(time.time() * 1000)
    cmds = [SubmitJob(f"c{i}", JobSpec(f"daily{i:06d}", [task],
                                       Schedule(cron=f"{i % 60} {i // 60 % 60} {i // 3600 % 24} * * *")), now)
            for i in range(jobs)]
    cmds += [SubmitJob(f"s{i}", JobSpec(f"sec{i}", [task], Schedule(cron="* * * * * *", misfire="skip",
                                                                     misfire_grace_ms=1000)), now)
             for i in range(PER_SECOND)]
    if batch > 0:
        for n, r in enumerate(bulk_records(cmds, s.partitions, codec.encode, max_jobs=batch)):
            p.produce(s.topic("inbox"), key=r.key, value=r.value, partition=r.partition)
            if n % 50 == 0:
                p.poll(0)
    else:
        for n, cmd in enumerate(cmds):
            p.produce(s.topic("inbox"), key=cmd.job.job_id.encode(), value=codec.encode(cmd))
            if n % 2000 == 0:
                p.poll(0)
    p.flush(120)
    ends = {q: end for q, (_, end) in group_progress(s, s.topic("inbox"), app_id(s)).items()}
    while True:
        done = group_progress(s, s.topic("inbox"), app_id(s))
        behind = sum(max(0, end - done.get(q, (0, 0))[0]) for q, end in ends.items())
        if behind == 0:
            break
        print(f"  registering: {behind} inbox records to go", file=sys.stderr, flush=True)
        time.sleep(5)
    return (jobs + PER_SECOND) / (time.monotonic() - t0)


def judge(s: Settings, kill_ms: int, end_ms: int) -> dict[str, object]:
    """Firing of the per-second jobs from 10 s before the kill to `end_ms`."""
    lo = kill_ms - 10_000
    starts: dict[str, list[tuple[int, int]]] = {}
    seen: set[tuple[str, int]] = set()  # an attempt's start can be in its start report and its end report
    for _, e in timestamped(s, s.topic("inbox"), s.partitions):
        at = start_of(e)
        if at is not None and e.job_id.startswith("sec") and (e.task_id, e.attempt) not in seen:
            seen.add((e.task_id, e.attempt))
            instant = _instant(e.run_id)
            if lo <= instant <= end_ms:
                starts.setdefault(e.job_id, []).append((instant, at))
    missed: dict[str, set[int]] = {}
    skipped: dict[str, set[int]] = {}
    first_tick_after = None
    for _, e in timestamped(s, s.topic("events"), s.partitions):
        if isinstance(e, OccurrenceMissed) and e.job_id.startswith("sec") and lo <= e.scheduled_for_ms <= end_ms:
            missed.setdefault(e.job_id, set()).add(e.scheduled_for_ms)
        if isinstance(e, OccurrenceSkipped) and e.job_id.startswith("sec") and lo <= e.scheduled_for_ms <= end_ms:
            skipped.setdefault(e.job_id, set()).add(e.scheduled_for_ms)
    for ts, e in timestamped(s, s.topic("inbox"), s.partitions):
        if isinstance(e, Tick) and ts > kill_ms and (first_tick_after is None or ts < first_tick_after):
            first_tick_after = ts
    pause = 0
    resumed = 0  # kill -> the first start of every per-second job after it
    late, lost = [], 0
    for i in range(PER_SECOND):
        job = f"sec{i}"
        ran = sorted(starts.get(job, []), key=lambda x: x[1])
        # Firing that never resumed within the window is a gap too: up to the window's end.
        pause = max([pause, *(b - a for a, b in itertools.pairwise([lo, *(st for _, st in ran), end_ms]))])
        resumed = max(resumed, min((st for _, st in ran if st >= kill_ms), default=end_ms) - kill_ms)
        late += [float(st - inst) for inst, st in ran if st - inst > 1000]
        seen = {inst for inst, _ in ran} | missed.get(job, set()) | skipped.get(job, set())
        lost += sum(1 for t in range(lo // 1000 * 1000 + 1000, end_ms - 5000, 1000) if t not in seen)
    return {"firing_pause_s": pause / 1000, "resumed_after_kill_s": resumed / 1000,
            "late_runs": len(late), "late_ms": summary(late),
            "lost_occurrences": lost, "missed_occurrences": sum(len(v) for v in missed.values()),
            "skipped_occurrences": sum(len(v) for v in skipped.values()),
            "kill_to_first_tick_s": None if first_tick_after is None else (first_tick_after - kill_ms) / 1000}


def _instant(run_id: str) -> int:
    from ksched.instants import parse_instant

    return parse_instant(run_id.split("@", 1)[1].removesuffix("-catchup"))


def case(name: str, jobs: int, steady_s: float, after_s: float, settle_s: float,
         keep_logs: Path | None = None, batch: int = 200) -> dict[str, object]:
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ksched-recovery-") as tmp:
        s = Settings(bootstrap_servers=bootstrap, prefix=f"rec{uuid.uuid4().hex[:6]}", home=Path(tmp),
                     partitions=6, ready_partitions=6, control_partitions=3)
        cluster = Cluster(s)
        ref = open_store(s.artifacts).put_file(write_script(Path(tmp) / "noop.sh", "exit 0\n"))
        workers = [cluster.streams("w1")] + ([cluster.streams("w2")] if name in ("pair", "register-pair") else [])
        cluster.executor(slots=64)
        time.sleep(10)  # the workers up and idle: their RSS before any job
        rss_empty = rss_mib(workers[0])
        rate = register(s, cluster, jobs, ref, batch)
        if name.startswith("register"):  # registration only (by one worker, or two): no firing, no kill
            rss = rss_mib(workers[0])
            cluster.stop()
            return {"registered_jobs": jobs, "bulk_batch": batch, "registration_jobs_per_s": round(rate),
                    "rss_mib_empty": rss_empty, "rss_mib_registered": rss,
                    "rss_kib_per_job": round((rss - rss_empty) * 1024 / max(1, jobs), 2)}
        steady = sample_rss(workers[0], steady_s)
        rss_before = [rss_mib(w) for w in workers]
        progress = group_progress(s, s.topic("inbox"), app_id(s))
        behind = sum(max(0, end - done) for done, end in progress.values())
        print(f"  {name}: kill -9 of worker w1 ({rss_before[0]:.0f} MiB)", file=sys.stderr, flush=True)
        workers[0].kill9()
        kill_ms = int(time.time() * 1000)
        if name == "lone":
            workers[0] = cluster.streams("w1")
        time.sleep(after_s)
        end_ms = int(time.time() * 1000)
        rss_after = [rss_mib(w) for w in workers if w.alive()]
        # An occurrence of the window may still be on its way at its end (offered, its claim abandoned and
        # offered again, then started or refused as too late): judged once the installation had time to settle.
        time.sleep(settle_s)
        figures = judge(s, kill_ms, end_ms)
        cluster.stop()
        if keep_logs is not None:  # the workers' and executor's logs, for the timeline of a restart
            dest = keep_logs / name
            dest.mkdir(parents=True, exist_ok=True)
            for log_file in Path(tmp).glob("*.log"):
                shutil.copy(log_file, dest / log_file.name)
        return {"registered_jobs": jobs, "registration_jobs_per_s": round(rate), "rss_mib_empty": rss_empty,
                "rss_mib_before": rss_before,
                "rss_kib_per_job": round((rss_before[0] - rss_empty) * 1024 / max(1, jobs), 2),
                "rss_mib_at_end": rss_after, "rss_mib_steady": steady, "inbox_behind_at_kill": behind,
                **figures}


def sample_rss(proc: Proc, steady_s: float, every_s: float = 60.0) -> dict[str, object]:
    """Worker w1's RSS while the jobs fire before the kill, every minute; growth from the first sample (taken
    a minute in, once the hot caches filled) to the last."""
    samples: list[float] = []
    t_end = time.monotonic() + steady_s
    while (left := t_end - time.monotonic()) > 0:
        time.sleep(min(every_s, left))
        samples.append(round(rss_mib(proc), 1))
        if len(samples) % 5 == 0:
            print(f"  steady firing: RSS {samples[-1]} MiB after {len(samples) * every_s:.0f} s", file=sys.stderr,
                  flush=True)
    growth = (samples[-1] - samples[0]) / samples[0] * 100 if len(samples) >= 2 else None
    return {"every_s": every_s, "samples": samples, "growth_pct": None if growth is None else round(growth, 2),
            "max": max(samples, default=None), "min": min(samples, default=None)}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--cases", default="lone,pair")
    ap.add_argument("--steady", type=float, default=20.0, help="seconds of firing before the kill")
    ap.add_argument("--after", type=float, default=60.0, help="seconds watched after the kill")
    ap.add_argument("--settle", type=float, default=45.0,
                    help="seconds waited after the window before judging it (an abandoned claim is offered again "
                         "after 30 s)")
    ap.add_argument("--keep-logs", type=Path, help="copy the processes' logs of each case to this directory")
    ap.add_argument("--batch", type=int, default=200,
                    help="submissions per bulk inbox record (SubmitJobs); 0: one SubmitJob record per job")
    args = ap.parse_args(argv)
    out = {c: case(c, args.jobs, args.steady, args.after, args.settle, args.keep_logs, args.batch)
           for c in args.cases.split(",")}
    report("recovery", {"definitions": {
        "firing_pause_s": "longest gap between two process starts of one per-second job (or a window edge and "
                          "a start), 10 s before the kill to the end of the window",
        "late_runs": "per-second runs that started more than 1 s after their instant",
        "lost_occurrences": "per-second instants in the window neither started nor recorded missed or skipped, "
                            "judged --settle seconds after the window",
        "skipped_occurrences": "per-second instants recorded skipped (overlap: forbid, the previous run still active)",
        "resumed_after_kill_s": "from the kill until every per-second job had started a process again (the "
                                "latest of their first starts after the kill)",
        "inbox_behind_at_kill": "inbox records the workers had not yet committed when w1 was killed (more than a "
                                "few hundred: the installation was still working off the registration, so the "
                                "figures measure that as well as the takeover; lengthen --steady)",
        "registration_jobs_per_s": "jobs registered / seconds from the first submission produced until the "
                                   "workers had committed every inbox record",
        "kill_to_first_tick_s": "from the kill to the first tick a worker produced after it",
        "rss_mib_steady": "worker w1's RSS every minute of firing before the kill (--steady 1800: 30 minutes); "
                          "growth_pct from the first sample to the last",
        "rss_kib_per_job": "(worker w1's RSS before the kill - its RSS before any job) / registered jobs; in the "
                           "pair case w1 holds about half the jobs",
    }, **out})


if __name__ == "__main__":
    main(sys.argv[1:])
