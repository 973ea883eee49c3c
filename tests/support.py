"""Helpers for tests against the real broker: wait for facts, run ksched processes, read topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ksched import kafka
from ksched.config import Settings, kafka_security
from ksched.reader import JobStatus, group_progress, job_status, read_partition
from ksched.schemas.codec import default_codec
from ksched.topics import app_id, ensure_topics

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def eventually(fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.25, what: str = "") -> T:
    """Call `fn` until it returns something truthy; fail with its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout:.0f}s: {what or fn.__name__}; last value: {last!r}")


def settings_for(bootstrap: str, home: Path, **overrides: Any) -> Settings:
    base = Settings(bootstrap_servers=bootstrap, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3,
                    ready_partitions=3, control_partitions=2, home=home, heartbeat_s=0.5, lease_s=6.0,
                    commit_interval_s=0.3, kafka=kafka_security(dict(os.environ)))
    return replace(base, **overrides)


def env_for(s: Settings) -> dict[str, str]:
    # The client security settings pass through (a suite run against a secured cluster), the rest is the test's.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KSCHED_") or k == "KSCHED_PROFILE" or k.startswith("KSCHED_KAFKA_")}
    env.update({
        "KSCHED_BOOTSTRAP_SERVERS": s.bootstrap_servers, "KSCHED_PREFIX": s.prefix, "KSCHED_HOME": str(s.home),
        "KSCHED_PARTITIONS": str(s.partitions), "KSCHED_READY_PARTITIONS": str(s.ready_partitions),
        "KSCHED_CONTROL_PARTITIONS": str(s.control_partitions), "KSCHED_HEARTBEAT_S": str(s.heartbeat_s),
        "KSCHED_LEASE_S": str(s.lease_s), "KSCHED_COMMIT_INTERVAL_S": str(s.commit_interval_s),
        "KSCHED_SESSION_TIMEOUT_S": str(s.session_timeout_s),
        "KSCHED_TICK_INTERVAL_S": str(s.tick_interval_s), "KSCHED_TICK_BACKLOG": str(s.tick_backlog),
        "KSCHED_LOOKAHEAD_S": str(s.lookahead_s),
        "KSCHED_KEEP_RUN_VIEWS": str(s.keep_run_views),
    })
    if s.api_url:
        env["KSCHED_API_URL"] = s.api_url
    if s.artifact_url:
        env["KSCHED_ARTIFACTS"] = s.artifact_url
    if s.s3_endpoint_url:
        env["KSCHED_S3_ENDPOINT_URL"] = s.s3_endpoint_url
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def runs(self, needle: str) -> bool:
        """Whether a process below this one (a job it started) has `needle` in its command line."""
        todo, seen = [self.popen.pid], set()
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    kids = [int(k) for k in (task / "children").read_text().split()]
                except OSError:
                    continue
                for kid in kids:
                    if kid in seen:
                        continue
                    seen.add(kid)
                    todo.append(kid)
                    try:
                        if needle.encode() in Path(f"/proc/{kid}/cmdline").read_bytes():
                            return True
                    except OSError:
                        pass
        return False

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


LIVE: list[Cluster] = []  # clusters whose process logs are printed when a test fails


