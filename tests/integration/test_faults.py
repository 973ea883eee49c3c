"""Faults of the default setup under the mixed load of tests/faults.py: the single-node broker stopped and
restarted, and streams workers and executors joining and leaving (rebalances) with three workers. After each,
nothing acknowledged is lost and nothing runs twice (tests/faults.py judges). The three-node cluster's faults
are in test_cluster_faults.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched import devbroker
from tests.faults import Load, check
from tests.support import Cluster, settings_for

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Path]:
    """A single-node broker of this test's own (the session's stays up for the other tests)."""
    data = tmp_path / "broker"
    devbroker.up(data)
    yield data
    devbroker.down(data)


@pytest.fixture
def installations(tmp_path: Path) -> Iterator[list[Cluster | Load]]:
    """The installations and loads a test makes, stopped at teardown: after the call's report, so a failed
    test's report carries their processes' logs."""
    made: list[Cluster | Load] = []
    yield made
    for thing in sorted(made, key=lambda t: isinstance(t, Cluster)):  # the loads first
        thing.stop()


def installation(made: list[Cluster | Load], bootstrap: str, tmp_path: Path, **overrides: object) -> Cluster:
    c = Cluster(settings_for(bootstrap, tmp_path / "home", lookahead_s=0.0, session_timeout_s=6.0, **overrides))
    made.append(c)
    return c


def test_the_single_node_broker_stopped_and_then_killed_during_load_loses_and_doubles_nothing(
        own_broker: Path, installations: list[Cluster | Load], tmp_path: Path) -> None:
    info = devbroker.status(own_broker)
    assert info is not None
    c = installation(installations, info.bootstrap, tmp_path)
    c.streams("w1")
    c.executor(8, "fault-ex")
    load = Load(c, tmp_path)
    installations.append(load)
    load.start()
    devbroker.down(own_broker)  # SIGTERM: a clean shutdown, as for an upgrade
    time.sleep(8)  # everything ksched runs keeps running against no broker at all
    devbroker.up(own_broker)  # the same data dir and port
    time.sleep(10)
    running = devbroker.status(own_broker)
    assert running is not None and running.pid is not None
    os.killpg(running.pid, signal.SIGKILL)  # then a crash: unflushed log segments, open transactions
    devbroker.down(own_broker)  # reaps it
    time.sleep(5)
    devbroker.up(own_broker)
    verdict = check(load, "single-node broker: SIGTERM, 8 s down, restart; 10 s later kill -9, 5 s down, restart", 2)
    assert (verdict.lost, verdict.doubled, verdict.overlapping) == ([], [], [])


def test_streams_workers_and_executors_joining_and_leaving_during_load_lose_and_double_nothing(
        bootstrap: str, installations: list[Cluster | Load], tmp_path: Path) -> None:
    c = installation(installations, bootstrap, tmp_path, partitions=6)
    c.streams("w1")
    ex1 = c.executor(8, "ex-1")
    load = Load(c, tmp_path)
    installations.append(load)
    load.start()
    w2 = c.streams("w2")  # joins: partitions move from w1 to w2
    time.sleep(15)
    w3 = c.streams("w3")  # three workers
    c.executor(8, "ex-2")  # a second executor joins the ready topics' group
    time.sleep(15)
    w2.stop()  # leaves cleanly (SIGTERM)
    time.sleep(15)
    ex1.kill9()  # an executor dies with attempts running: their leases lapse, the attempts are offered again
    time.sleep(15)
    w3.kill9()  # a worker dies: the survivor takes its partitions after the session timeout
    time.sleep(10)
    verdict = check(load, "rebalances: worker joins (2nd, 3rd), executor joins, worker leaves (SIGTERM), "
                          "executor kill -9, worker kill -9", 5)
    assert (verdict.lost, verdict.doubled, verdict.overlapping) == ([], [], [])
