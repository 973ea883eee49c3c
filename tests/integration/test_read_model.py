"""The read model through a real broker and worker: views trimmed to the last KSCHED_KEEP_RUN_VIEWS finished runs
(tombstones for older ones, the decision log keeps all), `ksched status` answered by the job's owner from its
table through the API, and `ksched wait` likewise."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from ksched.cli.commands import send_and_wait
from ksched.reader import read_partition
from ksched.schemas.events import RunFinished, TriggerJob
from tests.integration.test_web import free_port, get
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker
KEEP = 6  # the state holds 5 finished runs; one more is kept in the views only
RUNS = 10


def test_views_are_trimmed_and_status_is_answered_by_the_owner(bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    c = Cluster(settings_for(bootstrap, tmp_path / "home", keep_run_views=KEEP))
    try:
        c.streams("w1", web_port=port)
        c.executor(slots=2)
        write_script(tmp_path / "hello.sh", "echo hi\n")
        r = c.ksched("submit", str(write_job(tmp_path, "rm", "job: rm\nbinary: hello.sh\n")), "--timeout", "120")
        assert r.returncode == 0, r.stderr
        # One run at a time, so they finish in order: each trigger waits for the previous run's end.
        for n in range(1, RUNS):
            eventually(lambda n=n: len(_finished(c)) >= n, 120, what=f"run {n} finished")
            send_and_wait(c.settings, "rm", TriggerJob(f"trigger-{n}", "rm", 0), None, 0)
        eventually(lambda: len(_finished(c)) == RUNS, 120, what="all runs finished")
        finished = _finished(c)
        c.drain_inbox()
        assert {d.state for d in finished} == {"SUCCEEDED"}
        latest = [d.run_id for d in sorted(finished, key=lambda d: d.at_ms)]

        # The views keep the last KEEP runs; older ones were tombstoned, their tasks too.
        views = c.status("rm")
        assert sorted(views.runs) == sorted(latest[-KEEP:])
        assert sorted(views.tasks) == sorted(latest[-KEEP:])
        assert sorted(_tombstones(c, "runs")) == sorted(latest[:-KEEP])
        assert sorted(_tombstones(c, "tasks")) == sorted(f"{r}/main" for r in latest[:-KEEP])

        # `ksched status` through the API: the owner's table, the 5 runs it holds, and a pointer to older ones.
        api = replace(c.settings, api_url=f"http://127.0.0.1:{port}")
        status = _ksched(c, api, "status", "rm", "--json")
        assert [r["run_id"] for r in json.loads(status.stdout)["runs"]] == latest[-5:]
        text = _ksched(c, api, "status", "rm").stdout
        assert "older ones: ksched runs rm" in text and latest[-6] not in text
        # Without the API, the views: the 6 they keep.
        assert [r["run_id"] for r in json.loads(c.ksched("status", "rm", "--json").stdout)["runs"]] == latest[-KEEP:]
        # The API's run listing merges the table with the views.
        assert [r["run_id"] for r in get(port, "/api/jobs/rm/runs?limit=0")["runs"]] == latest[-KEEP:]
        assert get(port, "/api/jobs/rm")["older_runs"] is True
        # `ksched wait` asks the owner too.
        assert _ksched(c, api, "wait", latest[-1], "--timeout", "30").returncode == 0

        replayed = c.ksched("replay", timeout=180)
        assert replayed.returncode == 0 and "all invariants hold" in replayed.stdout, replayed.stdout[-2000:]
    finally:
        c.stop()


def _finished(c: Cluster) -> list[RunFinished]:
    return [e for k, e in c.records("events") if k == b"rm" and isinstance(e, RunFinished)]


def _tombstones(c: Cluster, topic: str) -> list[str]:
    name = c.settings.topic(topic)
    return [m.key().decode() for p in range(c.settings.partitions) for m in read_partition(c.settings, name, p)
            if m.value() is None and m.key()]


def _ksched(c: Cluster, settings: object, *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    from tests.support import REPO, env_for

    env = env_for(settings)  # type: ignore[arg-type]
    return subprocess.run([sys.executable, "-m", "ksched.cli.main", *args], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=90, check=False)
