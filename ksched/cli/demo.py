"""`ksched demo`: the whole path on one machine, from nothing to finished runs, then it cleans up.

Starts a local Apache Kafka broker (unless KSCHED_BOOTSTRAP_SERVERS names one), creates the topics, starts
a streams worker and an executor as separate processes, submits an example cron job (every 2 s) and an
example one-off job, and waits until three cron runs and the one-off run have succeeded.
"""

from __future__ import annotations

import contextlib
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
from ksched.reader import current_status, group_progress, job_status
from ksched.topics import app_id, ensure_topics

from . import render

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
UI_PORT = 6066


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _child(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "ksched.cli.main", *args], env=_env(settings), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _succeeded(settings: Settings, job: str) -> int:
    return sum(1 for r in job_status(settings, job).runs.values() if r.state == "SUCCEEDED")


def _env(settings: Settings) -> dict[str, str]:
    return dict(os.environ, KSCHED_HOME=str(settings.home), KSCHED_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
                KSCHED_PREFIX=settings.prefix)


def _ksched(settings: Settings, *args: str, check: bool = True) -> None:
    subprocess.run([sys.executable, "-m", "ksched.cli.main", *args], env=_env(settings), check=check)


def _start_broker(settings: Settings, fresh: bool) -> tuple[Settings, bool]:
    """The demo's own broker in its own home (fresh each time unless --reuse), or the configured cluster."""
    home = settings.home / "demo"
    if "KSCHED_BOOTSTRAP_SERVERS" in os.environ:
        settings = replace(settings, home=home, prefix=f"demo{uuid.uuid4().hex[:6]}")
        say(f"using the cluster at {settings.bootstrap_servers} with topic prefix {settings.prefix}")
        return settings, False
    if fresh and home.exists():
        devbroker.down(home / "broker")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, home=home)
    say(f"starting Apache Kafka {devbroker.KAFKA_VERSION} (KRaft, single node; the first run fetches its jars)")
    t0 = time.monotonic()
    info = devbroker.up(home / "broker", port=int(settings.bootstrap_servers.rsplit(":", 1)[1]))
    say(f"broker ready at {info.bootstrap} in {time.monotonic() - t0:.1f}s")
    return settings, True


def _wait_for_runs(settings: Settings, children: list[subprocess.Popen[bytes]], logs: Path) -> tuple[int, int]:
    deadline = time.monotonic() + 180
    cron = once = 0
    while time.monotonic() < deadline:
        for c in children:
            if c.poll() is not None:
                say(f"a child process exited with code {c.returncode}; see {logs}")
                return cron, once
        cron, once = _succeeded(settings, "hello-cron"), _succeeded(settings, "hello-once")
        if cron >= 3 and once >= 1:
            break
        time.sleep(1.0)
    return cron, once


def _show(settings: Settings) -> None:
    api = replace(settings, api_url=f"http://127.0.0.1:{UI_PORT}")  # the owner answers from its table
    for job in ("hello-cron", "hello-once"):
        say(f"$ KSCHED_API_URL={api.api_url} ksched status {job}")
        print(render.status_text(current_status(api, job)), flush=True)
    runs = job_status(settings, "hello-once").ordered_runs()
    if runs:
        say(f"$ ksched logs {runs[-1].run_id}")
        _ksched(settings, "logs", runs[-1].run_id, check=False)



