"""Contained jobs through the whole path (real broker, streams worker, executor with its default isolation):
a job runs as an unprivileged uid, cannot read the executor's files, and leaves nothing running behind it
whether it exits or times out."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Cluster, eventually, settings_for, write_job, write_script

SECRET = "tok-6f1c0e9d-never-in-the-history"
pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (./dev setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only from a root executor"),
]


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("contained")))
    (c.settings.home / "credentials.properties").write_text("sasl.password=hunter2\n")
    secrets = c.settings.home.parent / "secrets"
    secrets.mkdir()
    (secrets / "deploy-token").write_text(SECRET + "\n")
    c.streams("w1")
    c.executor(2, "jailer", "--secrets", str(secrets), contained=True)
    yield c
    c.stop()


def sleepers(tag: str) -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
            and tag in _cmdline(d)]


def _cmdline(d: Path) -> str:
    try:
        return (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_once(cluster: Cluster, name: str, body: str, extra: str = "") -> str:
    """Submit a one-off job running `body`, wait for its run to end, return the run's log."""
    d = cluster.settings.home.parent / f"jobs-{name}"
    d.mkdir(exist_ok=True)
    write_script(d / "job.sh", body)
    r = cluster.ksched("submit", str(write_job(d, name, f"job: {name}\nbinary: job.sh\n{extra}")), "--wait",
                       "--timeout", "120")
    assert r.returncode == 0, r.stderr
    run = eventually(lambda: next((x for x in cluster.status(name).ordered_runs() if x.state in
                                   ("SUCCEEDED", "FAILED")), None), 120, what=f"{name} ended")
    out = cluster.ksched("logs", run.run_id).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("==> "))  # the attempt headers


def test_a_job_runs_unprivileged_and_cannot_read_the_executors_files(cluster: Cluster) -> None:
    home = cluster.settings.home
    log = run_once(cluster, "whoami", f"id -u\ncat {home}/credentials.properties 2>&1\nls {home} | wc -l\n")
    lines = log.strip().splitlines()
    assert int(lines[0]) >= 200_000
    assert "hunter2" not in log and "No such file" in lines[1]


def test_a_setsid_child_does_not_outlive_its_job(cluster: Cluster) -> None:
    tag = f"31{time.monotonic_ns() % 10**8}"
    run_once(cluster, "escaper", f"setsid sleep {tag} &\n(sleep {tag} &)\necho left-children\n")
    eventually(lambda: sleepers(f"sleep {tag}") == [], 10, what="the job's children gone")


def test_a_timed_out_job_takes_its_setsid_children_with_it(cluster: Cluster) -> None:
    tag = f"32{time.monotonic_ns() % 10**8}"
    log = run_once(cluster, "overrun", f"setsid sleep {tag} &\necho started\nsleep 600\n",
                   "timeout: 2s\nretries: {max_attempts: 1}\n")
    assert "started" in log
    assert cluster.status("overrun").ordered_runs()[-1].state == "FAILED"
    eventually(lambda: sleepers(f"sleep {tag}") == [], 10, what="the timed-out job's children gone")


def test_a_secret_reaches_the_job_and_nothing_of_ksched_holds_its_value(cluster: Cluster) -> None:
    import hashlib

    secrets = cluster.settings.home.parent / "secrets"
    log = run_once(cluster, "uses-secret", f'printf %s "$TOKEN" | sha256sum\ncat {secrets}/deploy-token 2>&1 || true\n',
                   "env_from: {TOKEN: 'secret:deploy-token'}\n")
    digest, _ = log.split(maxsplit=1)
    assert digest == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET not in log  # the store itself is hidden from the job
    for topic in ("inbox", "events", "jobs", "runs", "tasks", "commands"):
        assert all(SECRET not in repr(v) for _, v in cluster.records(topic)), topic
    history = cluster.ksched("history", "uses-secret")
    status = cluster.ksched("status", "uses-secret", "--json")
    assert history.returncode == 0 and "SubmitJob" in history.stdout
    assert SECRET not in history.stdout + status.stdout
    assert any("secret:deploy-token" in repr(v) for _, v in cluster.records("inbox"))  # the reference is kept


def test_a_missing_secret_fails_the_attempt_naming_it(cluster: Cluster) -> None:
    name = "needs-missing"
    d = cluster.settings.home.parent / f"jobs-{name}"
    d.mkdir(exist_ok=True)
    write_script(d / "job.sh", "echo should-not-run\n")
    r = cluster.ksched("submit", str(write_job(d, name, f"job: {name}\nbinary: job.sh\n"
                                                        "env_from: {X: 'secret:absent'}\n")), "--wait")
    assert r.returncode == 0, r.stderr
    run = eventually(lambda: next((x for x in cluster.status(name).ordered_runs() if x.state == "FAILED"), None),
                     120, what="the run failed")
    (task,) = cluster.status(name).tasks[run.run_id].values()
    (attempt,) = task.attempts
    assert attempt.reason.startswith("SECRET_MISSING: ") and "no secret 'absent'" in attempt.reason
