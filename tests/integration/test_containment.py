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

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (./dev setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only from a root executor"),
]


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("contained")))
    (c.settings.home / "credentials.properties").write_text("sasl.password=hunter2\n")
    c.streams("w1")
    c.executor(2, "jailer", contained=True)
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
