"""Executors against the real broker: artifacts on a real S3-compatible server, a timeout that kills a whole
process tree, promotion to a higher level after a timeout, high priority served first, and bad artifacts."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from ksched import kafka
from ksched.artifacts import open_store
from ksched.reader import group_progress, read_partition
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ArtifactRef, ClaimTask, JobSpec, SubmitJob, TaskReady, TaskSpec, Tick
from ksched.streams.metrics import queue_depths
from tests.s3server import make_bucket, s3_env, s3_server
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def s3(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for k, v in s3_env().items():
        os.environ.setdefault(k, v)
    with s3_server() as endpoint:
        bucket = f"ksched-{uuid.uuid4().hex[:8]}"
        make_bucket(endpoint, bucket)
        c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("s3"), artifact_url=f"s3://{bucket}/art",
                                 s3_endpoint_url=endpoint))
        c.streams("w1")
        c.executor(slots=4)
        yield c
        c.stop()


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("exec")))
    c.streams("w1")
    yield c
    c.stop()


def submit(cluster: Cluster, path: Path) -> None:
    r = cluster.ksched("submit", str(path), "--wait", "--timeout", "90")
    assert r.returncode == 0, r.stderr


def task(cluster: Cluster, job: str):  # type: ignore[no-untyped-def]
    """The task of the one-off `job`'s run (None before there is one). A second run is a failure."""
    st = cluster.status(job)
    assert len(st.tasks) <= 1, f"{job} has more than one run: {sorted(st.tasks)}"
    return next(iter(next(iter(st.tasks.values())).values())) if st.tasks else None


def settled_task(cluster: Cluster, job: str):  # type: ignore[no-untyped-def]
    """`task`, once the worker has decided every report and tick written so far: exact attempt lists hold."""
    cluster.drain_inbox()
    return task(cluster, job)


def test_binaries_and_logs_live_in_s3_and_the_executor_verifies_and_runs_them(s3: Cluster, tmp_path: Path) -> None:
    big = tmp_path / "big.sh"
    big.write_bytes(b"#!/bin/sh\necho big binary ran\nexit 0\n" + b"#" * (3 * 1024 * 1024))
    big.chmod(0o755)
    submit(s3, write_job(tmp_path, "s3job", "job: s3job\nbinary: big.sh\n"))
    run_id = eventually(lambda: s3.succeeded_runs("s3job"), 90, what="the S3-hosted job runs")[0]
    assert "big binary ran" in s3.ksched("logs", run_id).stdout
    store = open_store(s3.settings.artifacts, s3.settings.s3_endpoint_url)
    assert store.url.startswith("s3://")
    t = task(s3, "s3job")
    assert t is not None and store.read_log(t.attempts[0].log_ref).startswith(b"big binary ran")


