"""Cron semantics through the real broker. The ticker is off: these tests produce the ticks themselves
(time is an event), so they can stand at real DST transitions and outages in milliseconds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from confluent_kafka import Message

from ksched import kafka
from ksched.instants import from_ms
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    JobSpec,
    OccurrenceMissed,
    OccurrenceSkipped,
    PauseJob,
    ResumeJob,
    RunTriggered,
    Schedule,
    SubmitJob,
    Tick,
)
from ksched.streams.core.schedule import to_ms, zone
from tests.samples import job
from tests.support import Cluster, settings_for

pytestmark = pytest.mark.broker
CODEC = default_codec()


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # No ticker and no look-ahead: occurrences fire exactly when a hand-made tick reaches their instant.
    c = Cluster(settings_for(bootstrap, tmp_path_factory.mktemp("sched"), tick_interval_s=0.0, lookahead_s=0.0))
    c.streams("w1")
    yield c
    c.stop()


class Driver:
    """Submits one job and moves its partition's clock with hand-made ticks."""

    def __init__(self, cluster: Cluster, spec: JobSpec) -> None:
        self.cluster = cluster
        self.spec = spec
        self.partition = partition_for(spec.job_id, cluster.settings.partitions)
        self.producer = kafka.producer(cluster.settings)
        self.inbox = cluster.settings.topic("inbox")
        self.last_offset = -1  # of the last record this driver wrote to the job's inbox partition

    def _delivered(self, err: object, msg: Message) -> None:
        assert err is None, err
        self.last_offset = max(self.last_offset, int(msg.offset() or 0))

    def send(self, event: object) -> None:
        # Straight to the job's partition, so that every record this driver wrote is behind `last_offset`.
        self.producer.produce(self.inbox, key=self.spec.job_id.encode(), value=CODEC.encode(event),
                              partition=self.partition, on_delivery=self._delivered)
        self.producer.flush(10)

    def submit(self, at_ms: int) -> None:
        # A tick first, so the partition clock stands where the test wants it.
        self.tick(at_ms)
        self.send(SubmitJob(uuid.uuid4().hex, self.spec, at_ms))

    def tick(self, *instants: int) -> None:
        for t in instants:
            self.producer.produce(self.inbox, value=CODEC.encode(Tick(self.partition, t, "test")),
                                  partition=self.partition, on_delivery=self._delivered)
        self.producer.flush(10)

    def decisions(self, cls: type) -> list[object]:
        return [e for k, e in self.cluster.records("events") if k == self.spec.job_id.encode() and isinstance(e, cls)]

    def settled(self, cls: type) -> list[object]:
        """The job's decisions of type `cls`, once the worker has processed everything this driver sent. No
        ticker runs, so nothing else can make a decision about this job: the list is complete, and exact
        counts of it hold."""
        self.cluster.wait_processed(self.partition, self.last_offset)
        return self.decisions(cls)

    def triggered(self) -> list[int]:
        """Scheduled instants of every RunTriggered decision (a duplicate counts twice), once all are there."""
        return sorted(e.scheduled_for_ms for e in self.settled(RunTriggered))  # type: ignore[attr-defined]


def ms(*args: int, tz: str = "UTC") -> int:
    return to_ms(datetime(*args, tzinfo=zone(tz) if tz != "UTC" else UTC))  # type: ignore[misc]


def local(t: int, tz: str) -> str:
    return from_ms(t, zone(tz)).strftime("%m-%d %H:%M%z")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


_days = iter(range(10_000))


def fresh_base() -> int:
    """An instant later than any this module used before. A partition's clock never goes back, and the
    tests share partitions, so the DST tests run first, in date order, and the others after 2030."""
    return ms(2030, 1, 1) + next(_days) * 86_400_000


def test_spring_forward_in_new_york_fires_the_missing_time_once_after_the_gap(cluster: Cluster) -> None:
    tz = "America/New_York"
    d = Driver(cluster, job(uid("ny-spring"), "30 2 * * *", timezone=tz))
    d.submit(ms(2026, 3, 7, 12))
    d.tick(*[ms(2026, 3, 7, 12) + h * 3_600_000 for h in range(1, 80)])
    assert [local(t, tz) for t in d.triggered()] == ["03-08 03:00-0400", "03-09 02:30-0400", "03-10 02:30-0400"]


@pytest.mark.parametrize(("tz", "start", "expr", "expected"), [
    ("Europe/London", (2026, 3, 28, 12), "30 1 * * *", "03-29 02:00+0100"),
    ("Australia/Lord_Howe", (2026, 10, 3, 0), "15 2 * * *", "10-04 02:30+1100"),
])
def test_other_zones_and_half_hour_shifts(cluster: Cluster, tz: str, start: tuple[int, ...], expr: str,
                                          expected: str) -> None:
    d = Driver(cluster, job(uid("dst"), expr, timezone=tz))
    d.submit(ms(*start))
    d.tick(*[ms(*start) + h * 1_800_000 for h in range(1, 60)])
    assert [local(t, tz) for t in d.triggered()] == [expected]


def test_fall_back_in_new_york_fires_the_repeated_time_once(cluster: Cluster) -> None:
    tz = "America/New_York"
    d = Driver(cluster, job(uid("ny-fall"), "*/30 1 * * *", timezone=tz))
    d.submit(ms(2026, 10, 31, 12))
    d.tick(*[ms(2026, 10, 31, 12) + m * 600_000 for m in range(1, 6 * 48)])
    assert [local(t, tz) for t in d.triggered()] == ["11-01 01:00-0400", "11-01 01:30-0400",
                                                    "11-02 01:00-0500", "11-02 01:30-0500"]


