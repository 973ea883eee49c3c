"""Session-wide fixtures: the real Kafka broker (started once), or the cluster named by
KSCHED_BOOTSTRAP_SERVERS, or (with KSCHED_TEST_BROKER=testcontainers and a Docker engine) a container."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _testcontainers_kafka() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:4.1.0").with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KSCHED_BOOTSTRAP_SERVERS"):
        yield os.environ["KSCHED_BOOTSTRAP_SERVERS"]
        return
    if os.environ.get("KSCHED_TEST_BROKER") == "testcontainers":
        yield from _testcontainers_kafka()
        return
    from ksched import devbroker

    data = Path(tmp_path_factory.mktemp("broker"))
    t0 = time.monotonic()
    info = devbroker.up(data)
    print(f"\n[ksched] Apache Kafka {devbroker.KAFKA_VERSION} up at {info.bootstrap} in {time.monotonic() - t0:.1f}s")
    try:
        yield info.bootstrap
    finally:
        devbroker.down(data)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item, so fixtures can print logs when a test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    if rep.when == "call" and rep.failed:
        from tests.support import LIVE

        for cluster in LIVE:
            rep.sections.append((f"ksched processes ({cluster.settings.prefix})", cluster.logs()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of the fault tests (operations, faults, losses, duplicates, longest pause in firing)."""
    from tests.faults import FIGURES

    if FIGURES:
        terminalreporter.section("fault test figures")
        for line in FIGURES:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the processes of every installation a test left running (a fixture that failed before its
    teardown), so a failed run leaves no worker or executor behind."""
    from tests.support import LIVE

    for cluster in list(LIVE):
        cluster.stop()
