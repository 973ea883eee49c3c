"""History to analytics, end to end: the real broker, streams worker and executor run jobs; `ksched analytics`
writes their rows; a real Kafka Connect worker with the Debezium JDBC sink (both from Maven Central) lands them
in a real PostgreSQL (Debian's server, started here in a directory of its own); SQL answers what `ksched
status` answers, and delivering every record again changes no row."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksched.analytics.connector import jdbc_sink, table_name
from ksched.devbroker.connect import ConnectWorker, Postgres
from ksched.reader import end_offsets, group_progress
from ksched.topics import analytics_topic
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = [pytest.mark.broker, pytest.mark.analytics]

JOBS = {"an-ok": (0, 4), "an-bad": (3, 3)}  # job -> (exit code, runs)
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("psql") is None:
        pytest.skip("PostgreSQL is not installed (./dev installs Debian's postgresql)")
    home = tmp_path_factory.mktemp("analytics")
    c = Cluster(settings_for(bootstrap, home))
    c.streams("w1")
    c.executor(slots=4)
    # The server runs as the postgres user when this is root: its directory must not sit under pytest's 0700 one.
    pg = Postgres(Path(tempfile.mkdtemp(prefix="ksched-pg-")))
    worker = ConnectWorker(home / "connect", bootstrap)
    try:
        pg.start()
        worker.start()
        yield {"cluster": c, "pg": pg, "connect": worker, "home": home}
    finally:
        worker.stop()
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)
        c.stop()


def _run_jobs(c: Cluster, home: Path) -> None:
    write_script(home / "job.sh", 'sleep 0.$(( $$ % 4 )); exit "$1"\n')
    for job, (code, runs) in JOBS.items():
        path = write_job(home, job, f"job: {job}\nbinary: job.sh\nargs: ['{code}']\n"
                                    "retries: {max_attempts: 2, backoff: 100ms}\n")
        r = c.ksched("submit", str(path), "--wait", "--timeout", "90")
        assert r.returncode == 0, r.stderr
        for _ in range(runs - 1):
            assert c.ksched("trigger", job).returncode == 0
    for job, (_, runs) in JOBS.items():
        eventually(lambda j=job, n=runs: sum(r.state in FINISHED for r in c.status(j).ordered_runs()) >= n or None,
                   120, what=f"{runs} finished runs of {job}")
    c.drain_inbox()


def _project(c: Cluster, group: str = "") -> None:
    r = c.ksched("analytics", "--once", *(["--group", group] if group else []), timeout=120)
    assert r.returncode == 0, r.stderr


def _landed(stack: dict[str, Any]) -> None:
    """Wait until the sink has consumed every analytics record written so far."""
    c: Cluster = stack["cluster"]
    group = "connect-" + jdbc_sink(c.settings, "", "", "")["name"]
    topics = [analytics_topic(c.settings, t) for t in ("runs", "tasks", "attempts", "decisions")]
    ends = {t: end_offsets(c.settings, t) for t in topics}

    def caught_up() -> bool | None:
        for t in topics:
            done = group_progress(c.settings, t, group)
            if any(done.get(p, (0, 0))[0] < end for p, end in ends[t].items() if end > 0):
                status = stack["connect"].status(jdbc_sink(c.settings, "", "", "")["name"])
                if any(task["state"] == "FAILED" for task in status["tasks"]):
                    raise AssertionError(f"sink task failed: {status}")
                return None
        return True

    eventually(caught_up, 120, what="the sink to consume every analytics record")


def _snapshot(pg: Postgres, c: Cluster) -> dict[str, list[list[str]]]:
    out = {}
    for table, key in (("runs", "run_id"), ("tasks", "task_id"), ("attempts", "attempt_id"),
                       ("decisions", "event_id")):
        out[table] = pg.query(f"SELECT * FROM {table_name(c.settings, table)} ORDER BY {key}")
    return out


def _p95(values: list[int]) -> float:
    """PostgreSQL's percentile_cont(0.95): linear interpolation between the closest ranks."""
    s = sorted(values)
    pos = 0.95 * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def test_sql_over_the_sinks_tables_answers_what_status_answers(stack: dict[str, Any]) -> None:
    c: Cluster = stack["cluster"]
    pg: Postgres = stack["pg"]
    _run_jobs(c, stack["home"])
    _project(c)
    stack["connect"].create(jdbc_sink(c.settings, pg.jdbc_url, pg.user, pg.password))
    _landed(stack)
    runs_t, tasks_t, attempts_t, decisions_t = (table_name(c.settings, t)
                                                for t in ("runs", "tasks", "attempts", "decisions"))

    # What `ksched status --json` says, per job: runs per state, failure rate, p95 run duration.
    expected: dict[str, Any] = {}
    for job in JOBS:
        r = c.ksched("status", job, "--json")
        assert r.returncode == 0, r.stderr
        runs = json.loads(r.stdout)["runs"]
        by_state = Counter(run["state"] for run in runs)
        durations = [run["finished_at_ms"] - run["started_at_ms"] for run in runs
                     if run["finished_at_ms"] is not None and run["started_at_ms"] is not None]
        expected[job] = (dict(by_state), by_state["FAILED"] / len(runs), _p95(durations))

    got: dict[str, Any] = {}
    for job in JOBS:
        states = dict((s, int(n)) for s, n in pg.query(
            f"SELECT state, count(*) FROM {runs_t} WHERE job_id = '{job}' GROUP BY state"))
        ((rate, p95),) = pg.query(
            f"SELECT avg((state = 'FAILED')::int)::float8, "
            f"percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM {runs_t} WHERE job_id = '{job}'")
        got[job] = (states, float(rate), float(p95))
    assert got == expected
    assert expected["an-ok"][0] == {"SUCCEEDED": 4} and expected["an-bad"][0] == {"FAILED": 3}

    # Flat rows a SQL user expects: each failed run's task tried twice, with exit code 3 and its executor.
    rows = pg.query(f"SELECT t.state, t.attempts, t.exit_code, count(a.*) FROM {tasks_t} t "
                    f"JOIN {attempts_t} a USING (task_id) WHERE t.job_id = 'an-bad' "
                    "GROUP BY t.task_id, t.state, t.attempts, t.exit_code")
    assert rows and all(r == ["FAILED", "2", "3", "2"] for r in rows), rows
    assert pg.query(f"SELECT count(*) FROM {attempts_t} WHERE executor_id = '' OR started_at IS NULL") == [["0"]]
    # The audit table holds every decision of the log, by type.
    logged = Counter(t for t, in pg.query(f"SELECT type FROM {decisions_t} WHERE job_id LIKE 'an-%'"))
    assert logged["RunTriggered"] == 7 and logged["RunFinished"] == 7 and logged["RetryScheduled"] == 3
    assert pg.query(f"SELECT data_type FROM information_schema.columns WHERE table_name = '{runs_t}' "
                    "AND column_name = 'finished_at'")[0][0].startswith("timestamp")

    # Delivering every record twice: a second projection from the beginning, under a new group.
    before = _snapshot(pg, c)
    ends = {t: sum(end_offsets(c.settings, analytics_topic(c.settings, t)).values()) for t in before}
    _project(c, group=f"{c.settings.prefix}-analytics-again")
    assert all(sum(end_offsets(c.settings, analytics_topic(c.settings, t)).values()) > ends[t] for t in ends), \
        "the second projection wrote nothing: the redelivery would prove nothing"
    _landed(stack)
    assert _snapshot(pg, c) == before
    print(f"\nConnect worker's REST API up in {stack['connect'].started_in_s:.1f}s, "
          f"PostgreSQL in {stack['pg'].started_in_s:.1f}s")