def test_a_timeout_kills_the_whole_process_tree(cluster: Cluster, tmp_path: Path) -> None:
    cluster.executor(slots=4)
    pidfile = tmp_path / "grandchild.pid"
    write_script(tmp_path / "tree.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    submit(cluster, write_job(tmp_path, "tree", "job: tree\nbinary: tree.sh\ntimeout: 1s\n"))
    eventually(lambda: (t := task(cluster, "tree")) is not None and t.state == "FAILED", 60, what="timed out")
    t = task(cluster, "tree")
    assert t is not None and "TIMEOUT" in t.attempts[0].reason
    grandchild = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(grandchild, 0)
            return Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            return True
    eventually(gone, 20, what="the grandchild is killed too")


def test_a_timed_out_task_moves_up_a_level_with_a_longer_timeout(cluster: Cluster, tmp_path: Path) -> None:
    write_script(tmp_path / "slowish.sh", "sleep 2\necho done\n")
    submit(cluster, write_job(tmp_path, "levels", """
job: levels
binary: slowish.sh
priority: low
timeout: 1s
retries: {max_attempts: 3, backoff: 100ms}
levels: [{priority: normal, timeout: 10s}]
"""))
    eventually(lambda: cluster.succeeded_runs("levels"), 60, what="it succeeds on the second level")
    t = settled_task(cluster, "levels")
    assert t is not None and [a.outcome for a in t.attempts] == ["TIMED_OUT", "SUCCEEDED"]
    readies = [e for k, e in cluster.records("events") if k == b"levels" and isinstance(e, TaskReady)]
    assert [(r.attempt, r.priority, r.timeout_ms) for r in readies] == [(1, "low", 1000), (2, "normal", 10_000)]


@pytest.fixture
def lone(bootstrap: str, tmp_path: Path) -> Iterator[Cluster]:
    """A streams worker and, until the test starts one, no executor."""
    c = Cluster(settings_for(bootstrap, tmp_path / "home"))
    c.streams("w1")
    yield c
    c.stop()


def test_high_priority_is_served_before_normal_and_low(lone: Cluster, tmp_path: Path) -> None:
    cluster = lone
    ledger = tmp_path / "order"
    write_script(tmp_path / "mark.sh", f'echo "$1" >> {ledger}\nsleep 0.3\n')
    ref = open_store(cluster.settings.artifacts).put_file(tmp_path / "mark.sh")
    codec = default_codec()
    producer = kafka.producer(cluster.settings)

    def submit_raw(name: str, priority: str) -> None:
        spec = JobSpec(name, [TaskSpec("main", ref, args=[name], priority=priority)])
        producer.produce(cluster.settings.topic("inbox"), key=name.encode(),
                         value=codec.encode(SubmitJob(uuid.uuid4().hex, spec, int(time.time() * 1000))))

    # Everything is ready before the only executor of this test starts, so it chooses among all of it.
    for i in range(4):
        submit_raw(f"prio-low-{i}", "low")
        submit_raw(f"prio-normal-{i}", "normal")
    submit_raw("prio-high-0", "high")
    producer.flush(10)
    eventually(lambda: len([e for _, e in cluster.records("ready.low")]) >= 4
               and len([e for _, e in cluster.records("ready.high")]) >= 1, 60, what="all ready")
    # No prefetch: with claims ahead of free slots, two claimed together may be granted in either order.
    cluster.executor(1, "prio-ex", "--prefetch", "0")
    eventually(lambda: ledger.exists() and len(ledger.read_text().split()) >= 9, 120, what="all ran")
    cluster.drain_inbox()
    order = ledger.read_text().split()
    assert sorted(order) == sorted([*(f"prio-{p}-{i}" for p in ("low", "normal") for i in range(4)), "prio-high-0"])
    rank = {"high": 0, "normal": 1, "low": 2}
    levels = [rank[n.split("-")[1]] for n in order]
    assert levels == sorted(levels), order


@pytest.fixture
def picky(bootstrap: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path / "home"))
    c.streams("w1")
    c.executor(2, "picky", "--max-artifact-bytes", "100000")
    yield c
    c.stop()


def test_bad_artifacts_fail_the_task_with_a_clear_reason_and_the_executor_keeps_going(
        picky: Cluster, tmp_path: Path) -> None:
    store = open_store(picky.settings.artifacts)
    good = store.put_file(write_script(tmp_path / "fine.sh", "exit 0\n"))
    tampered = store.put_file(write_script(tmp_path / "tamper.sh", "echo original\n"))
    store._path(tampered.digest).write_bytes(b"#!/bin/sh\necho evil\n")  # type: ignore[attr-defined]
    big = store.put_file(write_script(tmp_path / "huge.sh", "exit 0\n" + "#" * 600_000))
    (tmp_path / "notes.txt").write_text("not a program\n")
    text = store.put_file(tmp_path / "notes.txt")
    missing = ArtifactRef("sha256:" + "7" * 64, "ghost.sh", 10)
    codec = default_codec()
    producer = kafka.producer(picky.settings)
    cases = {"bad-missing": missing, "bad-tampered": tampered, "bad-huge": big, "bad-text": text,
             "bad-fine": good}
    for name, ref in cases.items():
        spec = JobSpec(name, [TaskSpec("main", ref)])
        producer.produce(picky.settings.topic("inbox"), key=name.encode(),
                         value=codec.encode(SubmitJob(uuid.uuid4().hex, spec, int(time.time() * 1000))))
    producer.flush(10)
    eventually(lambda: all((t := task(picky, n)) is not None and t.state in ("FAILED", "SUCCEEDED")
                           for n in cases), 90, what="all settled")
    picky.drain_inbox()
    reasons = {n: task(picky, n).attempts[0].reason for n in cases}
    assert "ARTIFACT_MISSING" in reasons["bad-missing"]
    assert "DIGEST_MISMATCH" in reasons["bad-tampered"]
    assert "ARTIFACT_TOO_LARGE" in reasons["bad-huge"]
    assert "NOT_EXECUTABLE" in reasons["bad-text"]
    assert task(picky, "bad-fine").state == "SUCCEEDED"  # the executor kept going
    assert all(task(picky, n).attempt == 1 and len(task(picky, n).attempts) == 1 for n in cases)  # not retried


