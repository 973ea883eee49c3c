"""kill -9 executors, several times, while 200 tasks run; start new ones. Every task ends, exactly one
success is recorded per task, and no attempt ever runs twice (the ledger each run writes proves it)."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.schemas.events import AttemptEnded
from tests.support import Cluster, Proc, eventually, settings_for, write_job, write_script

pytestmark = [pytest.mark.broker, pytest.mark.slow]
TASKS = 200


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path / "home", lease_s=3.0, heartbeat_s=0.5, session_timeout_s=6.0))
    yield c
    c.stop()


def test_killing_executors_never_runs_an_attempt_twice_and_every_task_succeeds_once(cluster: Cluster,
                                                                                   tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    write_script(tmp_path / "work.sh", f"""
echo "START $KSCHED_TASK_ID $KSCHED_ATTEMPT $KSCHED_FENCING_TOKEN $(date +%s%N)" >> {ledger}
sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 9 + 1 ))
echo "END $KSCHED_TASK_ID $KSCHED_ATTEMPT $KSCHED_FENCING_TOKEN $(date +%s%N)" >> {ledger}
""")
    cluster.streams("w1")
    executors: list[Proc] = [cluster.executor(slots=8), cluster.executor(slots=8)]
    for i in range(TASKS):
        write_job(tmp_path, f"j{i}", f"job: chaos-{i:03d}\nbinary: work.sh\n"
                                     "retries: {max_attempts: 6, backoff: 500ms}\n")
    # Submitting through the CLI is slow for 200 files; produce the same commands from one process.
    _submit_all(cluster, tmp_path)

    rng = random.Random(7)
    for _ in range(3):
        eventually(lambda: ledger.exists() and len(ledger.read_text().splitlines()) > 20, 120, what="tasks running")
        time.sleep(rng.uniform(1.0, 2.5))
        # The victim is one running an attempt right now (its script asleep): an executor that only waits for
        # grants (the streams worker may lag) loses no attempt when killed, and such kills would prove nothing.
        busy = eventually(lambda: [p for p in executors if p.alive() and p.runs("sleep")], 60, interval=0.05,
                          what="an executor running an attempt")
        victim = rng.choice(busy)
        victim.kill9()
        executors.append(cluster.executor(slots=8))

    def states() -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        latest = {view.run_id: view.state for _, view in cluster.records("runs") if hasattr(view, "run_id")}
        counts.update(latest.values())
        return counts

    eventually(lambda: states()["SUCCEEDED"] == TASKS, 240, interval=2, what="every task succeeds")
    # Every report written so far decided (a late second success among them would be in the log now), and
    # every run's latest view says SUCCEEDED: nothing is left to run, so the ledger is complete.
    cluster.drain_inbox()
    assert states() == {"SUCCEEDED": TASKS}

    # Exactly one success per task, as the scheduler recorded it.
    distinct: dict[str, set[str]] = collections.defaultdict(set)
    for _, e in cluster.records("events"):
        if isinstance(e, AttemptEnded) and e.outcome == "SUCCEEDED":
            distinct[e.task_id].add(e.event_id)
    assert len(distinct) == TASKS
    assert all(len(ids) == 1 for ids in distinct.values()), {t: ids for t, ids in distinct.items() if len(ids) > 1}

    # The ledger: no attempt started twice, and fencing tokens grow with attempts.
    starts: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    tokens: dict[str, dict[int, int]] = collections.defaultdict(dict)
    for line in ledger.read_text().splitlines():
        kind, task, attempt, token, _ = line.split()
        if kind == "START":
            starts[(task, attempt)].append(int(token))
            tokens[task][int(attempt)] = int(token)
    doubled = {k: v for k, v in starts.items() if len(v) > 1}
    assert not doubled, f"attempts that ran twice: {doubled}"
    for task, by_attempt in tokens.items():
        ordered = [by_attempt[a] for a in sorted(by_attempt)]
        assert ordered == sorted(set(ordered)), f"{task}: fencing tokens do not grow with attempts: {by_attempt}"
    retried = sum(1 for by_attempt in tokens.values() if len(by_attempt) > 1)
    print(f"\n{retried} tasks needed more than one attempt; {len(starts)} attempts ran")
    assert retried > 0, "the kills interrupted no attempt; the test proved nothing"


def _submit_all(cluster: Cluster, tmp_path: Path) -> None:
    import uuid

    from ksched import kafka
    from ksched.artifacts import open_store
    from ksched.cli.jobfile import load_job
    from ksched.schemas.codec import default_codec

    ref = open_store(cluster.settings.artifacts).put_file(tmp_path / "work.sh")
    codec = default_codec()
    producer = kafka.producer(cluster.settings)
    from ksched.schemas.events import SubmitJob

    for i in range(TASKS):
        jf = load_job(tmp_path / f"j{i}.yaml")
        spec = jf.with_artifacts({"main": ref})
        producer.produce(cluster.settings.topic("inbox"), key=spec.job_id.encode(),
                         value=codec.encode(SubmitJob(uuid.uuid4().hex, spec, int(time.time() * 1000))))
    producer.flush(30)