def _analytics(settings: Settings) -> bool:
    """History to SQL: `ksched analytics` writes the rows, a Kafka Connect worker with the Debezium JDBC sink
    lands them in a PostgreSQL of the demo's own; the same runs, counted by SQL and by the views."""
    import tempfile

    from ksched.analytics.connector import jdbc_sink, table_name
    from ksched.devbroker.connect import ConnectWorker, Postgres

    say("analytics: starting PostgreSQL and a Kafka Connect worker with the Debezium JDBC sink "
        "(the first run fetches their jars)")
    pg = Postgres(Path(tempfile.mkdtemp(prefix="ksched-demo-pg-")))
    worker = ConnectWorker(settings.home / "connect", settings.bootstrap_servers)
    try:
        pg.start()
        worker.start()
        say(f"PostgreSQL up in {pg.started_in_s:.1f}s, Connect's REST API in {worker.started_in_s:.1f}s")
        say("$ ksched analytics --once")
        _ksched(settings, "analytics", "--once")
        worker.create(jdbc_sink(settings, pg.jdbc_url, pg.user, pg.password))
        jobs = ("hello-cron", "hello-once")
        views = {j: sum(1 for r in job_status(settings, j).runs.values() if r.state == "SUCCEEDED") for j in jobs}
        runs = table_name(settings, "runs")
        sql = (f"SELECT job_id, count(*) FROM {runs} WHERE state = 'SUCCEEDED' AND job_id IN "
               f"('hello-cron', 'hello-once') GROUP BY job_id ORDER BY job_id")
        deadline = time.monotonic() + 60
        counted: dict[str, int] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the table exists once the sink wrote its first row
                counted = {j: int(n) for j, n in pg.query(sql)}
            if counted == views:
                break
            time.sleep(0.5)
        say(f"$ psql -c \"{sql}\"")
        say("SQL counts " + ", ".join(f"{j}: {counted.get(j, 0)} succeeded runs" for j in jobs)
            + f"; the views say {', '.join(f'{j}: {n}' for j, n in views.items())}")
        say("analytics: SQL and the views agree" if counted == views else "analytics FAILED: SQL and the views differ")
        return counted == views
    finally:
        worker.stop()
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)


def _stop_executor_then_worker(settings: Settings, children: list[subprocess.Popen[bytes]]) -> None:
    """Stop the executor first and let the worker decide what it reported on its way out (its staged attempts
    are handed back), so the decision log the replay compares with is complete."""
    worker, executor = children
    _stop([executor])
    inbox = settings.topic("inbox")
    ends = {p: end for p, (_, end) in group_progress(settings, inbox, app_id(settings)).items()}
    deadline = time.monotonic() + 20
    while worker.poll() is None and time.monotonic() < deadline:
        done = group_progress(settings, inbox, app_id(settings))
        if all(done.get(p, (0, 0))[0] >= end for p, end in ends.items()):
            break
        time.sleep(0.5)
    _stop([worker])


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    for c in children:
        try:
            c.wait(20)
        except subprocess.TimeoutExpired:
            c.kill()


def run_demo(settings: Settings, keep_running: bool = False, fresh: bool = True, analytics: bool = False) -> int:
    t0 = time.monotonic()
    settings, own_broker = _start_broker(settings, fresh)
    children: list[subprocess.Popen[bytes]] = []
    try:
        ensure_topics(settings)
        say(f"topics ready (prefix {settings.prefix!r}); see `ksched topics`")
        logs = settings.home / "logs"
        logs.mkdir(exist_ok=True)
        children += [
            _child(settings, ["streams", "--name", "demo", "--web-port", str(UI_PORT)], logs / "streams.log"),
            _child(settings, ["executor", "--slots", "4"], logs / "executor.log"),
        ]
        say(f"streams worker (pid {children[0].pid}) and executor (pid {children[1].pid}) started; logs: {logs}")
        say(f"web UI and API: http://127.0.0.1:{UI_PORT}/")
        for name in ("cron.yaml", "oneoff.yaml"):
            say(f"$ ksched submit examples/{name}")
            _ksched(settings, "submit", str(EXAMPLES / name))
        say("waiting for 3 runs of hello-cron and the run of hello-once to succeed...")
        cron, once = _wait_for_runs(settings, children, logs)
        _show(settings)
        ok = cron >= 3 and once >= 1
        say(f"{'done' if ok else 'FAILED'}: {cron} cron runs and {once} one-off run succeeded "
            f"in {time.monotonic() - t0:.1f}s")
        if keep_running and ok:
            say(f"still running (KSCHED_HOME={settings.home}); stop with Ctrl-C")
            with contextlib.suppress(KeyboardInterrupt):
                while all(c.poll() is None for c in children):
                    time.sleep(1)
        _stop_executor_then_worker(settings, children)
        if ok and analytics:  # the views stand still now: SQL must count what they count
            ok = _analytics(settings)
        say("$ ksched replay   (the workers have stopped: rebuild the state from the inbox, check the invariants "
            "and compare with the decision log)")
        proved = subprocess.run([sys.executable, "-m", "ksched.cli.main", "replay"], env=_env(settings), check=False)
        return 0 if ok and proved.returncode == 0 else 1
    finally:
        _stop(children)
        if own_broker:
            devbroker.down(settings.home / "broker")
            say("stopped the streams worker, the executor and the broker")
