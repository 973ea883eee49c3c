"""Input no client may use to stop ksched, through the real broker: a record near the size limit, a long DAG
listed last-first from a plain Kafka producer, and garbage on the ready and control topics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched import kafka
from ksched.schemas.codec import default_codec
from ksched.schemas.events import DeadLetter, JobAccepted, JobSpec, SubmitJob, TaskSpec
from ksched.topics import MAX_RECORD_BYTES, ready_topic
from tests.samples import DIGEST
from tests.support import Cluster, eventually, settings_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, Path(tmp_path_factory.mktemp("badinput"))))
    c.streams("w1")
    c.executor(1, "garbage-ex")
    yield c
    c.stop()


def produce(cluster: Cluster, topic: str, key: bytes | None, value: bytes) -> None:
    p = kafka.producer(cluster.settings, **{"message.max.bytes": MAX_RECORD_BYTES + 65536})
    errors: list[str] = []
    p.produce(topic, value, key, on_delivery=lambda e, _m: errors.append(str(e)) if e else None)
    assert p.flush(30) == 0 and errors == []


def dead_letters(cluster: Cluster) -> list[DeadLetter]:
    return [e for _, e in cluster.records("dlq") if isinstance(e, DeadLetter)]


def test_a_record_just_under_the_maximum_is_dead_lettered_whole_and_the_worker_goes_on(cluster: Cluster) -> None:
    junk = b"\x00" * (MAX_RECORD_BYTES - 1000)  # accepted by the broker; its dead letter is larger
    produce(cluster, cluster.settings.topic("inbox"), b"junk", junk)
    dl = eventually(lambda: next((d for d in dead_letters(cluster) if d.key == b"junk"), None), 60,
                    what="the big record dead-lettered")
    assert dl.value == junk and dl.source_topic == cluster.settings.topic("inbox")
    assert "magic" in dl.reason
    assert all(p.popen.poll() is None for p in cluster.procs), cluster.logs()


def test_a_1500_task_chain_listed_last_first_from_any_producer_is_accepted(cluster: Cluster) -> None:
    from ksched.schemas.events import ArtifactRef, RetryPolicy

    art = ArtifactRef(DIGEST, "x.sh", 1)
    tasks = [TaskSpec(f"t{i}", art, depends_on=[f"t{i - 1}"] if i else [], retry=RetryPolicy(max_attempts=1))
             for i in range(1500)][::-1]
    spec = JobSpec("long-chain", tasks)
    produce(cluster, cluster.settings.topic("inbox"), b"long-chain",
            default_codec().encode(SubmitJob("c-long", spec, 0)))
    eventually(lambda: any(isinstance(e, JobAccepted) and e.job_id == "long-chain"
                           for _, e in cluster.records("events")), 90, what="the long chain accepted")
    assert all(p.popen.poll() is None for p in cluster.procs), cluster.logs()


def test_garbage_on_the_ready_and_control_topics_is_dead_lettered_by_executors(cluster: Cluster) -> None:
    s = cluster.settings
    produce(cluster, ready_topic(s, "normal", ""), b"ready-junk", b"not avro at all")
    produce(cluster, s.topic("control"), b"garbage-ex", b"\xc3\x01 not a fingerprint")
    def both() -> dict[str, DeadLetter] | None:
        found = {d.source_topic: d for d in dead_letters(cluster) if d.key in (b"ready-junk", b"garbage-ex")}
        return found if len(found) == 2 else None

    found = eventually(both, 60, what="both dead-lettered")
    assert found[ready_topic(s, "normal", "")].value == b"not avro at all"
    assert found[s.topic("control")].value == b"\xc3\x01 not a fingerprint"
    assert all(p.popen.poll() is None for p in cluster.procs), cluster.logs()
