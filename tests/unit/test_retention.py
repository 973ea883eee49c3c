"""The views' retention: a job's run and task views are kept for its last `keep_run_views` finished runs; an older
run's views get tombstones, named from the revision the run was made from; the inbox and decision log keep all."""

from __future__ import annotations

from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, Schedule, SubmitJob, TaskSpec, TriggerJob
from ksched.streams.core.emit import RUNS, TASKS, Emit
from ksched.streams.core.model import Params
from tests.samples import DIGEST
from tests.sim import Sim

REF = ArtifactRef(DIGEST, "x.sh", 10)


def spec(*names: str) -> JobSpec:
    once = RetryPolicy(max_attempts=1)
    return JobSpec("r", [TaskSpec(n, REF, retry=once) for n in names], schedule=Schedule())


def trigger_and_run(sim: Sim, n: int, job: JobSpec | None = None) -> list[Emit]:
    """Trigger the job (or submit `job`, a one-off that runs on submission) and run every task of the new run to
    success; what those decisions emitted."""
    start = len(sim.emits)
    sim.send(SubmitJob(f"c{n}", job, sim.now) if job else TriggerJob(f"t{n}", "r", sim.now))
    for ready in sim.readies(sim.emits[start:]):
        sim.now += 10
        sim.run(ready)
    return sim.emits[start:]


def tombstones(emits: list[Emit]) -> list[tuple[str, str]]:
    return [(e.channel, e.key) for e in emits if e.channel in (RUNS, TASKS) and e.record is None]


def test_views_of_runs_past_the_retention_get_tombstones_oldest_first() -> None:
    sim = Sim(params=Params(keep_finished_runs=2, keep_run_views=4))
    trigger_and_run(sim, 1, spec("a", "b"))
    first_run = next(e.key for e in sim.emits if e.channel == RUNS)
    runs = [first_run]
    for n in range(2, 5):  # four runs finished: all views kept (two in the state, two retired)
        emits = trigger_and_run(sim, n)
        assert tombstones(emits) == []
        runs.append(next(e.key for e in emits if e.channel == RUNS))
    assert sim.state is not None and len(sim.state.runs) == 2 and len(sim.state.retired) == 2
    # The fifth: the first run's views go, its tasks' first.
    fifth = trigger_and_run(sim, 5)
    assert tombstones(fifth) == [(TASKS, f"{first_run}/a"), (TASKS, f"{first_run}/b"), (RUNS, first_run)]
    assert [r for r, _ in sim.state.retired] == runs[1:3]  # the state holds the 4th and 5th
    sixth = trigger_and_run(sim, 6)
    assert tombstones(sixth) == [(TASKS, f"{runs[1]}/a"), (TASKS, f"{runs[1]}/b"), (RUNS, runs[1])]


def test_a_retired_run_is_tombstoned_with_the_tasks_of_its_own_revision() -> None:
    sim = Sim(params=Params(keep_finished_runs=1, keep_run_views=2))
    trigger_and_run(sim, 1, spec("old"))
    first_run = next(e.key for e in sim.emits if e.channel == RUNS)
    trigger_and_run(sim, 2, spec("new1", "new2"))  # revision 2, other task names: the first run is retired
    assert sim.state is not None and 1 in sim.state.revisions  # its definition is kept for it
    emits = trigger_and_run(sim, 3)
    assert tombstones(emits) == [(TASKS, f"{first_run}/old"), (RUNS, first_run)]
    assert 1 not in sim.state.revisions


def test_the_decision_log_keeps_every_run() -> None:
    sim = Sim(params=Params(keep_finished_runs=1, keep_run_views=1))
    trigger_and_run(sim, 1, spec("a"))
    for n in range(2, 8):
        trigger_and_run(sim, n)
    from ksched.schemas.events import RunFinished

    assert len(sim.logged(RunFinished)) == 7
    assert sum(1 for e in sim.emits if e.channel == RUNS and e.record is None) == 6
