"""The CLI's status table: a run claimed ahead of its instant reads STAGED until its instant."""

from __future__ import annotations

from ksched.cli.render import status_text
from ksched.reader import JobStatus
from ksched.schemas.events import AttemptView, RunView, TaskView

T = 1_800_000_000_000


def claimed_run(at: int) -> JobStatus:
    run_id = f"j@{at}"
    run = RunView(run_id, "j", 1, "CRON", "RUNNING", at, at - 10_000, {"CLAIMED": 1})
    task = TaskView(f"{run_id}/main", "j", run_id, "main", "CLAIMED", 1, "normal", [],
                    [AttemptView(1, 7, "ex1", "")])
    return JobStatus("j", runs={run_id: run}, tasks={run_id: {"main": task}})


def test_a_run_claimed_ahead_of_its_instant_reads_staged_then_claimed() -> None:
    st = claimed_run(T)
    before = status_text(st, now_ms=T - 5000)
    assert "STAGED" in before.splitlines()[2] and "starts on time" in before
    after = status_text(st, now_ms=T + 100)
    assert "CLAIMED" in after.splitlines()[2] and "STAGED" not in after


def test_history_text_names_each_occurrences_instant() -> None:
    from ksched.cli.audit import _describe
    from ksched.schemas.events import OccurrenceMissed, OccurrenceSkipped, RunTriggered

    at = 1_800_000_000_000
    assert _describe(OccurrenceMissed("e", "j", at, "skip", "late", at)).startswith("j@2027-01-15T08:00:00Z ")
    assert _describe(OccurrenceSkipped("e", "j", at + 250, "OVERLAP", at)).startswith("j@2027-01-15T08:00:00.250Z")
    assert _describe(RunTriggered("e", "j", "j@2027-01-15T08:00:00Z", 1, "CRON", at, at)).startswith(
        "j@2027-01-15T08:00:00Z trigger=CRON")
