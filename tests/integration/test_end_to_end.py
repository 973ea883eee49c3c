"""The whole path against the real broker: a streams worker and an executor as separate processes, jobs
submitted by the CLI, by a raw producer and by a Java client, every event type on the wire, dead letters."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched import kafka
from ksched.artifacts import open_store
from ksched.instants import iso
from ksched.partitioning import partition_for
from ksched.reader import job_history, read_partition
from ksched.schemas.codec import SCHEMA_DIR, default_codec
from ksched.schemas.events import (
    CancelRequested,
    ClaimGranted,
    DeadLetter,
    JobChanged,
    SubmitJob,
    TaskReady,
    Tick,
)
from ksched.topics import submit_topic
from tests.samples import job
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("e2e")))
    c.streams("w1")
    c.executor(slots=6, contained=True)
    yield c
    c.stop()


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    write_script(tmp_path / "hello.sh", 'echo "hello $KSCHED_TASK_ID attempt $KSCHED_ATTEMPT"\n')
    return tmp_path


def submit(cluster: Cluster, path: Path) -> None:
    r = cluster.ksched("submit", str(path), "--wait", "--timeout", "90")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("accepted")


def test_a_cron_job_and_a_one_off_job_run_and_show_in_status(cluster: Cluster, jobs_dir: Path) -> None:
    submit(cluster, write_job(jobs_dir, "cron", "job: every-second\nschedule: '* * * * * *'\nbinary: hello.sh\n"))
    submit(cluster, write_job(jobs_dir, "once", "job: just-once\nbinary: hello.sh\nargs: [a, b]\n"))
    eventually(lambda: len(cluster.succeeded_runs("every-second")) >= 3, 90, what="three cron runs succeed")
    eventually(lambda: cluster.succeeded_runs("just-once"), 60, what="the one-off run succeeds")
    cluster.drain_inbox()  # every tick and report so far decided: a second run of the one-off would show now

    text = cluster.ksched("status", "every-second")
    assert text.returncode == 0 and "SUCCEEDED" in text.stdout and 'cron "* * * * * *"' in text.stdout
    data = json.loads(cluster.ksched("status", "just-once", "--json").stdout)
    (run,) = data["runs"]
    (task,) = run["tasks"]
    (attempt,) = task["attempts"]
    assert run["state"] == "SUCCEEDED" and attempt["exit_code"] == 0 and attempt["outcome"] == "SUCCEEDED"
    assert run["scheduled_for_ms"] <= attempt["started_at_ms"] <= attempt["finished_at_ms"]
    logs = cluster.ksched("logs", run["run_id"])
    assert f"hello {run['run_id']}/main attempt 1" in logs.stdout

    # Cron runs have ids derived from their scheduled instants, one second apart.
    cron = json.loads(cluster.ksched("status", "every-second", "--json").stdout)["runs"]
    assert len(cron) >= 3
    assert [r["run_id"] for r in cron] == [f"every-second@{iso(r['scheduled_for_ms'])}" for r in cron]
    instants = sorted(r["scheduled_for_ms"] for r in cron)
    assert all(b - a == 1000 for a, b in itertools.pairwise(instants))


def test_every_event_type_travels_through_the_broker(cluster: Cluster, jobs_dir: Path) -> None:
    write_script(jobs_dir / "flaky.sh", '[ "$KSCHED_ATTEMPT" = 1 ] && exit 3\necho recovered\n')
    write_script(jobs_dir / "slow.sh", "sleep 2\n")
    write_script(jobs_dir / "forever.sh", "sleep 120\n")
    (jobs_dir / "notes.txt").write_text("this is not a program\n")
    submit(cluster, write_job(jobs_dir, "flaky", "job: flaky\nbinary: flaky.sh\nretries: {max_attempts: 2, "
                                                 "backoff: 1s}\n"))
    submit(cluster, write_job(jobs_dir, "slow", "job: slow\nbinary: slow.sh\n"))
    submit(cluster, write_job(jobs_dir, "bad", "job: not-a-program\nbinary: notes.txt\n"))
    submit(cluster, write_job(jobs_dir, "forever", "job: forever\nbinary: forever.sh\n"))
    submit(cluster, write_job(jobs_dir, "weekly", "job: weekly\nschedule: '@weekly'\nbinary: hello.sh\n"))

    eventually(lambda: cluster.succeeded_runs("flaky"), 60, what="flaky succeeds on its second attempt")
    eventually(lambda: cluster.succeeded_runs("slow"), 60, what="the slow job succeeds")
    eventually(lambda: "FAILED" in cluster.run_states("not-a-program").values(), 60, what="bad artifact fails")
    run_id = eventually(lambda: next((t.run_id for ts in cluster.status("forever").tasks.values()
                                      for t in ts.values() if t.state == "RUNNING"), None), 60)
    assert cluster.ksched("cancel", run_id, "--reason", "test").returncode == 0
    eventually(lambda: cluster.run_states("forever").get(run_id) == "CANCELLED", 60, what="cancelled")
    for verb in ("pause", "resume", "delete"):
        r = cluster.ksched(verb, "weekly")
        assert r.returncode == 0 and r.stdout == f"{verb}d weekly\n", r.stdout + r.stderr  # the decision came
    cluster.drain_inbox()  # everything so far decided: the counts below are final

    flaky = cluster.status("flaky")
    (tasks,) = flaky.tasks.values()
    assert [a.exit_code for a in tasks["main"].attempts] == [3, 0]
    bad = next(iter(cluster.status("not-a-program").tasks.values()))["main"]
    assert "NOT_EXECUTABLE" in bad.attempts[0].reason

    # What the other processes wrote to the inbox (the commands are this test's own; their decisions follow).
    inbox = {type(e).__name__ for _, e in cluster.records("inbox")}
    assert {"Tick", "ClaimTask", "TaskStarted", "ExecutorHeartbeat", "TaskCompleted", "TaskFailed"} <= inbox
    events = cluster.records("events")
    assert {"JobAccepted", "RunTriggered", "TaskReady", "ClaimGranted", "AttemptEnded", "RetryScheduled",
            "CancelRequested", "TaskSettled", "RunFinished", "JobChanged"} <= {type(e).__name__ for _, e in events}
    assert [e.change for k, e in events if k == b"weekly" and isinstance(e, JobChanged)] == \
        ["PAUSED", "RESUMED", "DELETED"]
    assert [e.run_id for _, e in events if isinstance(e, CancelRequested)] == [run_id]
    # Each of flaky's two attempts was offered once on its priority's ready topic and granted once.
    assert sorted(e.attempt for _, e in cluster.records("ready.normal")
                  if isinstance(e, TaskReady) and e.job_id == "flaky") == [1, 2]
    assert sorted(e.attempt for _, e in cluster.records("control")
                  if isinstance(e, ClaimGranted) and e.job_id == "flaky") == [1, 2]
    assert {type(e).__name__ for _, e in cluster.records("runs")} == {"RunView"}
    assert {type(e).__name__ for _, e in cluster.records("tasks")} == {"TaskView"}
    definition = cluster.status("flaky").definition
    assert definition is not None and definition.job.job_id == "flaky"
    assert [t.retry.max_attempts for t in definition.job.tasks] == [2]
    assert cluster.status("weekly").deleted  # its catalog entry is a tombstone


def test_bad_input_is_dead_lettered_with_its_reason_and_bytes_and_the_agent_keeps_going(
        cluster: Cluster, jobs_dir: Path) -> None:
    codec = default_codec()
    s = cluster.settings
    garbage = b"\x00not avro at all"
    truncated = codec.encode(SubmitJob("c1", job("trunc"), 1))[:-4]
    wrong_kind = codec.encode(Tick(0, 1))[:2] + codec.prefix("ksched.ClaimGranted")[2:] + b"\x02"
    bad_cron = codec.encode(SubmitJob("c2", job("bad-cron", "77 * * * *"), 1))
    p = kafka.producer(s)
    written: dict[bytes, tuple[int, int]] = {}
    for key, value in ((b"g", garbage), (b"trunc", truncated), (b"w", wrong_kind), (b"bad-cron", bad_cron)):
        p.produce(s.topic("inbox"), key=key, value=value,
                  on_delivery=lambda err, m, v=value: written.__setitem__(v, (m.partition(), m.offset())))
    p.flush(10)
    assert len(written) == 4
    for partition, offset in written.values():
        cluster.wait_processed(partition, offset)

    # The worker is past all four: their dead letters are all there, and a repeat would be too.
    letters = [e for _, e in cluster.records("dlq") if isinstance(e, DeadLetter)]
    assert sorted((d.source_topic, d.partition, d.offset) for d in letters) == \
        sorted((s.topic("inbox"), *at) for at in written.values())
    by_value = {d.value: d for d in letters}
    assert {v: (d.partition, d.offset) for v, d in by_value.items()} == written
    assert "expected magic C3 01" in by_value[garbage].reason
    assert "not a valid ksched.SubmitJob" in by_value[truncated].reason
    assert "not a valid ksched.ClaimGranted" in by_value[wrong_kind].reason
    assert "invalid cron expression" in by_value[bad_cron].reason
    dlq = cluster.ksched("dlq")
    assert "expected magic C3 01" in dlq.stdout

    submit(cluster, write_job(jobs_dir, "after", "job: after-garbage\nbinary: hello.sh\n"))
    eventually(lambda: cluster.succeeded_runs("after-garbage"), 60, what="a valid job still runs")


def test_a_submission_from_any_partition_reaches_the_partition_that_owns_the_job(cluster: Cluster,
                                                                                jobs_dir: Path) -> None:
    store = open_store(cluster.settings.artifacts)
    ref = store.put_file(jobs_dir / "hello.sh")
    spec = job("misrouted")
    from dataclasses import replace

    spec = replace(spec, tasks=[replace(spec.tasks[0], artifact=ref)])
    owner = partition_for("misrouted", cluster.settings.partitions)
    wrong = (owner + 1) % cluster.settings.partitions
    p = kafka.producer(cluster.settings)
    p.produce(cluster.settings.topic("inbox"), key=b"misrouted",
              value=default_codec().encode(SubmitJob("c", spec, int(time.time() * 1000))), partition=wrong)
    p.flush(10)
    eventually(lambda: cluster.succeeded_runs("misrouted"), 60, what="the forwarded job runs")
    cluster.drain_inbox()

    def submissions(partition: int) -> int:
        inbox = cluster.settings.topic("inbox")
        return sum(1 for m in read_partition(cluster.settings, inbox, partition) if m.key() == b"misrouted"
                   and isinstance(default_codec().decode(m.value()), SubmitJob))
    assert (submissions(wrong), submissions(owner)) == (1, 1)  # forwarded once, to the owner
    assert len(cluster.status("misrouted").runs) == 1


def _java_classpath() -> Path:
    from ksched.devbroker import cache_dir

    libs = cache_dir() / "interop-libs"
    if not (libs / ".complete").exists():
        pom = Path(__file__).resolve().parents[1] / "interop" / "java" / "pom.xml"
        subprocess.run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                        f"-DoutputDirectory={libs}"], check=True, capture_output=True)
        (libs / ".complete").write_text("ok")
    return libs


def java_security(librdkafka: dict[str, str], path: Path) -> list[str]:
    """The suite's librdkafka security settings (a run against a secured cluster) as a Java client's
    properties file: its argument, or none on an open cluster."""
    if not librdkafka:
        return []
    props = {"security.protocol": librdkafka["security.protocol"]}
    if "sasl.mechanism" in librdkafka:
        module = ("plain.PlainLoginModule" if librdkafka["sasl.mechanism"] == "PLAIN" else "scram.ScramLoginModule")
        props["sasl.mechanism"] = librdkafka["sasl.mechanism"]
        props["sasl.jaas.config"] = (f"org.apache.kafka.common.security.{module} required "
                                     f'username="{librdkafka["sasl.username"]}" '
                                     f'password="{librdkafka["sasl.password"]}";')
    if "ssl.ca.location" in librdkafka:
        props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": librdkafka["ssl.ca.location"]})
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return [str(path)]


@pytest.mark.skipif(shutil.which("java") is None or shutil.which("mvn") is None, reason="needs java and mvn")
def test_a_java_client_submits_a_job_with_only_the_avsc_files_and_the_documented_framing(
        cluster: Cluster, jobs_dir: Path) -> None:
    ref = open_store(cluster.settings.artifacts).put_file(jobs_dir / "hello.sh")
    job_id = f"from-java-{uuid.uuid4().hex[:6]}"
    source = Path(__file__).resolve().parents[1] / "interop" / "java" / "SubmitJob.java"
    security = java_security(dict(cluster.settings.kafka), jobs_dir / "java-client.properties")
    result = subprocess.run(
        ["java", "-cp", f"{_java_classpath()}/*", str(source), cluster.settings.bootstrap_servers,
         submit_topic(cluster.settings), str(SCHEMA_DIR), job_id, ref.digest, ref.name, str(ref.size),
         uuid.uuid4().hex, str(int(time.time() * 1000)), *security],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    eventually(lambda: cluster.succeeded_runs(job_id), 60, what="the Java-submitted job runs")
    st = cluster.status(job_id)
    assert st.definition is not None and st.definition.job.description == "submitted from Java"
    (run,) = st.ordered_runs()
    logs = cluster.ksched("logs", run.run_id).stdout
    assert f"hello {run.run_id}/main attempt 1" in logs


def test_several_job_files_are_validated_first_and_submitted_in_bulk_records(cluster: Cluster,
                                                                             jobs_dir: Path) -> None:
    files = [write_job(jobs_dir, f"bulk{i}", f"job: bulk-{i}\nschedule: '0 3 * * *'\nbinary: hello.sh\n")
             for i in range(12)]
    files.append(write_job(jobs_dir, "bulk-once", "job: bulk-once\nbinary: hello.sh\n"))
    bad = write_job(jobs_dir, "bulkbad", "job: bulk-bad\nschedule: '99 * * * *'\nbinary: hello.sh\n")
    r = cluster.ksched("submit", *map(str, files), str(bad))
    assert r.returncode == 2 and "nothing submitted: 1 of 14 files are not valid" in r.stderr, r.stderr
    assert "bulkbad.yaml: schedule" in r.stderr

    r = cluster.ksched("submit", *map(str, files))
    assert r.returncode == 0, r.stderr
    records = int(r.stdout.split(" in ")[1].split()[0])
    assert r.stdout.startswith("submitted 13 jobs") and records <= cluster.settings.partitions
    eventually(lambda: all(cluster.status(f"bulk-{i}").definition is not None for i in range(12)), 60,
               what="every job of the bulk records accepted")
    eventually(lambda: cluster.succeeded_runs("bulk-once"), 60, what="the one-off of a bulk record runs")
    bulk = [m for p in range(cluster.settings.partitions)
            for m in read_partition(cluster.settings, cluster.settings.topic("inbox"), p)
            if (m.value() or b"").startswith(default_codec().prefix("ksched.SubmitJobs"))]  # bad input lies here too
    assert len(bulk) == records  # and none from the refused call
    for i in range(12):  # each job's history shows its own submission, whichever job keys its bulk record
        history = job_history(cluster.settings, f"bulk-{i}").records
        assert [e.job.job_id for _, _, e in history if isinstance(e, SubmitJob)] == [f"bulk-{i}"]


def test_replaying_this_installations_inbox_reproduces_its_decision_log(cluster: Cluster) -> None:
    # Last in the module: the history now holds retries, a cancel, lifecycle commands, dead letters, a
    # forwarded record and a Java-submitted job.
    # The last decisions of the earlier tests may still be on their way to the log: wait for agreement.
    runs: list[subprocess.CompletedProcess[str]] = []

    def agrees() -> bool:
        runs.append(cluster.ksched("replay", timeout=180))
        return runs[-1].returncode == 0
    try:
        eventually(agrees, 60, interval=2, what="replay agrees with the log")
    except AssertionError:
        raise AssertionError(runs[-1].stdout[-3000:] + runs[-1].stderr[-2000:]) from None
    assert "all invariants hold" in runs[-1].stdout
