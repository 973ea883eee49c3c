"""A mixed load for fault tests and the checker that judges what survived: per-second cron jobs, a DAG job on a
three-second schedule whose middle task fails its first attempt, and a stream of one-off submissions, every run
appending to a ledger with KSCHED_TASK_ID, KSCHED_ATTEMPT and
KSCHED_FENCING_TOKEN; after the fault, the history and the ledger must show nothing lost and nothing doubled."""

from __future__ import annotations

import collections
import itertools
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksched import kafka
from ksched.artifacts import open_store
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    JobAccepted,
    JobSpec,
    OccurrenceMissed,
    OccurrenceSkipped,
    RetryPolicy,
    RunTriggered,
    SubmitJob,
    TaskSpec,
)
from tests.support import REPO, Cluster, eventually, write_job, write_script

#: Figures of every fault test, printed at the end of the session (conftest's terminal summary).
FIGURES: list[str] = []

LEDGER_SCRIPT = """echo "START $KSCHED_TASK_ID $KSCHED_ATTEMPT $KSCHED_FENCING_TOKEN $(date +%s%3N)" >> {ledger}
sleep 0.2
echo "END $KSCHED_TASK_ID $KSCHED_ATTEMPT $KSCHED_FENCING_TOKEN $(date +%s%3N)" >> {ledger}
"""
FLAKY_SCRIPT = """[ "$KSCHED_ATTEMPT" = 1 ] && {{ echo "FAIL $KSCHED_TASK_ID $KSCHED_ATTEMPT" >&2; exit 3; }}
exec {work}
"""
RETRIES = "retries: {max_attempts: 5, backoff: 1s}"


def dag_job(name: str) -> str:
    return (f"job: {name}\nschedule: '*/3 * * * * *'\nmisfire: all\ncatchup_window: 1h\nmax_active_runs: 0\n"
            "tasks:\n"
            f"  extract: {{binary: work.sh, {RETRIES}}}\n"
            f"  flaky: {{binary: flaky.sh, depends_on: [extract], {RETRIES}}}\n"
            f"  side: {{binary: work.sh, depends_on: [extract], {RETRIES}}}\n"
            f"  load: {{binary: work.sh, depends_on: [flaky, side], {RETRIES}}}\n")


@dataclass
class Load:
    cluster: Cluster
    directory: Path
    crons: tuple[str, ...] = ("sec-a", "sec-b")
    dags: tuple[str, ...] = ("dag-a",)
    submitted: list[str] = field(default_factory=list)  # one-off jobs whose submission the broker acknowledged
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def ledger(self) -> Path:
        return self.directory / "ledger"

    @property
    def scheduled(self) -> dict[str, int]:
        """Every scheduled job and its period in ms."""
        return {**dict.fromkeys(self.crons, 1000), **dict.fromkeys(self.dags, 3000)}

    def start(self) -> None:
        script = write_script(self.directory / "work.sh", LEDGER_SCRIPT.format(ledger=self.ledger))
        write_script(self.directory / "flaky.sh", FLAKY_SCRIPT.format(work=script))
        for name in self.crons:
            write_job(self.directory, name, f"job: {name}\nschedule: '* * * * * *'\nbinary: work.sh\n"
                                            f"misfire: all\ncatchup_window: 1h\n{RETRIES}\n")
        for name in self.dags:
            write_job(self.directory, name, dag_job(name))
        for name in self.scheduled:
            r = self.cluster.ksched("submit", str(self.directory / f"{name}.yaml"), "--wait", "--timeout", "120")
            assert r.returncode == 0, r.stderr
        self._artifact = open_store(self.cluster.settings.artifacts).put_file(script)
        self._thread = threading.Thread(target=self._submit_one_offs, daemon=True)
        self._thread.start()
        for name in self.scheduled:
            eventually(lambda n=name: len(self.cluster.succeeded_runs(n)) >= 2, 120, what=f"{name} runs")

    def _submit_one_offs(self) -> None:
        """A one-off job every half second, produced to the commands topic as any client would."""
        codec = default_codec()
        producer = kafka.producer(self.cluster.settings, **{"message.timeout.ms": 60000})
        n = 0
        while not self._stop.is_set():
            n += 1
            job_id = f"once-{n}"
            spec = JobSpec(job_id, [TaskSpec("main", self._artifact, retry=RetryPolicy(max_attempts=5))])

            def done(err: Any, _msg: Any, j: str = job_id) -> None:
                if err is None:
                    self.submitted.append(j)
                else:
                    self.refused += 1

            producer.produce(self.cluster.settings.topic("commands"), codec.encode(SubmitJob(f"c-{job_id}", spec,
                             int(time.time() * 1000))), job_id.encode(), on_delivery=done)
            producer.poll(0)
            self._stop.wait(0.5)
        producer.flush(60)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)


@dataclass
class Verdict:
    operations: int
    lost: list[str]
    doubled: list[str]
    overlapping: list[str]
    longest_pause_ms: int


def _decisions(load: Load) -> tuple[dict[str, collections.Counter[int]], dict[str, set[int]], set[str]]:
    """Per scheduled job and instant, how many distinct RunTriggered; the instants recorded missed or skipped;
    the jobs accepted."""
    fired: dict[str, collections.Counter[int]] = {n: collections.Counter() for n in load.scheduled}
    missed: dict[str, set[int]] = {n: set() for n in load.scheduled}
    accepted: set[str] = set()
    seen: set[str] = set()
    for _, e in load.cluster.records("events"):
        if isinstance(e, RunTriggered) and e.job_id in fired and e.event_id not in seen:
            seen.add(e.event_id)
            fired[e.job_id][e.scheduled_for_ms] += 1
        elif isinstance(e, OccurrenceMissed | OccurrenceSkipped) and e.job_id in missed:
            missed[e.job_id].add(e.scheduled_for_ms)
        elif isinstance(e, JobAccepted):
            accepted.add(e.job_id)
    return fired, missed, accepted


