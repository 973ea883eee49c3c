"""A three-node Kafka cluster (replication factor 3, min.insync.replicas 2) under a mixed load, and its faults:
the inbox leader killed, the transaction coordinator of the executors' claims killed, a rolling restart.
After each, nothing acknowledged is lost and nothing runs twice (tests/faults.py judges)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ksched import kafka
from ksched.devbroker import cluster as kcluster
from tests.faults import Load, check
from tests.support import Cluster, settings_for

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kcluster.ClusterInfo]:
    data = Path(tmp_path_factory.mktemp("threenodes"))
    info = kcluster.up(data, nodes=3)
    yield info
    kcluster.down(data)


@pytest.fixture
def load(nodes: kcluster.ClusterInfo, tmp_path: Path) -> Iterator[Load]:
    settings = replace(settings_for(nodes.bootstrap, tmp_path / "home", lookahead_s=0.0, session_timeout_s=6.0),
                       replication_factor=3)
    c = Cluster(settings)
    c.streams("w1")
    c.executor(8, "fault-ex")
    load = Load(c, tmp_path)
    load.start()
    yield load
    load.stop()
    c.stop()


def leader_of(settings: object, topic: str, partition: int) -> int:
    md = kafka.admin(settings).list_topics(topic, timeout=15)  # type: ignore[arg-type]
    return int(md.topics[topic].partitions[partition].leader)


def java_hash(s: str) -> int:
    h = 0
    for ch in s:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_of_transactions(settings: object, transactional_id: str) -> int:
    """The broker leading the __transaction_state partition of a transactional id (Kafka: abs(hashCode) % n)."""
    partition = abs(java_hash(transactional_id)) % 8  # transaction.state.log.num.partitions of the dev cluster
    return leader_of(settings, "__transaction_state", partition)


def lagging(settings: object) -> list[str]:
    """Partitions with a replica out of sync (so `not lagging(s)`: fully replicated again)."""
    md = kafka.admin(settings).list_topics(timeout=15)  # type: ignore[arg-type]
    return [f"{name}-{p}:isr={pm.isrs},leader={pm.leader}" for name, t in md.topics.items()
            for p, pm in t.partitions.items() if len(pm.isrs) < len(pm.replicas)]


def single_copies(settings: object, prefix: str) -> list[str]:
    """The installation's partitions (its own topics and Faust's internal ones, the assignor's leader topic
    among them) with fewer than three replicas: one node's loss would take them offline. The workers here run
    with no KSCHED_REPLICATION_FACTOR (1): the topics must come from `ensure_topics`, not from a worker."""
    md = kafka.admin(settings).list_topics(timeout=15)  # type: ignore[arg-type]
    return [f"{name}-{p}:replicas={pm.replicas}" for name, t in md.topics.items() if name.startswith(prefix)
            for p, pm in t.partitions.items() if len(pm.replicas) < 3]


def wait_in_sync(settings: object, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (bad := lagging(settings)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not bad, f"{what}: not in sync after {timeout_s:.0f}s: {bad[:6]}"


def kill_and_restart(nodes: kcluster.ClusterInfo, node_id: int, down_s: float) -> None:
    kcluster.stop_node(nodes.data_dir, node_id, kill=True)
    time.sleep(down_s)  # the load goes on against two nodes
    kcluster.start_node(nodes.data_dir, node_id)


def test_killing_the_inbox_leader_and_then_the_claims_coordinator_loses_and_doubles_nothing(
        nodes: kcluster.ClusterInfo, load: Load) -> None:
    s = load.cluster.settings
    assert single_copies(s, s.prefix) == []
    victim = leader_of(s, s.topic("inbox"), 0)
    kill_and_restart(nodes, victim, down_s=8)
    wait_in_sync(s, "in sync again after the inbox leader came back")
    time.sleep(5)
    victim = coordinator_of_transactions(s, f"{s.prefix}-executor-fault-ex")
    kill_and_restart(nodes, victim, down_s=8)
    wait_in_sync(s, "in sync again after the coordinator came back")
    verdict = check(load, "kill -9 of the inbox leader, then of the claims' transaction coordinator", 2)
    assert (verdict.lost, verdict.doubled, verdict.overlapping) == ([], [], [])


def test_a_rolling_restart_of_every_node_loses_and_doubles_nothing(nodes: kcluster.ClusterInfo,
                                                                   load: Load) -> None:
    s = load.cluster.settings
    for node in nodes.nodes:
        kcluster.stop_node(nodes.data_dir, node.node_id)  # SIGTERM: a clean shutdown moves its leadership
        kcluster.start_node(nodes.data_dir, node.node_id)
        wait_in_sync(s, f"in sync again after node {node.node_id} restarted")
    verdict = check(load, "rolling restart of 3 nodes (SIGTERM, wait for in-sync, next)", 3)
    assert (verdict.lost, verdict.doubled, verdict.overlapping) == ([], [], [])