def test_a_task_labelled_with_a_pool_runs_only_on_that_pools_executors(lone: Cluster, tmp_path: Path) -> None:
    """And until that pool has an executor, the task waits, counted in that pool's queue depth."""
    cluster = lone
    cluster.executor(2, "small-ex")
    write_script(tmp_path / "where.sh", "exit 0\n")
    submit(cluster, write_job(tmp_path, "small", "job: on-small\nbinary: where.sh\n"))
    submit(cluster, write_job(tmp_path, "big", "job: on-big\nbinary: where.sh\nlabels: {pool: big}\n"))
    eventually(lambda: cluster.succeeded_runs("on-small"), 60, what="on-small ran")
    depths = eventually(lambda: (d := queue_depths(cluster.settings)).get(("big", "normal")) == 1 and d, 60,
                        what="the pool's task counted as waiting")
    assert depths[("", "normal")] == 0 and depths[("big", "high")] == 0
    cluster.executor(2, "big-ex", "--pool", "big")
    for job in ("on-small", "on-big"):
        eventually(lambda j=job: cluster.succeeded_runs(j), 60, what=f"{job} ran")
    assert task(cluster, "on-small").attempts[0].executor_id == "small-ex"
    assert task(cluster, "on-big").attempts[0].executor_id == "big-ex"
    assert any(isinstance(e, TaskReady) for _, e in cluster.records("ready.big.normal"))


def test_a_stopping_executor_hands_its_attempts_back_and_another_runs_them(bootstrap: str, tmp_path: Path) -> None:
    """SIGTERM (a rolling restart): a staged attempt is released without using a retry, a running one is lost and
    retried; neither run is cancelled, and both succeed on the executor that takes over."""
    cluster = Cluster(settings_for(bootstrap, tmp_path / "home", lookahead_s=40.0))
    cluster.streams("w1")
    try:
        _hand_back(cluster, tmp_path)
    finally:
        cluster.stop()


def _hand_back(cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.executor(2, "stopping-ex")
    flag = tmp_path / "second-time"
    write_script(tmp_path / "long.sh", f'if [ -e {flag} ]; then exit 0; fi\ntouch {flag}\nsleep 60\n')
    write_script(tmp_path / "later.sh", "exit 0\n")
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20))  # staged at once
    long_job = "job: handed-long\nbinary: long.sh\nretries: {max_attempts: 2, backoff: 0s}\n"
    submit(cluster, write_job(tmp_path, "long", long_job))
    submit(cluster, write_job(tmp_path, "later", f"job: handed-later\nbinary: later.sh\nat: {at}\n"))
    eventually(lambda: (t := task(cluster, "handed-long")) is not None and t.state == "RUNNING"
               and (u := task(cluster, "handed-later")) is not None and u.state == "CLAIMED", 60,
               what="one attempt running, one staged")
    first.stop()
    cluster.executor(2, "second-ex")
    for job in ("handed-long", "handed-later"):
        eventually(lambda j=job: cluster.succeeded_runs(j), 90, what=f"{job} succeeded on the second executor")
    long, later = settled_task(cluster, "handed-long"), task(cluster, "handed-later")
    assert [(a.outcome, a.executor_id) for a in long.attempts] == [("LOST", "stopping-ex"),
                                                                    ("SUCCEEDED", "second-ex")]
    assert [(a.outcome, a.executor_id) for a in later.attempts] == [("RELEASED", "stopping-ex"),
                                                                     ("SUCCEEDED", "second-ex")]


def test_processes_created_at_their_claims_run_once_granted_with_their_fencing_tokens(lone: Cluster,
                                                                                       tmp_path: Path) -> None:
    """`--early-from 0`: every claim's process is created at once, held; the grant lets it go, and the job sees the
    fencing token the scheduler granted (it reaches the process only through the word that lets it go)."""
    ledger = tmp_path / "tokens"
    write_script(tmp_path / "say.sh", f'echo "$KSCHED_TASK_ID $KSCHED_ATTEMPT $KSCHED_FENCING_TOKEN" >> {ledger}\n')
    ex = lone.executor(4, "early-ex", "--early-from", "0")
    jobs = [f"early{i}" for i in range(3)]
    for job in jobs:
        submit(lone, write_job(tmp_path, job, f"job: {job}\nbinary: say.sh\n"))
    for job in jobs:
        eventually(lambda j=job: lone.succeeded_runs(j), 90, what=f"{job} succeeded")
    seen = {tid: (int(n), int(token)) for tid, n, token in (line.split() for line in ledger.read_text().splitlines())}
    for job in jobs:
        (attempt,) = task(lone, job).attempts
        assert seen[task(lone, job).task_id] == (1, attempt.fencing_token)
    ex.stop()
    created = [line for line in ex.log.read_text(errors="replace").splitlines() if " stopped: " in line]
    assert created and "3 processes created at their claims (3 taken by their grants)" in created[0], created


