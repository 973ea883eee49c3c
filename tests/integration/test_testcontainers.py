"""Where a Docker engine exists, testcontainers can provide the broker instead (KSCHED_TEST_BROKER=testcontainers).
Here there is none: this checks that the path is wired and skips cleanly."""

from __future__ import annotations

import pytest


def docker_engine_available() -> bool:
    """True only if a Docker engine answers (the client alone, as here, is not enough)."""
    import socket

    path = "/var/run/docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(1024)
        except OSError:
            return False


@pytest.mark.skipif(not docker_engine_available(), reason="no Docker engine on this machine")
def test_a_broker_from_testcontainers_answers_admin_requests() -> None:
    from confluent_kafka.admin import AdminClient

    from tests.conftest import _testcontainers_kafka

    gen = _testcontainers_kafka()
    bootstrap = next(gen)
    try:
        assert AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers
    finally:
        gen.close()
