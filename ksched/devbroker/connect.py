"""A real Kafka Connect worker (standalone mode, loopback REST) with the Debezium JDBC sink, for development and
tests, and a PostgreSQL server in a directory of its own (Debian's binaries) for it to write to.

The Connect runtime's jars come from Maven Central through `connect-pom.xml` (the broker's Kafka version), the
sink's plugin archive through `mvn dependency:copy`; both are cached under `$KSCHED_CACHE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksched.errors import BrokerError

from . import KAFKA_VERSION, _java, cache_dir, free_port

#: The sink: Debezium's JDBC connector. 3.6.0.Final is the newest whose plugin archive Maven Central serves here
#: (3.6.1.Final has no jdbc plugin archive); it is built against Kafka 4.3.0, the broker runs 4.3.1.
JDBC_SINK = "io.debezium:debezium-connector-jdbc:3.6.0.Final:tar.gz:plugin"
_HERE = Path(__file__).resolve().parent


def connect_dir() -> Path:
    return cache_dir() / f"connect-{KAFKA_VERSION}"


def _mvn(*args: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn: Maven is not on PATH; it is needed once to fetch Kafka Connect's jars")
    proc = subprocess.run([mvn, "-q", "-B", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln][:3]
        raise BrokerError("maven could not fetch Kafka Connect's jars: " + " | ".join(tail))


def ensure_jars() -> tuple[Path, Path]:
    """Download Connect's runtime and the JDBC sink plugin once; returns (libs dir, plugin path)."""
    root = connect_dir()
    libs, plugins = root / "libs", root / "plugins"
    if not (libs / f"connect-runtime-{KAFKA_VERSION}.jar").exists():
        tmp = root / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _mvn("-f", str(_HERE / "connect-pom.xml"), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
    if not (plugins / "debezium-connector-jdbc").is_dir():
        tmp = root / "plugins.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _mvn("dependency:copy", f"-Dartifact={JDBC_SINK}", f"-DoutputDirectory={tmp}")
        for archive in tmp.glob("*.tar.gz"):
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            archive.unlink()
        shutil.rmtree(plugins, ignore_errors=True)
        tmp.rename(plugins)
    return libs, plugins


def _http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
    return json.loads(text) if text else None


@dataclass
class ConnectWorker:
    """A standalone Connect worker in `data_dir` (its properties, offsets file and log)."""

    data_dir: Path
    bootstrap: str
    client: dict[str, str] = field(default_factory=dict)  # security settings for the worker's Kafka clients
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_in_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> ConnectWorker:
        libs, plugins = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        props = {
            "bootstrap.servers": self.bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "offset.storage.file.filename": str(self.data_dir / "offsets"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(plugins),
            "plugin.discovery": "service_load",
            "listeners": f"http://127.0.0.1:{self.port}",
            **self.client, **{f"consumer.{k}": v for k, v in self.client.items()},
            **{f"producer.{k}": v for k, v in self.client.items()},
        }
        path = self.data_dir / "worker.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log_cfg = f"-Dlog4j2.configurationFile={_HERE / 'log4j2.yaml'}"
        logf = open(self.data_dir / "connect.log", "ab")  # noqa: SIM115 - handed to the child process
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [_java(), "-Xmx512m", "-Djava.awt.headless=true", log_cfg, "-cp", f"{libs}/*",
             "org.apache.kafka.connect.cli.ConnectStandalone", str(path)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = began + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"Connect worker exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                _http("GET", f"{self.url}/connector-plugins", timeout=2)
                self.started_in_s = time.monotonic() - began
                return self
            time.sleep(0.25)
        self.stop()
        raise BrokerError(f"Connect worker did not serve its REST API within {timeout_s:.0f}s: {self.tail()}")

    def create(self, config: dict[str, str], timeout_s: float = 60.0) -> None:
        """Create the connector (or update its config) and wait until it and its tasks run."""
        cfg = dict(config)
        name = cfg.pop("name")
        _http("PUT", f"{self.url}/connectors/{name}/config", cfg, timeout=30)
        deadline = time.monotonic() + timeout_s
        status: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, OSError):
                status = _http("GET", f"{self.url}/connectors/{name}/status")
                tasks = status.get("tasks", [])
                failed = [t for t in tasks if t.get("state") == "FAILED"]
                if failed:
                    raise BrokerError(f"connector {name} task failed: {failed[0].get('trace', '')[:600]}")
                if status["connector"]["state"] == "RUNNING" and tasks and all(
                        t["state"] == "RUNNING" for t in tasks):
                    return
            time.sleep(0.25)
        raise BrokerError(f"connector {name} not running within {timeout_s:.0f}s: {status}")

    def status(self, name: str) -> Any:
        return _http("GET", f"{self.url}/connectors/{name}/status")

    def tail(self, n: int = 30) -> str:
        path = self.data_dir / "connect.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _postgres_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BrokerError(f"{name}: PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    return found


@dataclass
class Postgres:
    """A PostgreSQL server of its own in `data_dir`, on loopback, one database, password authentication.
    As root it runs as the `postgres` system user (the server refuses to run as root)."""

    data_dir: Path
    database: str = "analytics"
    user: str = "ksched"
    password: str = "ksched-analytics"
    port: int = 0
    started_in_s: float = 0.0

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(self._as_owner(argv), input=stdin, capture_output=True, text=True, check=False,
                              cwd="/")
        if proc.returncode != 0:
            raise BrokerError(f"{Path(argv[0]).name} failed: {(proc.stdout + proc.stderr).strip()[-500:]}")
        return proc.stdout

    def start(self) -> Postgres:
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        pgdata = self.data_dir / "pgdata"
        self.port = self.port or free_port()
        if not (pgdata / "PG_VERSION").exists():
            pwfile = self.data_dir / "pw"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            self._run([_postgres_bin("initdb"), "-D", str(pgdata), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
            pwfile.unlink()
        self._run([_postgres_bin("pg_ctl"), "-D", str(pgdata), "-l", str(self.data_dir / "postgres.log"), "-w",
                   "-t", "60", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}", "start"])
        if not self.query(f"SELECT 1 FROM pg_database WHERE datname = {_literal(self.database)}",
                          database="postgres"):
            self.query(f'CREATE DATABASE "{self.database}"', database="postgres")
        self.started_in_s = time.monotonic() - began
        return self

    def query(self, sql: str, database: str | None = None) -> list[list[str]]:
        """Rows of `sql` as text (psql's unaligned output), through the loopback port."""
        env = {**os.environ, "PGPASSWORD": self.password}
        proc = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database or self.database,
             "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise BrokerError(f"psql: {proc.stderr.strip()[-400:]}")
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def stop(self) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "postmaster.pid").exists():
            with contextlib.suppress(BrokerError):
                self._run([_postgres_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