def _outage(cluster: Cluster, policy: str, **schedule: object) -> tuple[Driver, int]:
    d = Driver(cluster, job(uid(policy), "*/10 * * * * *", misfire=policy, misfire_grace_ms=5000,
                            **schedule))  # type: ignore[arg-type]
    t0 = fresh_base()
    d.submit(t0)
    d.tick(t0 + 61_000)  # nothing for a minute, then one tick: 10..50 s are late, 60 s is within its grace
    return d, t0


def outcomes(d: Driver, t0: int) -> tuple[list[tuple[int, str]], list[int]]:
    """(offset, trigger) of every run and offset of every missed occurrence, each decision counted."""
    runs = sorted((e.scheduled_for_ms - t0, e.trigger) for e in d.settled(RunTriggered))  # type: ignore[attr-defined]
    missed = sorted(e.scheduled_for_ms - t0 for e in d.decisions(OccurrenceMissed))  # type: ignore[attr-defined]
    return runs, missed


def test_misfire_skip_through_the_broker(cluster: Cluster) -> None:
    d, t0 = _outage(cluster, "skip")
    assert outcomes(d, t0) == ([(60_000, "CRON")], [10_000, 20_000, 30_000, 40_000, 50_000])


def test_misfire_once_through_the_broker(cluster: Cluster) -> None:
    d, t0 = _outage(cluster, "once")
    assert outcomes(d, t0) == ([(50_000, "CATCHUP"), (60_000, "CRON")], [10_000, 20_000, 30_000, 40_000])


def test_misfire_all_through_the_broker(cluster: Cluster) -> None:
    d, t0 = _outage(cluster, "all", catchup_window_ms=35_000)
    assert outcomes(d, t0) == ([(30_000, "CATCHUP"), (40_000, "CATCHUP"), (50_000, "CATCHUP"), (60_000, "CRON")],
                               [10_000, 20_000])


def test_duplicate_ticks_fire_once_and_a_missing_tick_is_caught_up(cluster: Cluster) -> None:
    d = Driver(cluster, job(uid("dup"), "*/10 * * * * *"))
    t0 = fresh_base()
    d.submit(t0)
    d.tick(t0 + 10_000, t0 + 10_000, t0 + 10_000, t0 + 30_000, t0 + 30_000)  # 20 s never ticked
    # Counted once the worker has processed the last duplicate tick: a second decision for an instant would
    # be on the broker by then, however slowly it was made.
    assert [t - t0 for t in d.triggered()] == [10_000, 20_000, 30_000]


@pytest.mark.parametrize(("overlap", "runs", "skipped"), [("allow", 3, 0), ("forbid", 1, 2), ("replace", 3, 0)])
def test_overlap_policies_through_the_broker(cluster: Cluster, overlap: str, runs: int, skipped: int) -> None:
    # No executor here: every run stays active, so each later occurrence overlaps the earlier ones.
    d = Driver(cluster, job(uid(overlap), "*/10 * * * * *", overlap=overlap))
    t0 = fresh_base()
    d.submit(t0)
    d.tick(t0 + 10_000, t0 + 20_000, t0 + 30_000)
    assert [t - t0 for t in d.triggered()] == [10_000, 20_000, 30_000][:runs]
    skips = sorted((e.scheduled_for_ms - t0, e.reason) for e in d.decisions(OccurrenceSkipped))  # type: ignore[attr-defined]
    assert skips == [(20_000, "OVERLAP"), (30_000, "OVERLAP")][:skipped]
    # The views were published with the decisions, so they are complete too.
    expected = {"allow": ["RUNNING"] * 3, "forbid": ["RUNNING"], "replace": ["CANCELLED", "CANCELLED", "RUNNING"]}
    assert sorted(cluster.run_states(d.spec.job_id).values()) == expected[overlap]


def test_pause_records_skips_and_resume_continues(cluster: Cluster) -> None:
    d = Driver(cluster, job(uid("pause"), "*/10 * * * * *"))
    t0 = fresh_base()
    d.submit(t0)
    d.send(PauseJob(uuid.uuid4().hex, d.spec.job_id, t0))
    d.tick(t0 + 10_000, t0 + 20_000)
    d.send(ResumeJob(uuid.uuid4().hex, d.spec.job_id, t0 + 20_000))
    d.tick(t0 + 30_000)
    assert [t - t0 for t in d.triggered()] == [30_000]
    skips = sorted((e.scheduled_for_ms - t0, e.reason) for e in d.decisions(OccurrenceSkipped))  # type: ignore[attr-defined]
    assert skips == [(10_000, "PAUSED"), (20_000, "PAUSED")]


def test_an_update_applies_from_the_next_occurrence(cluster: Cluster) -> None:
    d = Driver(cluster, job(uid("upd"), "*/10 * * * * *"))
    t0 = fresh_base()
    d.submit(t0)
    d.tick(t0 + 10_000)
    assert [t - t0 for t in d.triggered()] == [10_000]
    new = replace(d.spec, schedule=Schedule(cron="*/30 * * * * *"))
    d.send(SubmitJob(uuid.uuid4().hex, new, t0 + 10_000))
    d.tick(t0 + 20_000, t0 + 30_000)
    runs = sorted((e.scheduled_for_ms - t0, e.revision) for e in d.settled(RunTriggered))  # type: ignore[attr-defined]
    assert runs == [(10_000, 1), (30_000, 2)]
