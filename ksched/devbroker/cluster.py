"""A local multi-node Apache Kafka cluster on loopback: N KRaft nodes, each a combined controller and broker,
replication factor N (at most 3) and `min.insync.replicas=2` for every topic, Kafka's internal ones included.

Each node lives in `<data>/node-<i>/` (its properties, log dirs, log and pid); `<data>/cluster.json` keeps the
cluster id and the ports, so a node can be stopped (SIGTERM, or SIGKILL as a crash) and started again with its
data. Ports are free ones chosen at the first start, so a cluster coexists with the single-node broker.
Combined nodes, not separate controllers: three processes instead of six on a 2-core machine, and losing one
node still loses one controller and one broker, as a fault test wants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ksched.errors import BrokerError

from . import _HERE, _alive, _children, _cluster_id, _java, ensure_jars, free_port, wait_ready


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    port: int
    controller_port: int
    pid: int | None


@dataclass(frozen=True)
class ClusterInfo:
    data_dir: Path
    nodes: list[NodeInfo]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> NodeInfo:
        return next(n for n in self.nodes if n.node_id == node_id)


def _layout(data_dir: Path, nodes: int) -> dict[str, object]:
    path = data_dir / "cluster.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    layout: dict[str, object] = {"cluster_id": _cluster_id(),
                                 "ports": [[free_port(), free_port()] for _ in range(nodes)]}
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(layout))
    return layout


def _properties(data_dir: Path, node_id: int, ports: list[list[int]]) -> str:
    port, controller = ports[node_id - 1]
    rf = min(3, len(ports))
    isr = min(2, rf)
    voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, 1))
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data_dir / f'node-{node_id}' / 'logs'}",
        "auto.create.topics.enable=false",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=8",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        "transaction.state.log.num.partitions=8",
        # An executor killed inside a claim transaction holds up the inbox's readers until it is aborted: look for
        # timed-out transactions every second, not every 10 s (ksched/executor/claims.py, TXN_TIMEOUT_MS).
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={isr}",
        "group.initial.rebalance.delay.ms=0",
        "group.min.session.timeout.ms=1000",  # see devbroker/__init__.py
        "log.segment.bytes=67108864",
        # A restarted node catches up and leads again by itself, as in a rolling restart.
        "auto.leader.rebalance.enable=true",
        "leader.imbalance.check.interval.seconds=5",
        "",
    ])


def _node_dir(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}"


def _pid(data_dir: Path, node_id: int) -> int | None:
    pid_file = _node_dir(data_dir, node_id) / "broker.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    return pid if _alive(pid) else None


def status(data_dir: Path) -> ClusterInfo | None:
    data_dir = data_dir.resolve()
    path = data_dir / "cluster.json"
    if not path.exists():
        return None
    ports = json.loads(path.read_text())["ports"]
    return ClusterInfo(data_dir, [NodeInfo(i, p, c, _pid(data_dir, i)) for i, (p, c) in enumerate(ports, 1)])


def start_node(data_dir: Path, node_id: int, heap_mb: int = 512) -> int:
    """Start one node (formatting its storage the first time); returns its pid. It joins on its own."""
    data_dir = data_dir.resolve()
    running = _pid(data_dir, node_id)
    if running is not None:
        return running
    if not (data_dir / "cluster.json").exists():
        raise BrokerError(f"{data_dir}: no cluster here (start it with up)")
    layout = _layout(data_dir, 0)
    ports = [list(p) for p in layout["ports"]]  # type: ignore[attr-defined]
    node = _node_dir(data_dir, node_id)
    node.mkdir(parents=True, exist_ok=True)
    props = node / "server.properties"
    props.write_text(_properties(data_dir, node_id, ports))
    java, cp = _java(), f"{ensure_jars()}/*"
    log_cfg = f"-Dlog4j2.configurationFile={_HERE / 'log4j2.yaml'}"
    if not (node / "logs" / "meta.properties").exists():
        fmt = subprocess.run([java, log_cfg, "-cp", cp, "kafka.tools.StorageTool", "format", "-t",
                              str(layout["cluster_id"]), "-c", str(props)], capture_output=True, text=True,
                             check=False)
        if fmt.returncode != 0:
            raise BrokerError(f"node {node_id}: storage format failed: " + (fmt.stdout + fmt.stderr).strip()[-400:])
    logf = open(node / "broker.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [java, f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 256)}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
         "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true", log_cfg, "-cp", cp, "kafka.Kafka", str(props)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    logf.close()
    _children[proc.pid] = proc
    (node / "broker.pid").write_text(str(proc.pid))
    return proc.pid


def up(data_dir: Path, nodes: int = 3, heap_mb: int = 512, timeout_s: float = 120.0) -> ClusterInfo:
    """Start (or find running) every node; return once the cluster answers with all of them."""
    data_dir = data_dir.resolve()
    layout = _layout(data_dir, nodes)
    count = len(layout["ports"])  # type: ignore[arg-type]
    for i in range(1, count + 1):
        start_node(data_dir, i, heap_mb)
    info = status(data_dir)
    assert info is not None
    wait_all(info, timeout_s)
    return info


def wait_all(info: ClusterInfo, timeout_s: float) -> None:
    """Until the metadata names every node as a live broker."""
    from confluent_kafka.admin import AdminClient

    wait_ready(info.bootstrap.split(",")[0], timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            md = AdminClient({"bootstrap.servers": info.bootstrap, "log_level": 0}).list_topics(timeout=3)
            if len(md.brokers) == len(info.nodes):
                return
        time.sleep(0.3)
    raise BrokerError(f"not every node of {info.bootstrap} joined within {timeout_s:.0f}s")


def stop_node(data_dir: Path, node_id: int, kill: bool = False, timeout_s: float = 60.0) -> bool:
    """Stop one node: SIGTERM (a clean shutdown, leadership moved first) or, with `kill`, SIGKILL (a crash)."""
    pid = _pid(data_dir.resolve(), node_id)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    (_node_dir(data_dir.resolve(), node_id) / "broker.pid").unlink(missing_ok=True)
    return True


def down(data_dir: Path) -> bool:
    info = status(data_dir)
    if info is None:
        return False
    stopped = [stop_node(data_dir, n.node_id) for n in info.nodes]
    return any(stopped)
