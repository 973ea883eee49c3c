"""`ksched submit` rejects bad job files with one line naming the field, a non-zero exit, and nothing produced."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from ksched import kafka
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker


def inbox_size(cluster: Cluster) -> int:
    c = kafka.consumer(cluster.settings)
    topic = cluster.settings.topic("inbox")
    try:
        eventually(lambda: len(c.list_topics(topic, timeout=10).topics[topic].partitions) > 0, 30)
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(cluster.settings.partitions))
    finally:
        c.close()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("job: j\nschedule: '0 25 * * *'\nbinary: ok.sh\n", "schedule", "invalid cron expression"),
        ("job: j\nbinary: nowhere.sh\n", "binary", "file not found"),
        ("job: j\nbinary: ok.sh\nretries: many\n", "retries", "expected a number of retries or a mapping"),
        ("job: j\nbinary: ok.sh\ntimeout: [1]\n", "timeout", "expected a duration"),
        ("job: j\nbinary: ok.sh\nsechdule: '* * * * *'\n", "sechdule", "unknown field (did you mean 'schedule'?)"),
    ],
)
def test_invalid_job_files_are_rejected_before_anything_is_produced(bootstrap: str, tmp_path: Path, body: str,
                                                                     field: str, message: str) -> None:
    cluster = Cluster(settings_for(bootstrap, tmp_path / "home"))
    write_script(tmp_path / "ok.sh", "exit 0\n")
    before = inbox_size(cluster)
    r = cluster.ksched("submit", str(write_job(tmp_path, "job", body)))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ksched: {tmp_path / 'job.yaml'}: {field}: ")
    assert message in lines[0]
    assert inbox_size(cluster) == before
