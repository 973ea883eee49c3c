"""kill -9 the streams worker in the middle of per-second cron occurrences, restart it, and check that
every occurrence due meanwhile was fired or recorded as missed per policy, none twice, and every run that
fired was executed exactly once."""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.schemas.events import OccurrenceMissed, RunTriggered
from tests.support import Cluster, eventually, settings_for, write_job, write_script

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path) -> Iterator[Cluster]:
    # Look-ahead off: with it, occurrences due during a short outage were already fired before it began.
    c = Cluster(settings_for(bootstrap, tmp_path / "home", lookahead_s=0.0))
    yield c
    c.stop()


def decided(cluster: Cluster, job_id: str) -> tuple[dict[int, int], dict[int, int], set[int]]:
    """Per scheduled instant: how many distinct RunTriggered and OccurrenceMissed decisions exist (missed by a
    late tick), and the instants whose run fired but whose executor did not start it past its grace (missed at
    the edge: a run and a miss for one occurrence, which is one decision each, not two of one kind)."""
    fired: dict[int, set[str]] = collections.defaultdict(set)
    missed: dict[int, set[str]] = collections.defaultdict(set)
    at_edge: set[int] = set()
    for key, e in cluster.records("events"):
        if key != job_id.encode():
            continue
        if isinstance(e, RunTriggered):
            fired[e.scheduled_for_ms].add(e.event_id)
        elif isinstance(e, OccurrenceMissed) and "not started" in e.reason:
            at_edge.add(e.scheduled_for_ms)
        elif isinstance(e, OccurrenceMissed):
            missed[e.scheduled_for_ms].add(e.event_id)
    return {t: len(v) for t, v in fired.items()}, {t: len(v) for t, v in missed.items()}, at_edge


def test_killing_the_streams_worker_loses_and_doubles_nothing(cluster: Cluster, tmp_path: Path) -> None:
    ledgers = {name: tmp_path / f"{name}.ledger" for name in ("sec-all", "sec-skip")}
    for name, policy in (("sec-all", "misfire: all\ncatchup_window: 1h"), ("sec-skip", "misfire: skip")):
        write_script(tmp_path / f"{name}.sh", f'echo "$KSCHED_TASK_ID $KSCHED_ATTEMPT" >> {ledgers[name]}\n')
        write_job(tmp_path, name, f"job: {name}\nschedule: '* * * * * *'\nbinary: {name}.sh\n{policy}\n"
                                  "misfire_grace: 2s\n")
    worker = cluster.streams("w1")
    cluster.executor(slots=8)
    for name in ledgers:
        r = cluster.ksched("submit", str(tmp_path / f"{name}.yaml"), "--wait", "--timeout", "90")
        assert r.returncode == 0, r.stderr
    for name in ledgers:
        eventually(lambda n=name: len(cluster.succeeded_runs(n)) >= 3, 90, what=f"{name} runs")

    worker.kill9()
    down_at = int(time.time()) * 1000
    time.sleep(6)  # occurrences keep falling due while nothing schedules them
    restarted = cluster.streams("w1")  # same name: same local state directory, which was not shut down cleanly
    up_at = int(time.time()) * 1000
    horizon = up_at + 5000

    for name in ledgers:
        eventually(lambda n=name: max(decided(cluster, n)[0], default=0) >= horizon, 120,
                   what=f"{name} fires again after the restart")
        # Every tick so far decided: a second decision for an instant up to the horizon, made late (say, by an
        # outbox republished with a new id), is on the broker now rather than after the count.
        cluster.drain_inbox()
        fired, missed, at_edge = decided(cluster, name)
        assert at_edge <= set(fired), "a miss at the edge is of a run that fired"
        first = min(fired)
        window = range(first, horizon + 1, 1000)
        for t in window:
            total = fired.get(t, 0) + missed.get(t, 0)
            assert total == 1, f"{name}: occurrence {t} decided {total} times (fired {fired.get(t)}, " \
                               f"missed {missed.get(t)})"
        outage = [t for t in window if down_at + 3000 <= t <= up_at - 1000]
        assert outage, "the outage covered no occurrence"
        if name == "sec-all":
            assert not missed, "misfire: all within the catch-up window fires every occurrence"
            assert not at_edge, "misfire: all starts late runs within the catch-up window"
        else:
            assert all(missed.get(t) or t in at_edge for t in outage), \
                "misfire: skip records the late occurrences as missed"

        # Every run that fired ran exactly once.
        runs = [r for r in cluster.status(name).ordered_runs() if r.scheduled_for_ms <= horizon - 3000]
        def unfinished(n: str = name, edge: set[int] = at_edge) -> dict[str, object]:
            st = cluster.status(n)
            return {r.run_id: (r.state, [(t.state, [(a.attempt, a.executor_id, a.outcome, a.reason)
                                                    for a in t.attempts]) for t in st.tasks.get(r.run_id, {}).values()])
                    for r in st.ordered_runs() if r.scheduled_for_ms <= horizon - 3000 and r.state != "SUCCEEDED"
                    and not (r.scheduled_for_ms in edge and r.state == "CANCELLED")}

        try:
            eventually(lambda: not unfinished(), 60, what=f"{name} runs all succeed")
        except AssertionError:
            stuck = unfinished()
            decisions = [(type(e).__name__, getattr(e, "event_id", "")) for k, e in cluster.records("events")
                         if any(run_id in str(getattr(e, "event_id", "")) for run_id in stuck)]
            reports = [(type(e).__name__, getattr(e, "task_id", "")) for k, e in cluster.records("inbox")
                       if any(run_id in str(getattr(e, "task_id", "")) for run_id in stuck)]
            raise AssertionError(f"{name}: runs not succeeded: {stuck}\ndecisions: {decisions}\n"
                                 f"reports: {reports}") from None
        # It kept its local state (it was the last to commit), rather than rebuilding it from the changelog.
        assert re.search(r"kept the local state of partitions \[\d", restarted.log.read_text()), restarted.tail(40)
        executed = collections.Counter(line.split()[0] for line in ledgers[name].read_text().splitlines())
        twice = {task: n for task, n in executed.items() if n > 1}
        assert not twice, f"{name}: ran more than once: {twice}"
        assert {r.run_id for r in runs if r.scheduled_for_ms not in at_edge} <= \
            {task.rsplit("/", 1)[0] for task in executed}
        assert not {r.run_id for r in runs if r.scheduled_for_ms in at_edge} & \
            {task.rsplit("/", 1)[0] for task in executed}, "a run missed at the edge never ran"


