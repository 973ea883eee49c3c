"""`ksched demo`: the whole path on one machine, from nothing to finished runs, then it cleans up.

Starts a local Apache Kafka broker (unless KSCHED_BOOTSTRAP_SERVERS names one), creates the topics, starts
a streams worker and an executor as separate processes, submits an example cron job (every 2 s) and an
example one-off job, and waits until three cron runs and the one-off run have succeeded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from ksched import devbroker
from ksched.config import Settings
from ksched.reader import job_status
from ksched.topics import ensure_topics

from . import render

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _child(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, KSCHED_HOME=str(settings.home), KSCHED_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               KSCHED_PREFIX=settings.prefix)
    out = open(log, "wb")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[1])


def _succeeded(settings: Settings, job: str) -> int:
    return sum(1 for r in job_status(settings, job).runs.values() if r.state == "SUCCEEDED")


def run_demo(settings: Settings, keep_running: bool = False, fresh: bool = True) -> int:
    t0 = time.monotonic()
    home = settings.home / "demo"
    own_broker = "KSCHED_BOOTSTRAP_SERVERS" not in os.environ
    if own_broker and fresh and home.exists():
        devbroker.down(home / "broker")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, home=home)
    if own_broker:
        say(f"starting Apache Kafka {devbroker.KAFKA_VERSION} (KRaft, single node; first run fetches its jars)...")
        tb = time.monotonic()
        port = int(settings.bootstrap_servers.rsplit(":", 1)[1])
        info = devbroker.up(home / "broker", port=port)
        say(f"broker ready at {info.bootstrap} in {time.monotonic() - tb:.1f}s")
    else:
        settings = replace(settings, prefix=f"demo{uuid.uuid4().hex[:6]}")
        say(f"using the cluster at {settings.bootstrap_servers} with topic prefix {settings.prefix}")
    ensure_topics(settings)
    say(f"topics ready (prefix {settings.prefix!r}); see `ksched topics`")
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    children = [
        _child(settings, ["streams", "--name", "demo"], logs / "streams.log"),
        _child(settings, ["executor", "--slots", "4"], logs / "executor.log"),
    ]
    say(f"streams worker (pid {children[0].pid}) and executor (pid {children[1].pid}) started; logs in {logs}")
    env = dict(os.environ, KSCHED_HOME=str(home), KSCHED_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               KSCHED_PREFIX=settings.prefix)
    try:
        for name in ("cron.yaml", "oneoff.yaml"):
            say(f"$ ksched submit examples/{name}")
            subprocess.run([sys.executable, "-m", "cli.main", "submit", str(EXAMPLES / name)], env=env, check=True)
        say("waiting for 3 runs of hello-cron and the run of hello-once to succeed...")
        deadline = time.monotonic() + 180
        cron = once = 0
        while time.monotonic() < deadline:
            for c in children:
                if c.poll() is not None:
                    say(f"a child process exited with code {c.returncode}; see {logs}")
                    return 1
            cron, once = _succeeded(settings, "hello-cron"), _succeeded(settings, "hello-once")
            if cron >= 3 and once >= 1:
                break
            time.sleep(1.0)
        for job in ("hello-cron", "hello-once"):
            say(f"$ ksched status {job}")
            print(render.status_text(job_status(settings, job)), flush=True)
        runs = job_status(settings, "hello-once").ordered_runs()
        if runs:
            say(f"$ ksched logs {runs[-1].run_id}")
            subprocess.run([sys.executable, "-m", "cli.main", "logs", runs[-1].run_id], env=env, check=False)
        ok = cron >= 3 and once >= 1
        say(f"{'done' if ok else 'FAILED'}: {cron} cron runs and {once} one-off run succeeded "
            f"in {time.monotonic() - t0:.1f}s")
        if keep_running:
            say(f"still running (KSCHED_HOME={home}); stop with Ctrl-C")
            try:
                while all(c.poll() is None for c in children):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(20)
            except subprocess.TimeoutExpired:
                c.kill()
        if own_broker:
            devbroker.down(home / "broker")
            say("stopped the streams worker, the executor and the broker")