def _ledger(load: Load) -> tuple[list[str], int]:
    """Tasks with two attempts running at once where the later had no higher fencing token (the earlier was
    not fenced), and the longest gap between two starts of the first cron job."""
    spans: dict[str, list[tuple[int, int, int | None]]] = collections.defaultdict(list)
    starts: dict[tuple[str, str], tuple[int, int]] = {}
    cron_starts = []
    for line in load.ledger.read_text().splitlines():
        kind, task, attempt, token, at = line.split()
        if kind == "START":
            starts[(task, attempt)] = (int(token), int(at))
            if task.startswith(load.crons[0] + "@"):
                cron_starts.append(int(at))
        else:
            tok, began = starts.pop((task, attempt), (int(token), int(at)))
            spans[task].append((tok, began, int(at)))
    for (task, _), (token, began) in starts.items():  # started, never ended: killed with its executor
        spans[task].append((token, began, None))
    overlapping = []
    for task, runs in spans.items():
        ordered = sorted(runs, key=lambda r: r[1])
        for a, b in itertools.pairwise(ordered):
            if (a[2] is None or b[1] < a[2]) and b[0] <= a[0]:
                overlapping.append(task)
    cron_starts.sort()
    pause = max((b - a for a, b in itertools.pairwise(cron_starts)), default=0)
    return overlapping, pause


def _successes(load: Load) -> collections.Counter[str]:
    won: collections.Counter[str] = collections.Counter()
    for j in [*load.scheduled, *load.submitted]:
        for run_tasks in load.cluster.status(j).tasks.values():
            for t in run_tasks.values():
                won[t.task_id] += sum(1 for a in t.attempts if a.outcome == "SUCCEEDED")
    return won


def _retried(load: Load) -> tuple[int, list[str]]:
    """DAG runs that succeeded, and those whose flaky task succeeded at its first attempt (none should: the
    first attempt fails, or is lost or handed back in a fault; either way another attempt ran). Runs still going
    (the crons fire on while the checker reads) are not judged here."""
    runs, unretried = 0, []
    for j in load.dags:
        status = load.cluster.status(j)
        for run_id, run_tasks in status.tasks.items():
            run = status.runs.get(run_id)
            if run is None or run.state != "SUCCEEDED":
                continue
            runs += 1
            flaky = run_tasks.get("flaky")
            if flaky is None or len(flaky.attempts) < 2:
                unretried.append(run_id)
    return runs, unretried


def _why(load: Load, stuck: list[str]) -> str:
    """The tasks and attempts of stuck runs, for the failure message."""
    out = []
    for entry in stuck:
        run_id = entry.split("=", 1)[0]
        st = load.cluster.status(run_id.split("@", 1)[0])
        for t in st.tasks.get(run_id, {}).values():
            out.append(f"{t.task_id} {t.state} " + ", ".join(
                f"#{a.attempt} {a.executor_id} {a.outcome} {a.reason} started={a.started_at_ms}" for a in t.attempts))
    return "; ".join(out)


def _unfinished(load: Load, horizon: int) -> list[str]:
    return [f"{r.run_id}={r.state}" for j in [*load.scheduled, *load.submitted]
            for r in load.cluster.status(j).ordered_runs()
            if r.scheduled_for_ms < horizon - 2000 and r.state != "SUCCEEDED"
            and not (r.state == "CANCELLED" and r.reason.startswith("missed: "))]  # not started past its grace


def check(load: Load, fault: str, faults: int) -> Verdict:
    """Wait until the history has settled, then judge it. Records the figures in FIGURES."""
    cluster = load.cluster
    load.stop()
    horizon = int(time.time() * 1000)
    for name in load.scheduled:  # every occurrence up to now decided, and every acknowledged one-off
        eventually(lambda n=name: max((r.scheduled_for_ms for r in cluster.status(n).ordered_runs()), default=0)
                   >= horizon, 180, what=f"{name} fires past the fault")
    cluster.drain_inbox(timeout=120)
    fired, missed, accepted = _decisions(load)
    lost = [f"{n}@{t}" for n, period in load.scheduled.items() for t in range(min(fired[n]), horizon - 2000, period)
            if fired[n][t] == 0 and t not in missed[n]]
    lost += [j for j in load.submitted if j not in accepted]
    doubled = [f"{n}@{t}" for n in load.scheduled for t, k in fired[n].items() if k > 1]
    deadline = time.monotonic() + 180
    while (stuck := _unfinished(load, horizon)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not stuck, f"runs not succeeded 180 s after the fault: {stuck[:5]}; " + _why(load, stuck[:3])
    doubled += [t for t, k in _successes(load).items() if k > 1]
    dag_runs, unretried = _retried(load)
    assert dag_runs and not unretried, f"{dag_runs} DAG runs; flaky tasks without a retry: {unretried[:5]}"
    overlapping, pause = _ledger(load)
    replay = subprocess.run([sys.executable, "-m", "ksched.cli.main", "replay"], env=cluster.env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
    occurrences = sum(sum(c.values()) for c in fired.values())
    FIGURES.append(f"{fault}: {occurrences + len(load.submitted)} operations ({occurrences} occurrences, "
                   f"{dag_runs} of them DAG runs each with a retried task, "
                   f"{len(load.submitted)} one-off submissions acknowledged, {load.refused} refused), {faults} "
                   f"faults injected, lost {len(lost)}, doubled {len(doubled)}, overlapping {len(overlapping)}, "
                   f"longest pause in firing {pause / 1000:.1f} s")
    return Verdict(occurrences + len(load.submitted), lost, doubled, overlapping, pause)
