"""DAG jobs: trigger rules, propagation of failure, the end of a run, reruns and max_active_runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ksched.schemas.events import (
    ArtifactRef,
    ClaimGranted,
    ClaimRejected,
    ClaimTask,
    JobSpec,
    RerunTasks,
    RetryPolicy,
    RunFinished,
    RunTriggered,
    TaskReady,
    TaskSettled,
    TaskSpec,
    TaskState,
    TriggerJob,
)
from ksched.streams.core import dag
from ksched.streams.core.model import Task
from tests.samples import DIGEST
from tests.sim import Sim, one

S, F, K, U, C = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.UPSTREAM_FAILED,
                 TaskState.CANCELLED)
W, R = TaskState.WAITING, TaskState.RUNNING


@pytest.mark.parametrize(
    ("rule", "parents", "expected"),
    [
        ("all_success", [S, S], TaskState.READY),
        ("all_success", [S, R], None),
        ("all_success", [S, F], U),
        ("all_success", [R, F], U),  # fails at once, without waiting for the other parent
        ("all_success", [S, K], K),
        ("all_success", [S, U], U),
        ("all_done", [S, F], TaskState.READY),
        ("all_done", [S, R], None),
        ("one_success", [R, S], TaskState.READY),
        ("one_success", [F, R], None),
        ("one_success", [F, K], U),
        ("one_success", [K, K], K),
        ("one_failed", [R, F], TaskState.READY),
        ("one_failed", [S, R], None),
        ("one_failed", [S, S], K),
        ("one_failed", [S, C], TaskState.READY),
        ("none_failed", [S, K], TaskState.READY),
        ("none_failed", [S, R], None),
        ("none_failed", [S, F], U),
        ("all_success", [], TaskState.READY),
    ],
)
def test_trigger_rules(rule: str, parents: list[str], expected: str | None) -> None:
    assert dag.verdict(rule, parents) == expected


def spec(*tasks: tuple[str, list[str], str]) -> list[TaskSpec]:
    art = ArtifactRef(DIGEST, "x", 1)
    return [TaskSpec(n, art, depends_on=deps, trigger_rule=rule) for n, deps, rule in tasks]


def test_failure_propagates_down_a_chain_in_one_step() -> None:
    specs = spec(("a", [], "all_success"), ("b", ["a"], "all_success"), ("c", ["b"], "all_success"),
                 ("alert", ["a"], "one_failed"))
    tasks = {"a": Task("a", F), "b": Task("b"), "c": Task("c"), "alert": Task("alert")}
    by_name = {t.name: t for t in specs}
    children = {"a": ["b", "alert"], "b": ["c"], "c": [], "alert": []}
    assert dag.settle_waiting(specs, tasks, by_name, children) == {"b": U, "c": U, "alert": TaskState.READY}
    # Looking only at what changed (a) gives the same answer.
    assert dag.settle_waiting(specs, tasks, by_name, children, ["a"]) == {"b": U, "alert": TaskState.READY, "c": U}


def test_cycles_are_found_with_their_path() -> None:
    specs = spec(("a", ["c"], "all_success"), ("b", ["a"], "all_success"), ("c", ["b"], "all_success"),
                 ("d", [], "all_success"))
    assert dag.find_cycle(specs) == ["a", "c", "b", "a"]  # a depends on c depends on b depends on a
    assert dag.find_cycle(spec(("a", [], "all_success"), ("b", ["a"], "all_success"))) is None


def test_a_cycle_is_found_past_a_dependency_on_a_task_that_does_not_exist() -> None:
    specs = spec(("a", ["nope", "b"], "all_success"), ("b", ["a"], "all_success"))
    assert dag.find_cycle(specs) == ["a", "b", "a"]


def test_a_diamond_is_no_cycle() -> None:
    specs = spec(("a", [], "all_success"), ("b", ["a"], "all_success"), ("c", ["a"], "all_success"),
                 ("d", ["b", "c"], "all_success"))
    assert dag.find_cycle(specs) is None
    assert dag.find_cycle([*reversed(specs)]) is None


@pytest.mark.parametrize(("tasks", "expected"), [
    ((("c", ["b"], "all_success"), ("b", ["a"], "all_success"), ("a", [], "all_success")), ["a", "b", "c"]),
    ((("x", [], "all_success"), ("y", [], "all_success"), ("z", ["x"], "all_success")), ["x", "y", "z"]),
    # A cycle (validation rejects these): what can be ordered first, then the rest in the spec's order.
    ((("p", ["q"], "all_success"), ("q", ["p"], "all_success"), ("r", [], "all_success")), ["r", "p", "q"]),
])
def test_topological_order_puts_dependencies_first_and_keeps_the_specs_order_otherwise(
        tasks: tuple[tuple[str, list[str], str], ...], expected: list[str]) -> None:
    assert dag.topological_order(spec(*tasks)) == expected


def test_descendants_are_the_task_and_everything_downstream_in_order() -> None:
    specs = spec(("a", [], "all_success"), ("b", ["a"], "all_success"), ("c", ["a"], "all_success"),
                 ("d", ["b", "c"], "all_success"), ("e", [], "all_success"), ("f", ["d"], "all_success"))
    assert dag.descendants(specs, "b") == ["b", "d", "f"]
    assert dag.descendants(specs, "a") == ["a", "b", "c", "d", "f"]
    assert dag.descendants(specs, "e") == ["e"]


def test_settling_skips_tasks_already_decided_and_goes_on_past_them() -> None:
    specs = spec(("a", [], "all_success"), ("b", ["a"], "all_success"), ("c", ["a"], "all_success"),
                 ("d", ["b", "c"], "all_done"))
    tasks = {"a": Task("a", F), "b": Task("b", R), "c": Task("c"), "d": Task("d")}
    by_name = {t.name: t for t in specs}
    children = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    # b is running (not WAITING): left alone; c fails upstream; d waits for b, however often it is reached.
    assert dag.settle_waiting(specs, tasks, by_name, children, ["a", "a"]) == {"c": U}
    assert dag.settle_waiting(specs, tasks, by_name, children) == {"c": U}
    done = {**tasks, "b": Task("b", S), "c": Task("c", U)}
    assert dag.settle_waiting(specs, done, by_name, children, ["b"]) == {"d": TaskState.READY}


@pytest.mark.parametrize(
    ("states", "cancelled", "expected"),
    [
        ([S, S], False, "SUCCEEDED"),
        ([S, K], False, "SUCCEEDED"),
        ([S, F], False, "FAILED"),
        ([S, U], False, "FAILED"),
        ([S, R], False, None),
        ([S, C], True, "CANCELLED"),
        ([S, C], False, "CANCELLED"),
        ([F, C], False, "FAILED"),
        ([S, S], True, "CANCELLED"),
        ([C, R], True, None),
    ],
)
def test_a_run_ends_when_no_task_can_progress(states: list[str], cancelled: bool, expected: str | None) -> None:
    tasks = {str(i): Task(str(i), s) for i, s in enumerate(states)}
    assert dag.run_outcome(tasks, cancelled) == expected


# --- through the reducer ------------------------------------------------------------------------


def dag_job(*tasks: tuple[str, list[str], str], cron: str | None = None, max_active_runs: int = 0) -> JobSpec:
    from ksched.schemas.events import Schedule

    return JobSpec("pipe", spec(*tasks), Schedule(cron=cron), max_active_runs=max_active_runs)


def finish(sim: Sim, ready: TaskReady, code: int = 0) -> list[TaskReady]:
    before = len(sim.emits)
    sim.run(ready, code)
    return sim.readies(sim.emits[before:])


def test_a_diamond_runs_each_task_once_the_moment_its_parents_are_done() -> None:
    sim = Sim()
    roots = sim.readies(sim.submit(dag_job(("a", [], "all_success"), ("b", ["a"], "all_success"),
                                           ("c", ["a"], "all_success"), ("d", ["b", "c"], "all_success"))))
    assert [r.task_name for r in roots] == ["a"]
    mid = finish(sim, roots[0])
    assert sorted(r.task_name for r in mid) == ["b", "c"]
    assert finish(sim, mid[0]) == []  # d still waits for its other parent
    last = finish(sim, mid[1])
    assert [r.task_name for r in last] == ["d"]
    finish(sim, last[0])
    assert one(sim.emits, RunFinished).state == "SUCCEEDED"


def test_fan_out_fan_in() -> None:
    sim = Sim()
    leaves = [(f"t{i}", ["start"], "all_success") for i in range(50)]
    sim.submit(dag_job(("start", [], "all_success"), *leaves, ("end", [f"t{i}" for i in range(50)], "all_success")))
    wide = finish(sim, sim.readies()[0])
    assert len(wide) == 50
    for r in wide[:-1]:
        assert finish(sim, r) == []
    assert [r.task_name for r in finish(sim, wide[-1])] == ["end"]


def test_a_failure_skips_or_fails_downstream_per_rule_and_the_run_fails() -> None:
    sim = Sim()
    sim.submit(dag_job(("build", [], "all_success"), ("test", ["build"], "all_success"),
                       ("deploy", ["test"], "all_success"), ("notify", ["build"], "one_failed"),
                       ("cleanup", ["test", "notify"], "all_done")))
    after = finish(sim, sim.readies()[0], code=1)
    assert [r.task_name for r in after] == ["notify"]
    settled = {s.task_id.rsplit("/", 1)[1]: s.state for s in sim.logged(TaskSettled)}
    assert settled == {"build": F, "test": U, "deploy": U}
    assert [r.task_name for r in finish(sim, after[0])] == ["cleanup"]
    finish(sim, sim.readies()[-1])
    assert one(sim.emits, RunFinished).state == "FAILED"


def test_a_cron_scheduled_dag_makes_separate_runs_that_never_mix() -> None:
    from tests.sim import T0

    sim = Sim()
    sim.submit(dag_job(("a", [], "all_success"), ("b", ["a"], "all_success"), cron="*/10 * * * * *"))
    sim.tick_to(T0 + 20 * 1000)
    first, second = sim.readies()
    assert first.run_id != second.run_id
    nxt = finish(sim, second)
    assert [(r.run_id, r.task_name) for r in nxt] == [(second.run_id, "b")]


def test_max_active_runs_queues_runs_until_one_finishes() -> None:
    sim = Sim()
    sim.submit(dag_job(("a", [], "all_success"), max_active_runs=1))
    first = sim.readies()[0]
    sim.send(TriggerJob("t1", "pipe", sim.now))
    sim.send(TriggerJob("t2", "pipe", sim.now))
    assert len(sim.logged(RunTriggered)) == 3 and len(sim.readies()) == 1
    nxt = finish(sim, first)
    assert [r.run_id for r in nxt] == ["pipe@manual-t1"]


def test_rerun_from_a_task_clears_it_and_everything_downstream_as_new_attempts() -> None:
    sim = Sim()
    sim.submit(dag_job(("a", [], "all_success"), ("b", ["a"], "all_success"), ("c", ["b"], "all_success")))
    b = finish(sim, sim.readies()[0])[0]
    sim.run(b, 1)
    assert one(sim.emits, RunFinished).state == "FAILED"
    emits = sim.send(RerunTasks("rr", "pipe", b.run_id, "b", sim.now))
    again = sim.readies(emits)
    assert [(r.task_name, r.attempt) for r in again] == [("b", 2)]
    grant = sim.run(again[0])
    assert grant.fencing_token > 2
    c = sim.readies()[-1]
    assert (c.task_name, c.attempt) == ("c", 1)
    sim.run(c)
    assert sim.logged(RunFinished)[-1].state == "SUCCEEDED"


def test_per_task_retries_inside_a_dag() -> None:
    sim = Sim()
    job = dag_job(("a", [], "all_success"), ("b", ["a"], "all_success"))
    tasks = [replace(job.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=0)), job.tasks[1]]
    sim.submit(replace(job, tasks=tasks))
    sim.run(sim.readies()[0], 1)
    retry = sim.readies()[-1]
    assert (retry.task_name, retry.attempt) == ("a", 2)
    grant = one(sim.claim(retry), ClaimGranted)
    sim.start(grant)
    sim.complete(grant, 0)
    assert sim.readies()[-1].task_name == "b"


def _offer_job() -> JobSpec:
    job = dag_job(("a", [], "all_success"), ("b", ["a"], "all_success"), ("gpu", ["a"], "all_success"),
                  ("c", ["b"], "all_success"))
    return replace(job, tasks=[t if t.name != "gpu" else replace(t, labels={"pool": "gpu"}) for t in job.tasks])


def test_a_completion_that_offers_its_slot_is_granted_the_next_task_without_a_claim() -> None:
    sim = Sim()
    sim.submit(_offer_job())
    grant_a = one(sim.claim(sim.readies()[0]), ClaimGranted)
    emits = sim.complete(grant_a, offer="a#1/offer@ex1/x")
    # b goes to ex1's control partition: its ready record, then the grant answering the offer. gpu belongs to
    # another pool and is offered on the ready topic as ever.
    assert [r.task_name for r in sim.readies(emits)] == ["gpu"]
    handed, grant_b = sim.control(emits)
    assert [e.key for e in emits if e.channel == "control"] == ["ex1", "ex1"]
    assert isinstance(handed, TaskReady) and handed.task_name == "b"
    assert isinstance(grant_b, ClaimGranted) and grant_b.task_id == handed.task_id
    assert grant_b.claim_id == "a#1/offer@ex1/x" and grant_b.executor_id == "ex1"
    assert grant_b.fencing_token == grant_a.fencing_token + 1
    # the decision log records both, as for a claim
    assert handed in sim.logged(TaskReady, emits) and sim.logged(ClaimGranted, emits) == [grant_b]
    assert sim.state is not None and sim.state.runs[handed.run_id].tasks["b"].state == TaskState.CLAIMED
    # another executor claiming b loses; the offer's id, sent again as a claim, gets the same grant
    assert one(sim.claim(handed, "ex2"), ClaimRejected).reason == "task is claimed by ex1"
    again = sim.send(ClaimTask(grant_b.claim_id, "pipe", handed.run_id, handed.task_id, 1, "ex1", sim.now))
    assert one(again, ClaimGranted) == grant_b
    # a repeated completion of a (a redelivered report) takes up no offer
    assert sim.control(sim.complete(grant_a, offer="a#1/offer@ex1/x2")) == []
    # the granted attempt reports like any other; an offer for another pool than b's is not taken up
    emits = sim.complete(grant_b, offer="b#1/offer@ex1/y", pool="gpu")
    assert [r.task_name for r in sim.readies(emits)] == ["c"] and sim.control(emits) == []
    grant_c = one(sim.claim(sim.readies(emits)[0]), ClaimGranted)
    assert sim.control(sim.complete(grant_c, offer="c#1/offer@ex1/z")) == []  # a leaf: nothing to grant
    gpu = next(r for r in sim.readies() if r.task_name == "gpu")
    sim.complete(one(sim.claim(gpu, "ex3"), ClaimGranted))
    assert one(sim.emits, RunFinished).state == "SUCCEEDED"


def test_an_offer_for_another_pool_than_the_completed_tasks_is_not_taken_up() -> None:
    sim = Sim()
    job = dag_job(("a", [], "all_success"), ("gpu", ["a"], "all_success"))
    sim.submit(replace(job, tasks=[job.tasks[0], replace(job.tasks[1], labels={"pool": "gpu"})]))
    grant = one(sim.claim(sim.readies()[0]), ClaimGranted)
    emits = sim.complete(grant, offer="a#1/offer@ex1/x", pool="gpu")  # a ran in the default pool
    assert [r.task_name for r in sim.readies(emits)] == ["gpu"] and sim.control(emits) == []


def test_a_failed_tasks_retry_is_not_granted_on_its_own_offer() -> None:
    sim = Sim()
    job = dag_job(("a", [], "all_success"), ("b", ["a"], "all_done"))
    sim.submit(replace(job, tasks=[replace(job.tasks[0], retry=RetryPolicy(max_attempts=2, backoff_ms=0)),
                                   job.tasks[1]]))
    grant = one(sim.claim(sim.readies()[0]), ClaimGranted)
    emits = sim.complete(grant, exit_code=1, offer="a#1/offer@ex1/x")
    assert [(r.task_name, r.attempt) for r in sim.readies(emits)] == [("a", 2)] and sim.control(emits) == []
    grant = one(sim.claim(sim.readies(emits)[0], "ex2"), ClaimGranted)
    emits = sim.complete(grant, exit_code=1, offer="a#2/offer@ex2/y")  # failed for good: b runs (all_done)
    handed, granted = sim.control(emits)
    assert handed.task_name == "b" and isinstance(granted, ClaimGranted) and granted.executor_id == "ex2"
