"""A secured broker (SASL/SCRAM, an authorizer that denies what no ACL allows; once over plaintext, once over
TLS) and ksched's roles as ACLs: each role does its part, a submitter cannot forge a report or read grants, an
anonymous client is refused, a client that does not trust the broker's certificate is refused. The broker's
authorizer decides; nothing here is checked by ksched's own code."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition

from ksched import acl, devbroker, kafka
from ksched.config import Settings, kafka_security
from ksched.devbroker import free_port
from ksched.schemas.codec import default_codec
from ksched.schemas.events import TaskCompleted
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker
WEB_PORT = free_port()


@pytest.fixture(scope="module", params=["sasl", "sasl+tls"])
def auth_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = Path(tmp_path_factory.mktemp("authbroker"))
    devbroker.up(data, auth=True, tls=request.param == "sasl+tls")
    yield data
    devbroker.down(data)


def creds(data: Path, user: str) -> tuple[tuple[str, str], ...]:
    return kafka_security({"KSCHED_KAFKA_CONFIG": str(devbroker.client_properties(data, user))})


@pytest.fixture(scope="module")
def cluster(auth_broker: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    info = devbroker.status(auth_broker)
    assert info is not None
    admin = replace(settings_for(info.bootstrap, Path(tmp_path_factory.mktemp("secured"))),
                    kafka=creds(auth_broker, "admin"))
    acl.apply(admin, admin, devbroker.ROLE_USERS)
    c = Cluster(admin, credentials={role: devbroker.client_properties(auth_broker, user)
                                    for role, user in devbroker.ROLE_USERS.items()},
                extra_env={"KSCHED_API_TOKEN": "read-token", "KSCHED_API_ADMIN_TOKEN": "admin-token"})
    c.streams("w1", web_port=WEB_PORT)
    c.executor(2, "secure-ex")
    yield c
    c.stop()


def as_user(cluster: Cluster, auth_broker: Path, user: str | None) -> Settings:
    return replace(cluster.settings, kafka=creds(auth_broker, user) if user else ())


def deliver(settings: Settings, topic: str, value: bytes, key: bytes = b"k") -> str:
    """Produce one record; "ok" or the error the broker (or the client) gave."""
    p = kafka.producer(settings, **{"message.timeout.ms": 8000})
    result: list[str] = []
    p.produce(topic, value, key, on_delivery=lambda err, _m: result.append("ok" if err is None else err.name()))
    p.flush(15)
    return result[0] if result else "undelivered"


def test_a_job_runs_with_every_client_authenticated_and_authorized(cluster: Cluster) -> None:
    home = cluster.settings.home
    write_script(home / "hello.sh", 'echo "hello from $KSCHED_TASK_ID"\n')
    r = cluster.ksched("submit", str(write_job(home, "secure", "job: secure\nbinary: hello.sh\n")), "--wait",
                       "--timeout", "120")
    assert r.returncode == 0, r.stderr
    eventually(lambda: cluster.succeeded_runs("secure"), 120, what="the job ran (claim, grant, start, report)")
    status = cluster.ksched("status", "secure")
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stderr
    run_id = cluster.succeeded_runs("secure")[0]
    assert "hello from" in cluster.ksched("logs", run_id).stdout


def test_a_submitter_cannot_forge_an_executor_report(cluster: Cluster, auth_broker: Path) -> None:
    forged = default_codec().encode(TaskCompleted("secure", "secure@x", "secure@x/main", attempt=1, fencing_token=1,
                                                  executor_id="secure-ex", exit_code=0, started_at_ms=0,
                                                  finished_at_ms=0))
    submitter = as_user(cluster, auth_broker, "ksched-submitter")
    assert deliver(submitter, cluster.settings.topic("inbox"), forged, b"secure") == "TOPIC_AUTHORIZATION_FAILED"
    # ...but it may submit commands, and an executor may write reports.
    assert deliver(submitter, cluster.settings.topic("commands"), b"garbage is dead-lettered") == "ok"
    executor = as_user(cluster, auth_broker, "ksched-executor")
    assert deliver(executor, cluster.settings.topic("commands"), b"x") == "TOPIC_AUTHORIZATION_FAILED"


def test_a_submitter_cannot_read_the_control_topic(cluster: Cluster, auth_broker: Path) -> None:
    submitter = as_user(cluster, auth_broker, "ksched-submitter")
    c = kafka.consumer(submitter, group=f"{cluster.settings.prefix}-reader-{uuid.uuid4().hex[:6]}")
    try:
        control = cluster.settings.topic("control")
        md = c.list_topics(control, timeout=15).topics[control]
        assert md.error is not None and md.error.name() == "TOPIC_AUTHORIZATION_FAILED"
        with pytest.raises(KafkaException):  # and so it has no partition to read from
            c.get_watermark_offsets(TopicPartition(control, 0), timeout=15)
        low, high = c.get_watermark_offsets(TopicPartition(cluster.settings.topic("runs"), 0), timeout=15)
        assert high >= low >= 0  # the views it may read
    finally:
        c.close()


def test_an_anonymous_client_and_a_wrong_password_are_refused(cluster: Cluster, auth_broker: Path) -> None:
    # Anonymous: no SASL, but over TLS where the broker speaks it, so the refusal is the authentication's.
    tls: Any = (("security.protocol", "SSL"), ("ssl.ca.location", str(devbroker.ca_file(auth_broker))))
    anonymous = replace(cluster.settings, kafka=tls if devbroker.has_tls(auth_broker) else ())
    assert deliver(anonymous, cluster.settings.topic("commands"), b"x") != "ok"
    wrong: Any = tuple((k, "not-it" if k == "sasl.password" else v)
                       for k, v in creds(auth_broker, "ksched-submitter"))
    assert dict(wrong)["sasl.password"] == "not-it"
    assert deliver(replace(cluster.settings, kafka=wrong), cluster.settings.topic("commands"), b"x") != "ok"


def test_a_client_that_does_not_trust_the_brokers_certificate_is_refused(cluster: Cluster,
                                                                          auth_broker: Path) -> None:
    if not devbroker.has_tls(auth_broker):
        pytest.skip("the plaintext variant of the secured broker")
    # The submitter's own credentials, but trusting only the system's authorities: the handshake fails.
    untrusting: Any = tuple((k, v) for k, v in creds(auth_broker, "ksched-submitter") if k != "ssl.ca.location")
    assert dict(untrusting)["security.protocol"] == "SASL_SSL"
    assert deliver(replace(cluster.settings, kafka=untrusting), cluster.settings.topic("commands"), b"x") != "ok"
    assert deliver(as_user(cluster, auth_broker, "ksched-submitter"), cluster.settings.topic("commands"),
                   b"trusted: delivered (and dead-lettered)") == "ok"


def test_the_api_needs_a_bearer_token_when_tokens_are_configured(cluster: Cluster) -> None:
    port = WEB_PORT

    def status(path: str, token: str | None) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    eventually(lambda: status("/api/openapi.json", "read-token") == 200, 60, what="the API up")
    assert status("/api/jobs", None) == 401
    assert status("/api/jobs", "wrong") == 401
    assert status("/metrics", None) == 401
    assert status("/api/jobs", "read-token") == 200
    assert status("/api/jobs", "admin-token") == 200
    assert status("/", None) == 200  # the UI page itself; its requests carry the token
