"""What a worker holds in memory stays bounded however many jobs it registers: the caches of decoded records,
of encoded JSON and of parsed cron expressions (croniter's own included) keep the recent ones, not all."""

from __future__ import annotations

import sys

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ArtifactRef, JobSpec, Schedule, SubmitJob, TaskSpec
from ksched.streams import jobstore
from ksched.streams.core import schedule
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import DIGEST

CODEC = default_codec()
REF = ArtifactRef(DIGEST, "x.sh", 10)


def distinct_cron(i: int) -> str:
    return f"{i % 60} {i // 60 % 60} {i // 3600 % 24} * * *"


def test_croniters_own_cache_of_expanded_expressions_is_emptied_when_it_outgrows_ours() -> None:
    expressions = sys.modules[schedule.croniter.__module__].EXPRESSIONS
    for i in range(6_000):
        schedule.parse_cron(distinct_cron(i))
        assert len(expressions) <= 4_097
    # What was emptied is parsed again on demand: the schedules still fire where they should.
    assert schedule.next_fire(Schedule(cron=distinct_cron(61)), "j", 0) == 61_000


def test_the_shell_keeps_a_bounded_number_of_decoded_records_and_their_json(monkeypatch) -> None:
    monkeypatch.setattr(jobstore, "_JSON_SIZE", 100)
    jobstore._JSON.clear()
    shell = InboxShell(Settings(prefix="m", partitions=2), CODEC, state_cache_size=50)
    stores = {p: MemoryStore() for p in range(2)}
    offsets = {0: 0, 1: 0}
    for i in range(300):
        spec = JobSpec(f"j{i:04d}", [TaskSpec("main", REF)], Schedule(cron=distinct_cron(i)))
        p = partition_for(spec.job_id, 2)
        shell.process(stores[p], p, offsets[p], spec.job_id.encode(), CODEC.encode(SubmitJob(f"c{i}", spec, 0)),
                      delivered=offsets[p])
        offsets[p] += 1
    assert len(shell.jobs._records) <= 50
    assert len(jobstore._JSON) <= 100
    # Every job is still there, read back from its store once evicted.
    first = shell.jobs.load(stores[partition_for("j0000", 2)], partition_for("j0000", 2), "j0000")
    assert first is not None and first.state.spec.schedule.cron == distinct_cron(0)


def test_the_json_cache_pins_one_version_of_each_run_not_every_version() -> None:
    from ksched.schemas.records import replace
    from ksched.streams.core.model import Run, Task

    jobstore._RUN_JSON.clear()
    jobstore._JSON.clear()
    tasks = {f"t{i}": Task(f"t{i}", "WAITING") for i in range(20)}
    run = Run("big@1", 1, "ONCE", 0, 0, "RUNNING", tasks)
    for i in range(100):  # each event's version of a 20-task run: a new object, one task changed
        tasks = {**tasks, f"t{i % 20}": Task(f"t{i % 20}", "READY" if i % 2 else "WAITING")}
        run = replace(run, tasks=tasks)
        assert jobstore._run_json(run) == jobstore._encode_run(run)
        assert jobstore._run_json(run) is jobstore._run_json(run)  # served from the cache while unchanged
    assert list(jobstore._RUN_JSON) == ["big@1"] and jobstore._RUN_JSON["big@1"][0] is run
    assert not any(isinstance(obj, Run) for obj, _ in jobstore._JSON.values())
