"""A real single-node Apache Kafka broker (KRaft combined mode, loopback only) for development and tests.

The jars come from Maven Central through `pom.xml` next to this file and are cached under
`$KSCHED_CACHE` (default `~/.cache/ksched`). A broker lives in a data directory that holds its
`server.properties`, its log and its pid file, so `up`, `status` and `down` need only that directory.
With `auth` it also holds its users (`users.json`), with `tls` its certificate authority and key (`tls/`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ksched.errors import BrokerError

KAFKA_VERSION = "4.3.1"
_HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
_children: dict[int, subprocess.Popen[bytes]] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("KSCHED_CACHE") or Path.home() / ".cache" / "ksched").expanduser()


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars() -> Path:
    """Download the broker's jars with Maven once; later calls return the cached directory."""
    libs = libs_dir()
    marker = libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn: Maven is not on PATH; it is needed once to fetch Apache Kafka's jars")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [mvn, "-q", "-B", "-f", str(_HERE / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (tmp / marker.name).exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise BrokerError("maven could not fetch kafka jars: " + " | ".join(tail))
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerInfo:
    data_dir: Path
    port: int
    controller_port: int
    pid: int | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


#: The users of a broker started with `auth`: the admin (the broker's own principal, a super user) and one per
#: ksched role (`ksched.acl`). Passwords are made at the first start and kept in `users.json` (mode 0600).
USERS = ("admin", "ksched-streams", "ksched-executor", "ksched-submitter", "ksched-analytics")
ROLE_USERS = {"streams": "ksched-streams", "executor": "ksched-executor", "submitter": "ksched-submitter",
              "analytics": "ksched-analytics"}
SCRAM = "SCRAM-SHA-512"


def users(data_dir: Path) -> dict[str, str]:
    """The users and passwords of the auth broker in `data_dir` (made on first use)."""
    import json
    import secrets

    path = data_dir / "users.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    made = {u: secrets.token_urlsafe(18) for u in USERS}
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(made))
    return made


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def ca_file(data_dir: Path) -> Path:
    """The certificate of the authority that signed the TLS broker's key: what clients trust (ssl.ca.location)."""
    return tls_dir(data_dir) / "ca.pem"


def has_tls(data_dir: Path) -> bool:
    return ca_file(data_dir).exists()


def _make_tls(data_dir: Path) -> None:
    """A certificate authority of this data dir, and the broker's key with a certificate it signed for
    127.0.0.1 and localhost (kept: clients configured once keep working across restarts). Made with openssl."""
    d = tls_dir(data_dir)
    if (d / "broker.pem").exists():
        return
    if shutil.which("openssl") is None:
        raise BrokerError("openssl: not on PATH; the TLS dev broker makes its certificates with it")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    (d / "ca.cnf").write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = ksched dev CA\n"
                              "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
                              "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n")
    (d / "broker.ext").write_text("subjectAltName = IP:127.0.0.1,DNS:localhost\n"
                                  "extendedKeyUsage = serverAuth,clientAuth\n")
    steps = [
        ["req", "-x509", "-config", "ca.cnf", "-extensions", "v3_ca", "-newkey", "rsa:2048", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650"],
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "broker.crt", "-days", "3650", "-extfile", "broker.ext"],
    ]
    for step in steps:
        done = subprocess.run(["openssl", *step], cwd=d, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"openssl {step[0]} failed: {(done.stdout + done.stderr).strip()[-300:]}")
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key followed by its certificate chain.
    (d / "broker.pem").write_text((d / "broker.key").read_text() + (d / "broker.crt").read_text())
    for name in ("ca.key", "broker.key", "broker.pem"):
        os.chmod(d / name, 0o600)


def _protocol(auth: bool, tls: bool) -> str:
    return {(False, False): "PLAINTEXT", (False, True): "SSL", (True, False): "SASL_PLAINTEXT",
            (True, True): "SASL_SSL"}[(auth, tls)]


def client_properties(data_dir: Path, user: str | None) -> Path:
    """A client properties file (KSCHED_KAFKA_CONFIG) for the broker in `data_dir`: authenticating as `user`
    (an auth broker), trusting its certificate authority (a TLS broker)."""
    auth = (data_dir / "users.json").exists()
    path = data_dir / "clients" / f"{user or 'anonymous'}.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in _client_conf(data_dir, user if auth else None).items()))
    return path


def _client_conf(data_dir: Path, user: str | None = "admin") -> dict[str, str]:
    auth, tls = (data_dir / "users.json").exists(), has_tls(data_dir)
    conf = {"security.protocol": _protocol(auth, tls)} if auth or tls else {}
    if auth and user is not None:
        conf.update({"sasl.mechanism": SCRAM, "sasl.username": user, "sasl.password": users(data_dir)[user]})
    if tls:
        conf["ssl.ca.location"] = str(ca_file(data_dir))
    return conf


def _listeners(data_dir: Path, port: int, controller_port: int, auth: bool, tls: bool = False) -> list[str]:
    client = _protocol(auth, tls)
    key_store = [
        "ssl.keystore.type=PEM", f"ssl.keystore.location={tls_dir(data_dir) / 'broker.pem'}",
        "ssl.truststore.type=PEM", f"ssl.truststore.location={ca_file(data_dir)}",
    ] if tls else []
    if not auth:
        return [
            f"listeners={client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners={client}://127.0.0.1:{port}",
            f"inter.broker.listener.name={client}",
            f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
            *key_store,
        ]
    pw = users(data_dir)["admin"]
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    # Clients and the broker itself authenticate with SCRAM on the client listener (credentials in the cluster's
    # metadata, written at format time); the controller listener, which SCRAM cannot serve in KRaft, with PLAIN
    # and the admin's password. The broker's own principal is the only super user; everyone else needs ACLs.
    return [
        f"listeners={client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners={client}://127.0.0.1:{port}",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map={client}:{client},CONTROLLER:SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={SCRAM}",
        f"sasl.mechanism.inter.broker.protocol={SCRAM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain} required username="admin" password="{pw}" '
        f'user_admin="{pw}";',
        f'listener.name.{client.lower()}.{SCRAM.lower()}.sasl.jaas.config={scram} required username="admin" '
        f'password="{pw}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "allow.everyone.if.no.acl.found=false",
        *key_store,
    ]