def test_a_ready_record_delivered_again_after_its_attempt_ran_is_not_claimed_again(lone: Cluster,
                                                                                      tmp_path: Path) -> None:
    """A streams worker that crashed can decide a task ready again (the same record, the same id) after its
    attempt already ran; the executor that ran it neither claims nor starts it again."""
    cluster = lone
    cluster.executor(2, "dup-ex")
    write_script(tmp_path / "once.sh", "exit 0\n")
    submit(cluster, write_job(tmp_path, "once", "job: dup-ready\nbinary: once.sh\n"))
    eventually(lambda: cluster.succeeded_runs("dup-ready"), 60, what="ran once")
    topic = cluster.settings.topic("ready.normal")
    codec = default_codec()
    (orig,) = [m for p in range(cluster.settings.ready_partitions) for m in read_partition(cluster.settings, topic, p)
               if codec.decode(m.value()).job_id == "dup-ready"]
    producer = kafka.producer(cluster.settings)
    delivered: list[int] = []
    producer.produce(topic, key=orig.key(), value=orig.value(), partition=orig.partition(),
                     on_delivery=lambda err, m: delivered.append(int(m.offset())))
    producer.flush(10)
    # The executor commits its consumed offsets in the same transaction as its claims: once the offset is past
    # the copy, any claim it made for the copy is visible too.
    group = f"{cluster.settings.prefix}-executors"
    (copied,) = delivered
    eventually(lambda: group_progress(cluster.settings, topic, group)[orig.partition()][0] > copied, 60,
               what="the executor consumed the copy")
    claims = [e for k, e in cluster.records("inbox") if k == b"dup-ready" and isinstance(e, ClaimTask)]
    assert len(claims) == 1, claims
    assert [a.outcome for a in task(cluster, "dup-ready").attempts] == ["SUCCEEDED"]


def test_an_executor_with_only_staged_attempts_hands_them_back_when_stopped(bootstrap: str, tmp_path: Path) -> None:
    """Nothing running to wait for: the staged attempt (its process created and held) is still reported."""
    cluster = Cluster(settings_for(bootstrap, tmp_path / "home", lookahead_s=60.0))
    cluster.streams("w1")
    try:
        ex = cluster.executor(2, "staging-ex")
        write_script(tmp_path / "later.sh", "exit 0\n")
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 50))
        submit(cluster, write_job(tmp_path, "later", f"job: staged-only\nbinary: later.sh\nat: {at}\n"))
        eventually(lambda: (t := task(cluster, "staged-only")) is not None and t.state == "CLAIMED", 60,
                   what="the attempt staged")
        ex.stop()
        eventually(lambda: [a.outcome for a in task(cluster, "staged-only").attempts][:1] == ["RELEASED"], 60,
                   what="the staged attempt handed back")
        assert task(cluster, "staged-only").state == "READY"  # offered again, its run not cancelled
    finally:
        cluster.stop()


def _claim_while_the_scheduler_is_frozen(bootstrap: str, tmp_path: Path, job: str, *executor_args: str,
                                         lease_s: float, frozen_s: float, renewals: int) -> Cluster:
    """Freeze the streams worker once `job` is ready, start an executor (it claims; no answer comes), tick
    the inbox as a live ticker elsewhere would for `frozen_s` after the claim (and until the executor renewed
    it `renewals` times), then thaw the worker. The returned cluster is stopped by the caller."""
    settings = settings_for(bootstrap, tmp_path / "home", lease_s=lease_s, session_timeout_s=45.0)
    cluster = Cluster(settings)
    worker = cluster.streams("w1")
    frozen = False
    try:
        write_script(tmp_path / "once.sh", "exit 0\n")
        submit(cluster, write_job(tmp_path, job, f"job: {job}\nbinary: once.sh\n"))
        eventually(lambda: (t := task(cluster, job)) is not None and t.state == "READY", 60, what="ready")
        os.kill(worker.popen.pid, signal.SIGSTOP)
        frozen = True
        cluster.executor(2, "patient-ex", *executor_args)
        codec, inbox = default_codec(), settings.topic("inbox")
        ticker = kafka.producer(settings)

        def claims() -> list[ClaimTask]:
            return [e for k, e in cluster.records("inbox") if k == job.encode() and isinstance(e, ClaimTask)]

        def waiting() -> bool:
            sent = claims()
            return not sent or time.time() * 1000 < sent[0].at_ms + frozen_s * 1000 or sum(
                c.renewal for c in sent) < renewals

        while waiting():
            for p in range(settings.partitions):
                ticker.produce(inbox, value=codec.encode(Tick(p, int(time.time() * 1000), "test")), partition=p)
            ticker.flush(10)
            time.sleep(0.5)
        sent = claims()
        assert {c.claim_id for c in sent} == {sent[0].claim_id} and not sent[0].renewal
        assert sum(c.renewal for c in sent) >= renewals and (renewals or not any(c.renewal for c in sent))
    except BaseException:
        cluster.stop()
        raise
    finally:
        if frozen:
            os.kill(worker.popen.pid, signal.SIGCONT)
    return cluster


