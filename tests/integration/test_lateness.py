"""Real lateness through the real broker: an executor whose only slot is taken does not start a cron
attempt after its misfire grace; the occurrence is recorded missed with the lateness the executor measured,
the run ends cancelled (not failed, not retried), and once the slot is free the job runs on time again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.schemas.events import OccurrenceMissed, TaskReady
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("late")))
    c.streams("w1")
    c.executor(slots=1)
    yield c
    c.stop()


def test_an_attempt_that_would_start_past_its_grace_is_missed_not_run(cluster: Cluster, tmp_path: Path) -> None:
    write_script(tmp_path / "hog.sh", "sleep 6\n")
    write_script(tmp_path / "tick.sh", "exit 0\n")
    tight = write_job(tmp_path, "tight", 'job: tight\nschedule: "* * * * * *"\nmisfire: skip\n'
                                         "misfire_grace: 1s\nbinary: tick.sh\n")
    assert cluster.ksched("submit", str(tight), "--wait", "--timeout", "90").returncode == 0
    eventually(lambda: any(r.state == "SUCCEEDED" for r in cluster.status("tight").ordered_runs()) or None, 60,
               what="tight runs on time while the slot is free")
    hog = write_job(tmp_path, "hog", "job: hog\nbinary: hog.sh\npriority: high\n")
    assert cluster.ksched("submit", str(hog), "--timeout", "90").returncode == 0

    def missed() -> list[OccurrenceMissed] | None:
        found = [e for _, e in cluster.records("events")
                 if isinstance(e, OccurrenceMissed) and e.job_id == "tight" and "not started" in e.reason]
        return found if len(found) >= 2 else None

    found = eventually(missed, 60, what="occurrences missed at the executor while the hog holds the slot")
    assert all("(misfire grace 1s)" in e.reason and e.policy == "skip" for e in found)
    # The views follow the decisions (a view may lag its decision by the publisher's coalescing linger).
    instants = {e.scheduled_for_ms for e in found}
    eventually(lambda: all(r.state == "CANCELLED" for r in cluster.status("tight").ordered_runs()
                           if r.scheduled_for_ms in instants), 30, what="the views of the missed runs")
    runs = {r.run_id: r for r in cluster.status("tight").ordered_runs()}
    for e in found:
        run = next(r for r in runs.values() if r.scheduled_for_ms == e.scheduled_for_ms)
        assert run.state == "CANCELLED" and run.reason.startswith("missed: not started"), run
        (task,) = cluster.status("tight").tasks[run.run_id].values()
        assert [a.outcome for a in task.attempts] == ["MISSED"] and task.attempts[0].started_at_ms is None
    # Never retried: each missed occurrence's task was offered once.
    offered = [e for _, e in cluster.records("events") if isinstance(e, TaskReady) and e.job_id == "tight"]
    missed_runs = {e.scheduled_for_ms for e in found}
    assert all(r.attempt == 1 for r in offered if r.scheduled_for_ms in missed_runs)
    # The hog done, the job runs on time again, and status shows how late each run started.
    eventually(lambda: any(r.state == "SUCCEEDED" for r in cluster.status("hog").ordered_runs()) or None, 60,
               what="the hog to finish")
    last = max(e.scheduled_for_ms for e in found)
    eventually(lambda: any(r.state == "SUCCEEDED" and r.scheduled_for_ms > last
                           for r in cluster.status("tight").ordered_runs()) or None, 60, what="tight on time again")
    text = cluster.ksched("status", "tight").stdout
    assert " LATE " in text.splitlines()[1] and "CANCELLED" in text
