"""Backfill and one-off run ids through the real broker: `ksched backfill` fires a cron job's past occurrences
as runs of their own, within --max-active, each once however often it is asked; `ksched submit` of a one-off
names its run; replay reproduces every backfill decision."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.instants import parse_instant
from ksched.schemas.events import BackfillAccepted, BackfillFinished, RunTriggered
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = pytest.mark.broker

STEP = """
echo "START $KSCHED_SCHEDULED_FOR $(date +%s%N)" >> "$LEDGER"
sleep 0.4
echo "END $KSCHED_SCHEDULED_FOR $(date +%s%N)" >> "$LEDGER"
"""
YEARS = [f"{y}-01-01T00:00:00Z" for y in range(2019, 2025)]


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("backfill")))
    c.streams("w1")
    c.executor(slots=6)
    yield c
    c.stop()


def most_at_once(ledger: Path) -> int:
    level = top = 0
    events = sorted((int(ns), kind) for kind, _, ns in (line.split() for line in ledger.read_text().splitlines()))
    for _, kind in events:  # END sorts before START at the same instant: touching spans do not overlap
        level += 1 if kind == "START" else -1
        top = max(top, level)
    return top


def test_a_backfill_fires_each_past_occurrence_once_within_max_active(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    write_script(tmp_path / "step.sh", STEP)
    path = write_job(tmp_path, "yearly", f'job: yearly\nschedule: "0 0 1 1 *"\nbinary: step.sh\n'
                                         f'env: {{LEDGER: "{ledger}"}}\n')
    assert cluster.ksched("submit", str(path), "--wait", "--timeout", "90").returncode == 0

    r = cluster.ksched("backfill", "yearly", "--from", "2019-01-01T00:00:00Z", "--to", "2024-06-30T00:00:00Z",
                       "--max-active", "2", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "6 occurrences" in r.stdout and "6 not covered" in r.stdout, r.stdout
    assert "first run yearly@backfill-2019-01-01T00:00:00Z" in r.stdout

    def finished() -> list[str] | None:
        runs = [x for x in cluster.status("yearly").ordered_runs() if x.trigger == "BACKFILL"]
        done = [x.run_id for x in runs if x.state == "SUCCEEDED"]
        return done if len(done) == 6 else None

    done = eventually(finished, 120, what="six backfill runs")
    assert sorted(done) == [f"yearly@backfill-{y}" for y in YEARS]
    starts = Counter(line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("START"))
    assert starts == dict.fromkeys(YEARS, 1)
    assert most_at_once(ledger) <= 2
    assert "BACKFILL: 6 runs of past occurrences (6 succeeded)" in cluster.ksched("status", "yearly").stdout

    # The same range again, and one that overlaps it: only the new year runs.
    again = cluster.ksched("backfill", "yearly", "--from", "2019-01-01T00:00:00Z", "--to", "2024-06-30T00:00:00Z",
                           "--timeout", "60")
    assert again.returncode == 0 and "0 not covered" in again.stdout, again.stdout + again.stderr
    more = cluster.ksched("backfill", "yearly", "--from", "2023-01-01T00:00:00Z", "--to", "2025-06-30T00:00:00Z",
                          "--timeout", "60")
    assert "3 occurrences" in more.stdout and "1 not covered" in more.stdout, more.stdout + more.stderr
    eventually(lambda: len([x for x in cluster.status("yearly").ordered_runs()
                            if x.trigger == "BACKFILL" and x.state == "SUCCEEDED"]) == 7 or None, 90,
               what="the seventh backfill run")
    cluster.drain_inbox()
    events = [e for _, e in cluster.records("events") if getattr(e, "job_id", "") == "yearly"]
    backfill_runs = [e for e in events if isinstance(e, RunTriggered) and e.trigger == "BACKFILL"]
    assert len(backfill_runs) == 7 and len({e.run_id for e in backfill_runs}) == 7
    assert len([e for e in events if isinstance(e, BackfillAccepted)]) == 3
    assert len([e for e in events if isinstance(e, BackfillFinished)]) == 3

    bad = cluster.ksched("backfill", "yearly", "--from", "2030-01-01T00:00:00Z", "--to", "2031-01-01T00:00:00Z",
                         "--timeout", "60")
    assert bad.returncode == 2 and "to is in the future" in bad.stderr, bad.stderr


def test_submitting_a_one_off_prints_its_run_id(cluster: Cluster, tmp_path: Path) -> None:
    write_script(tmp_path / "hi.sh", "echo hi\n")
    r = cluster.ksched("submit", str(write_job(tmp_path, "once-id", "job: once-id\nbinary: hi.sh\n")),
                       "--timeout", "90")
    assert r.returncode == 0, r.stderr
    m = re.search(r", run (once-id@\S+)$", r.stdout.strip())
    assert m, r.stdout
    eventually(lambda: cluster.run_states("once-id").get(m.group(1)) == "SUCCEEDED" or None, 90,
               what="the named run to succeed")
    # Its instant has milliseconds where the scheduler's clock gave them (the run's end: the executor's report).
    run = cluster.status("once-id").ordered_runs()[0]
    assert run.finished_at_ms is not None and run.started_at_ms is not None
    assert run.finished_at_ms >= run.started_at_ms
    assert parse_instant(m.group(1).split("@", 1)[1]) == run.scheduled_for_ms


def test_replay_reproduces_the_backfill_decisions(cluster: Cluster) -> None:
    """`ksched replay` exits 0 only when re-deciding the inbox reproduces the decision log."""
    cluster.drain_inbox()
    eventually(lambda: cluster.ksched("replay", timeout=180).returncode == 0 or None, 60, interval=2,
               what="replay agrees with the log")


def test_history_pages_by_time_and_its_pages_add_up_to_the_whole(cluster: Cluster) -> None:
    cluster.drain_inbox()
    whole = json.loads(cluster.ksched("history", "yearly", "--json").stdout)
    assert len(whole) > 20
    pages: list[dict[str, object]] = []
    since: str | None = None
    while True:
        r = cluster.ksched("history", "yearly", "--json", "--limit", "7", *(["--since", since] if since else []))
        page = json.loads(r.stdout)
        assert 0 < len(page) <= 7 or len({e["at_ms"] for e in page}) == 1, len(page)
        pages += page
        more = re.search(r"more from --since (\d+)", r.stderr)
        if more is None:
            break
        since = more.group(1)
    assert [(e["at_ms"], e["type"], e["event"]) for e in pages] == [(e["at_ms"], e["type"], e["event"])
                                                                      for e in whole]
    middle = int(whole[len(whole) // 2]["at_ms"])  # type: ignore[call-overload]
    later = json.loads(cluster.ksched("history", "yearly", "--json", "--since", str(middle)).stdout)
    assert later == [e for e in whole if int(e["at_ms"]) >= middle]  # type: ignore[call-overload]