def _finished_attempts(cluster: Cluster, job: str) -> list[tuple[str, str]]:
    eventually(lambda: set(cluster.run_states(job).values()) & {"SUCCEEDED", "FAILED"}, 90, what="the run finished")
    return [(a.outcome, a.executor_id) for a in settled_task(cluster, job).attempts]


def test_a_grant_decided_by_a_lagging_scheduler_does_not_lapse_before_its_executor_is_heard(
        bootstrap: str, tmp_path: Path) -> None:
    """The streams worker is frozen while an executor's claim waits for its answer and ticks pile up behind the
    claim. Thawed, the worker grants the claim at its stale clock and then reads several leases' worth of
    ticks before the executor's start report. The executor's renewals, interleaved with those ticks, keep the
    grant: the attempt runs once and is not lost."""
    cluster = _claim_while_the_scheduler_is_frozen(bootstrap, tmp_path, "lagged", lease_s=4.0, frozen_s=14.0,
                                                   renewals=3)
    try:
        assert _finished_attempts(cluster, "lagged") == [("SUCCEEDED", "patient-ex")]
    finally:
        cluster.stop()


def test_a_grant_that_comes_after_its_executor_gave_up_waiting_is_handed_back_not_lost(
        bootstrap: str, tmp_path: Path) -> None:
    """The executor stops waiting for its answer after 3 s (and uses its slot otherwise); the grant that comes
    within the lease after that is handed back unstarted, so the task is offered again without using up its
    one attempt, instead of lapsing as LOST and failing the run."""
    cluster = _claim_while_the_scheduler_is_frozen(bootstrap, tmp_path, "abandoned", "--claim-timeout", "3",
                                                   lease_s=10.0, frozen_s=4.5, renewals=0)
    try:
        assert _finished_attempts(cluster, "abandoned") == [("RELEASED", "patient-ex"), ("SUCCEEDED", "patient-ex")]
        (first, _) = task(cluster, "abandoned").attempts
        assert "CLAIM_ABANDONED" in first.reason, first
    finally:
        cluster.stop()


def test_a_grant_that_lapsed_before_its_executor_handed_it_back_is_not_charged(
        bootstrap: str, tmp_path: Path) -> None:
    """The same, but the scheduler reads a whole lease of ticks after its grant before the hand-back (as a
    worker that took over a dead one's partitions works through old ticks): the grant lapses first, as LOST
    before any start, and the hand-back finds it ended. Nothing ran, so the one attempt the policy allows is
    still to come: the task is offered again and succeeds (it used to end FAILED, "gave up after 1 attempt")."""
    cluster = _claim_while_the_scheduler_is_frozen(bootstrap, tmp_path, "lapsed", "--claim-timeout", "3",
                                                   lease_s=8.0, frozen_s=12.0, renewals=0)
    try:
        assert _finished_attempts(cluster, "lapsed") == [("LOST", "patient-ex"), ("SUCCEEDED", "patient-ex")]
        (first, _) = task(cluster, "lapsed").attempts
        assert "before executor patient-ex reported a start" in first.reason, first
    finally:
        cluster.stop()


def test_executors_share_every_priority_not_just_the_total(lone: Cluster) -> None:
    """Each executor of a group gets partitions of each ready topic, so work of every priority is spread."""
    cluster = lone
    cluster.executor(2, "share-a")
    cluster.executor(2, "share-b")
    group = f"{cluster.settings.prefix}-executors"
    admin = kafka.admin(cluster.settings)

    def assignment() -> dict[str, set[str]] | None:
        try:
            g = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException:  # the group does not exist yet
            return None
        members = {m.member_id: {tp.topic for tp in m.assignment.topic_partitions} for m in g.members}
        return members if len(members) == 2 and all(members.values()) else None

    members = eventually(assignment, 60, what="both executors assigned")
    topics = {cluster.settings.topic(f"ready.{p}") for p in ("high", "normal", "low")}
    assert all(got == topics for got in members.values()), members
