"""The HTTP API with two streams workers (requests for keys the other worker owns are answered by it), the
metrics endpoint, and the web UI clicked through in a real headless Chromium, from job to log."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis

from ksched.partitioning import partition_for
from tests.support import REPO, Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker
PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> Any:
    """GET and decode; a 503 (the key's owner is unknown while the workers rebalance) is retried, as told."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                body = r.read().decode()
                return json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def one_job_per_partition() -> list[str]:
    names: dict[int, str] = {}
    i = 0
    while len(names) < PARTITIONS:
        names.setdefault(partition_for(f"api-{i}", PARTITIONS), f"api-{i}")
        i += 1
    return [names[p] for p in range(PARTITIONS)]


@pytest.fixture(scope="module")
def web(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[int], Path]]:
    home = tmp_path_factory.mktemp("web")
    c = Cluster(settings_for(bootstrap, home / "home", partitions=PARTITIONS))
    ports = [free_port(), free_port()]
    c.streams("w1", web_port=ports[0])
    c.streams("w2", web_port=ports[1])
    c.executor(slots=4, contained=True)
    write_script(home / "hello.sh", 'echo "hello from $KSCHED_TASK_ID"\n')
    for job_id in one_job_per_partition():
        r = c.ksched("submit", str(write_job(home, job_id, f"job: {job_id}\nbinary: hello.sh\n")), "--wait",
                     "--timeout", "120")
        assert r.returncode == 0, r.stderr
    yield c, ports, home
    c.stop()


def test_each_job_is_answered_by_the_worker_that_owns_it_whichever_worker_is_asked(web: Any) -> None:
    cluster, ports, _ = web
    owners = {}
    for job_id in one_job_per_partition():
        eventually(lambda j=job_id: cluster.succeeded_runs(j), 60, what=f"{job_id} ran")
        # Both workers give the same answer, from the owner; while a rebalance moves the partition the owner
        # can change between the two requests, so ask until the group is settled.
        answers = eventually(lambda j=job_id: (a := [get(port, f"/api/jobs/{j}") for port in ports])[0] == a[1]
                             and a, 60, what=f"the same answer for {job_id} from both workers")
        assert answers[0]["job_id"] == job_id and answers[0]["revision"] == 1
        owners[job_id] = answers[0]["served_by"]
    assert set(owners.values()) == {"w1", "w2"}, owners


def test_runs_can_be_filtered_by_state_and_time_and_carry_attempts(web: Any) -> None:
    _, ports, _ = web
    job_id = one_job_per_partition()[0]
    all_runs = eventually(lambda: [r for r in get(ports[1], f"/api/jobs/{job_id}/runs")["runs"]
                                   if r["state"] == "SUCCEEDED"], 60)
    (run,) = all_runs
    (task,) = run["tasks"]
    assert task["attempts"][0]["exit_code"] == 0 and task["attempts"][0]["started_at_ms"]
    assert get(ports[0], f"/api/jobs/{job_id}/runs?state=FAILED")["runs"] == []
    t = run["scheduled_for_ms"]
    assert len(get(ports[0], f"/api/jobs/{job_id}/runs?since={t}&until={t}")["runs"]) == 1
    assert get(ports[0], f"/api/jobs/{job_id}/runs?since={t + 1}")["runs"] == []
    one = get(ports[0], f"/api/runs/{run['run_id']}")
    assert one["run_id"] == run["run_id"] and one["dependencies"] == {"main": []}
    log = get(ports[1], f"/api/runs/{run['run_id']}/tasks/main/attempts/1/log")
    assert f"hello from {run['run_id']}/main" in log


def test_history_openapi_and_metrics(web: Any) -> None:
    _, ports, _ = web
    job_id = one_job_per_partition()[1]
    types = [e["type"] for e in get(ports[0], f"/api/jobs/{job_id}/history")["events"]]
    # (A quick attempt's start is reported with its end: no TaskStarted is required.)
    for expected in ("SubmitJob", "JobAccepted", "RunTriggered", "ClaimTask", "ClaimGranted", "TaskCompleted",
                     "RunFinished"):
        assert expected in types
    spec = get(ports[1], "/api/openapi.json")
    assert spec["openapi"].startswith("3.") and "/api/jobs/{job_id}/runs" in spec["paths"]
    metrics = get(ports[0], "/metrics") + get(ports[1], "/metrics")
    for series in ("ksched_firing_lag_seconds_bucket", "ksched_handoff_seconds_bucket", "ksched_running_tasks",
                   "ksched_retries_total", "ksched_dead_letters_total", "ksched_ready_queue_depth",
                   "ksched_inbox_records_total"):
        assert series in metrics