@dataclass
class Cluster:
    """A private ksched installation (its own topic prefix) on the shared test broker."""

    settings: Settings
    procs: list[Proc] = field(default_factory=list)
    #: On a secured broker: the client properties file of each role ("streams", "executor", "submitter");
    #: each process gets its role's (the CLI is a submitter). `settings.kafka` is what this test process uses.
    credentials: dict[str, Path] = field(default_factory=dict)
    #: More environment for every process (API tokens, ...).
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings)
        LIVE.append(self)

    @property
    def env(self) -> dict[str, str]:
        return env_for(self.settings)

    def env_of(self, role: str) -> dict[str, str]:
        env = {**self.env, **self.extra_env}
        if role in self.credentials:
            env["KSCHED_KAFKA_CONFIG"] = str(self.credentials[role])
        return env

    def _spawn(self, name: str, args: list[str], role: str) -> Proc:
        log = self.settings.home / f"{name}.{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "ksched.cli.main", *args], env=self.env_of(role),
                                     cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def streams(self, name: str = "w1", web_port: int | None = None) -> Proc:
        args = ["streams", "--name", name, "--loglevel", os.environ.get("KSCHED_TEST_LOGLEVEL", "warning")] + (
            ["--web-port", str(web_port)] if web_port else [])
        return self._spawn(f"streams-{name}", args, "streams")

    def executor(self, slots: int = 4, executor_id: str | None = None, *extra: str, contained: bool = False) -> Proc:
        """An executor. Its jobs run uncontained unless `contained`: most tests' jobs append to one ledger
        file in the test's directory, which contained jobs (each attempt its own uid, the home hidden) cannot
        do; tests/unit/test_containment.py and test_executor.py's contained tests run the default."""
        args = ["executor", "--slots", str(slots), *extra, *([] if contained else ["--uncontained"])]
        if executor_id:
            args += ["--id", executor_id]
        return self._spawn(f"executor-{executor_id or len(self.procs)}", args, "executor")

    def ksched(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if "--timeout" in args:  # the command's own wait, and a margin: a loaded machine must fail in it, not here
            timeout = max(timeout, float(args[args.index("--timeout") + 1]) + 30)
        return subprocess.run([sys.executable, "-m", "ksched.cli.main", *args], env=self.env_of("submitter"),
                              cwd=REPO, text=True, capture_output=True, timeout=timeout, check=False)

    def status(self, job: str) -> JobStatus:
        return job_status(self.settings, job)

    def succeeded_runs(self, job: str) -> list[str]:
        return [r.run_id for r in self.status(job).ordered_runs() if r.state == "SUCCEEDED"]

    def run_states(self, job: str) -> dict[str, str]:
        return {r.run_id: r.state for r in self.status(job).ordered_runs()}

    def inbox_progress(self) -> dict[int, tuple[int, int]]:
        """Per inbox partition: (the streams workers' committed offset, the partition's end offset)."""
        return group_progress(self.settings, self.settings.topic("inbox"), app_id(self.settings))

    def processed(self, partition: int, offset: int) -> bool:
        """Whether the streams worker has processed inbox record `offset` of `partition`, and every decision
        and view it made for that record and the ones before it is on the broker: Faust commits an input's
        offset only after flushing the outputs (the publisher's flush is part of Faust's)."""
        return self.inbox_progress().get(partition, (0, 0))[0] > offset

    def wait_processed(self, partition: int, offset: int, timeout: float = 60.0) -> None:
        eventually(lambda: self.processed(partition, offset), timeout,
                   what=f"the worker processed inbox[{partition}]@{offset}")

    def drain_inbox(self, timeout: float = 60.0) -> dict[int, int]:
        """Wait until the worker has processed every inbox record written so far, in every partition.

        After this, every decision caused by those records can be read: a test that counts decisions exactly
        counts them after a drain, so that a duplicate still on its way cannot arrive after the count.
        Returns the end offsets that were drained."""
        ends = {p: end for p, (_, end) in self.inbox_progress().items()}
        eventually(lambda: all(self.inbox_progress().get(p, (0, 0))[0] >= end for p, end in ends.items()),
                   timeout, what=f"the worker processed the inbox up to {ends}")
        return ends

    def records(self, topic: str) -> list[tuple[bytes | None, Any]]:
        """Every decodable record of a topic (all partitions), as (key, event)."""
        codec = default_codec()
        out = []
        name = self.settings.topic(topic)
        md = kafka.admin(self.settings).list_topics(name, timeout=10)
        for p in md.topics[name].partitions:
            for m in read_partition(self.settings, name, p):
                if m.value() is not None:
                    try:
                        out.append((m.key(), codec.decode(m.value())))
                    except Exception:
                        out.append((m.key(), m.value()))
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self in LIVE:
            LIVE.remove(self)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{p.tail()}" for p in self.procs)


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def write_job(directory: Path, name: str, yaml_text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml_text)
    return path