def _properties(data_dir: Path, port: int, controller_port: int, auth: bool = False, tls: bool = False) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        *_listeners(data_dir, port, controller_port, auth, tls),
        "controller.listener.names=CONTROLLER",
        f"log.dirs={data_dir / 'logs'}",
        # Topics are created explicitly with their partition counts; a typo must not create one silently.
        "auto.create.topics.enable=false",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=8",
        # An executor killed inside a claim transaction holds up the inbox's readers until it is aborted: look for
        # timed-out transactions every second, not every 10 s (ksched/executor/claims.py, TXN_TIMEOUT_MS).
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Streams workers detect a dead peer within their session timeout (3 s by default); Kafka's default
        # floor of 6 s would refuse it.
        "group.min.session.timeout.ms=1000",
        "log.segment.bytes=67108864",
        "",
    ])


def _read_info(data_dir: Path) -> BrokerInfo | None:
    props = data_dir / "server.properties"
    if not props.exists():
        return None
    port = controller = 0
    for line in props.read_text().splitlines():
        if line.startswith("advertised.listeners="):
            port = int(line.rsplit(":", 1)[1])
        if line.startswith("controller.quorum.bootstrap.servers="):
            controller = int(line.rsplit(":", 1)[1])
    pid_file = data_dir / "broker.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    if pid is not None and not _alive(pid):
        pid = None
    return BrokerInfo(data_dir, port, controller, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def status(data_dir: Path) -> BrokerInfo | None:
    """The broker in `data_dir` if its process is alive, else None."""
    info = _read_info(data_dir)
    return info if info is not None and info.pid is not None else None


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java: no Java runtime on PATH; Kafka needs Java 17 or later")
    return java


def up(data_dir: Path, port: int | None = None, heap_mb: int = 768, timeout_s: float = 90.0,
       auth: bool = False, tls: bool = False) -> BrokerInfo:
    """Start (or find running) the broker in `data_dir`; return once an admin request is answered.
    With `auth`: SASL/SCRAM on, an authorizer that denies what no ACL allows, and the users of `USERS`. With
    `tls`: the client listener speaks TLS, with a key signed by the data dir's own authority (`ca_file`). A data
    dir made with either keeps it."""
    data_dir = data_dir.resolve()
    auth = auth or (data_dir / "users.json").exists()
    tls = tls or has_tls(data_dir)
    running = status(data_dir)
    if running is not None:
        wait_ready(running.bootstrap, timeout_s, conf=_client_conf(data_dir))
        return running
    libs = ensure_jars()
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_info(data_dir)
    if previous is not None and port is None:
        port, controller = previous.port, previous.controller_port
    else:
        port = port or free_port()
        controller = free_port()
    props = data_dir / "server.properties"
    if auth:
        users(data_dir)
    if tls:
        _make_tls(data_dir)
    props.write_text(_properties(data_dir, port, controller, auth, tls))
    java = _java()
    cp = f"{libs}/*"
    log_cfg = f"-Dlog4j2.configurationFile={_HERE / 'log4j2.yaml'}"
    if not (data_dir / "logs" / "meta.properties").exists():
        shutil.rmtree(data_dir / "logs", ignore_errors=True)
        fmt = subprocess.run(
            [java, log_cfg, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
             "-c", str(props), "--standalone",
             *[a for u, pw in (users(data_dir).items() if auth else ()) for a in
               ("--add-scram", f"{SCRAM}=[name={u},password={pw}]")]],
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError("kafka storage format failed: " + (fmt.stdout + fmt.stderr).strip()[-400:])
    logf = open(data_dir / "broker.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [java, f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 256)}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
         "-Djava.awt.headless=true", log_cfg, "-cp", cp, "kafka.Kafka", str(props)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    logf.close()
    _children[proc.pid] = proc  # the broker outlives this call; keep its handle until `down` reaps it
    (data_dir / "broker.pid").write_text(str(proc.pid))
    info = BrokerInfo(data_dir, port, controller, proc.pid)
    try:
        wait_ready(info.bootstrap, timeout_s, proc=proc, conf=_client_conf(data_dir))
    except BrokerError:
        down(data_dir)
        raise
    return info


def _cluster_id() -> str:
    """16 random bytes, base64url without padding; like Kafka's own Uuid.randomUuid, never starting with
    '-' (the storage tool would read it as an option)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def wait_ready(bootstrap: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
               conf: dict[str, str] | None = None) -> None:
    """Block until the broker answers a metadata request from the admin client."""
    from confluent_kafka.admin import AdminClient

    host, port_s = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} during start-up; see its broker.log")
        try:
            with socket.create_connection((host, int(port_s)), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(conf or {})})
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer an admin request within {timeout_s:.0f}s")


def down(data_dir: Path, timeout_s: float = 20.0) -> bool:
    """Stop the broker in `data_dir`. Returns False if none was running."""
    info = _read_info(data_dir.resolve())
    if info is None or info.pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(info.pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(info.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGKILL)
    child = _children.pop(info.pid, None)
    if child is not None:
        child.wait()
    else:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, 0)
    (info.data_dir / "broker.pid").unlink(missing_ok=True)
    return True