def test_the_web_ui_from_job_to_log_in_a_real_browser(web: Any) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (./dev setup installs it where it can)")
    playwright = pytest.importorskip("playwright.sync_api")
    cluster, ports, home = web
    write_script(home / "step.sh", 'echo "step $KSCHED_TASK_ID"\n[ "$1" = fail ] && exit 4\nexit 0\n')
    dag = write_job(home, "ui-dag", """
job: ui-dag
schedule: "*/3 * * * * *"
tasks:
  build: {binary: step.sh}
  test: {binary: step.sh, depends_on: [build], args: [fail]}
  deploy: {binary: step.sh, depends_on: [test]}
  report: {binary: step.sh, depends_on: [test], trigger_rule: all_done}
""")
    assert cluster.ksched("submit", str(dag), "--wait").returncode == 0
    eventually(lambda: [r for r in cluster.status("ui-dag").ordered_runs() if r.state == "FAILED"], 60)
    shots = REPO / "tests" / "screenshots"
    shots.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{ports[0]}/")
        page.click("a.job-link[data-job='ui-dag']")
        page.wait_for_selector("#grid td.cell[data-task='test'][data-state='FAILED']")
        rows_before = page.locator("#grid tr.run-row").count()
        # It updates itself: a new cron run appears without reloading the page.
        page.wait_for_function(f"document.querySelectorAll('#grid tr.run-row').length > {rows_before}",
                               timeout=30_000)
        page.screenshot(path=str(shots / "ui-run-grid.png"))
        page.locator("#grid tr.run-row").last.locator("a.run-link").click()
        page.wait_for_selector("svg#dag g.node[data-task='deploy'][data-state='UPSTREAM_FAILED']")
        assert page.locator("svg#dag g.node").count() == 4
        assert page.locator("svg#dag g.node[data-task='report']").get_attribute("data-state") == "SUCCEEDED"
        page.screenshot(path=str(shots / "ui-run-dag.png"))
        page.click("tr.attempt-row[data-task='test'] a.log-link")
        page.wait_for_selector("pre#log")
        assert "step " in page.inner_text("pre#log") and "/test" in page.inner_text("pre#log")
        page.screenshot(path=str(shots / "ui-log.png"))
        browser.close()
    assert (shots / "ui-run-dag.png").stat().st_size > 1000


def test_a_run_the_state_no_longer_holds_is_served_from_the_views(web: Any) -> None:
    """A job's state keeps its 5 latest finished runs; an older run is still answered, from the views topics,
    and a recent one from the state, the same way."""
    cluster, ports, home = web
    job_id = "api-every-second"
    r = cluster.ksched("submit", str(write_job(home, job_id, f'job: {job_id}\nschedule: "* * * * * *"\n'
                                                               "binary: hello.sh\n")), "--wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    done = eventually(lambda: len(s := cluster.succeeded_runs(job_id)) >= 7 and s, 90, what="7 runs succeeded")
    assert cluster.ksched("pause", job_id).returncode == 0
    oldest, newest = done[0], done[-1]  # with 7 finished, the oldest two are out of the state (it keeps 5)
    for run_id in (oldest, newest):
        got = get(ports[0], f"/api/runs/{run_id}")
        assert (got["run_id"], got["state"], got["dependencies"]) == (run_id, "SUCCEEDED", {"main": []}), got
        assert got["tasks"][0]["attempts"][0]["exit_code"] == 0


def status_of(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.parametrize(
    ("query", "param"),
    [("limit=abc", "limit"), ("limit=-5", "limit"), ("since=notatime", "since"), ("state=NOPE", "state"),
     ("until=2026-01-01T00:00:00", "until"), ("bogus=1", "bogus")],
)
def test_a_bad_query_parameter_is_a_400_that_names_it(web: Any, query: str, param: str) -> None:
    _, ports, _ = web
    job_id = one_job_per_partition()[0]
    status, body = status_of(ports[1], f"/api/jobs/{job_id}/runs?{query}")
    assert (status, body["param"]) == (400, param)
    assert body["error"].startswith(f"{param}: ")


def test_no_request_the_openapi_description_allows_gets_a_server_error(web: Any) -> None:
    """Requests generated from GET /api/openapi.json (a bounded number over all operations). 503 is the
    documented answer while a key's owner is not known (a rebalance); any other 5xx is a defect."""
    _, ports, _ = web
    base = f"http://127.0.0.1:{ports[0]}"
    schema = schemathesis.openapi.from_url(f"{base}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = json.loads((REPO / "ksched" / "streams" / "openapi.json").read_text())["paths"]
    assert {op.path for op in operations} == set(documented) - {"/api/openapi.json"}  # it skips its own source
    seen: list[int] = []

    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=hypothesis.strategies.one_of([op.as_strategy() for op in operations]))
    def no_server_error(case: Any) -> None:
        response = case.call(base_url=base, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500 or response.status_code == 503, (
            case.method, case.formatted_path, case.query, response.status_code, response.text[:300])

    no_server_error()
    assert len(seen) >= 50 and 400 in seen  # it did reach the API, and sent it bad parameters