def test_the_changelog_a_worker_writes_rebuilds_its_state_elsewhere(cluster: Cluster, tmp_path: Path) -> None:
    """The worker sends its table's changelog through its own producer, not Faust's: what it wrote must be what
    a worker with no local state rebuilds from, and the offset Faust reads on from must be recorded in the
    worker's RocksDB."""
    from faust.stores.rocksdb import Store
    from rocksdict import AccessType, Rdict

    from ksched.reader import end_offsets
    from ksched.streams.faustcompat import table_partition_dbs
    from ksched.streams.localstate import TABLE
    from ksched.topics import changelog_topic

    write_script(tmp_path / "ok.sh", f'echo "$KSCHED_TASK_ID" >> {tmp_path / "ledger"}\n')
    names = [f"far{i}" for i in range(6)]
    for name in names:  # the first of January only: nothing fires by itself during the test
        write_job(tmp_path, name, f"job: {name}\nschedule: '0 0 1 1 *'\nbinary: ok.sh\n")
    first = cluster.streams("w1")
    for name in names:
        r = cluster.ksched("submit", str(tmp_path / f"{name}.yaml"), "--wait", "--timeout", "90")
        assert r.returncode == 0, r.stderr
    cluster.drain_inbox()
    first.stop()

    ends = end_offsets(cluster.settings, changelog_topic(cluster.settings))
    recorded = {}
    for partition, path in table_partition_dbs(cluster.settings.home / "streams" / "w1", TABLE).items():
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            raw = db.get(Store.offset_key)
        finally:
            db.close()
        if raw is not None:
            recorded[partition] = int(bytes(raw))
    written = {p: end - 1 for p, end in ends.items() if end > 0}
    assert written, "the worker wrote no changelog"
    assert {p: recorded.get(p) for p in written} == written, "the offsets Faust reads on from"

    cluster.streams("w2")  # another name: no local state, everything from the changelog
    cluster.executor(slots=2)
    for name in names:  # a trigger of a job the new worker did not rebuild would be rejected as unknown
        r = cluster.ksched("trigger", name)
        assert r.returncode == 0, r.stderr + r.stdout
    ledger = tmp_path / "ledger"
    eventually(lambda: ledger.exists() and len(ledger.read_text().splitlines()) == len(names), 90,
               what="every job ran once")
    assert {line.split("@")[0] for line in ledger.read_text().splitlines()} == set(names)
