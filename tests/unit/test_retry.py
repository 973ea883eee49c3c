"""Retry decisions as data: the whole decision for each outcome, the levels of the multi-level queue."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ksched.schemas.events import Level, Outcome, RetryPolicy, TaskSpec
from ksched.streams.core.retry import RetryDecision, decide_retry, level_params
from tests.samples import job

TASK = replace(job().tasks[0], priority="low", timeout_ms=1000,
               retry=RetryPolicy(max_attempts=3, no_retry_exit_codes=[3, 4]),
               levels=[Level("normal", 5000), Level("high", 20000)])


@pytest.mark.parametrize(("attempts", "outcome", "exit_code", "retryable", "level", "expected"), [
    (1, Outcome.SUCCEEDED, 0, True, 1, RetryDecision(False, "succeeded", 1)),
    (1, Outcome.CANCELLED, None, True, 1, RetryDecision(False, "cancelled", 1)),
    (3, Outcome.RELEASED, None, False, 1, RetryDecision(True, "handed back unstarted by a stopping executor", 1)),
    (1, Outcome.FAILED, 1, False, 1, RetryDecision(False, "not retryable", 1)),
    (1, "SOMETHING_NEW", None, True, 1, RetryDecision(False, "not retryable", 1)),
    (1, Outcome.FAILED, 3, True, 1, RetryDecision(False, "exit code 3 is not retried", 1)),
    (1, Outcome.FAILED, 4, True, 0, RetryDecision(False, "exit code 4 is not retried", 0)),
    (3, Outcome.FAILED, 1, True, 1, RetryDecision(False, "gave up after 3 attempt(s)", 1)),
    (4, Outcome.LOST, None, True, 2, RetryDecision(False, "gave up after 4 attempt(s)", 2)),
    (2, Outcome.FAILED, 1, True, 1, RetryDecision(True, "attempt 2 failed", 1)),
    (1, Outcome.LOST, None, True, 0, RetryDecision(True, "attempt 1 lost", 0)),
    (1, Outcome.ERROR, None, True, 0, RetryDecision(True, "attempt 1 error", 0)),
    (1, Outcome.TIMED_OUT, None, True, 0,
     RetryDecision(True, "attempt 1 timed out; moving to level 1 (normal, timeout 5000 ms)", 1)),
    (2, Outcome.TIMED_OUT, None, True, 1,
     RetryDecision(True, "attempt 2 timed out; moving to level 2 (high, timeout 20000 ms)", 2)),
    (2, Outcome.TIMED_OUT, None, True, 2, RetryDecision(True, "attempt 2 timed_out", 2)),  # no higher rung
])
def test_the_retry_decision_for_each_way_an_attempt_ends(attempts: int, outcome: str, exit_code: int | None,
                                                         retryable: bool, level: int, expected: RetryDecision) -> None:
    assert decide_retry(TASK, attempts, outcome, exit_code, retryable, level) == expected


def test_a_task_without_levels_stays_where_it_is_when_it_times_out() -> None:
    flat = replace(TASK, levels=[])
    assert decide_retry(flat, 1, Outcome.TIMED_OUT, None, True, 0) == RetryDecision(True, "attempt 1 timed_out", 0)


@pytest.mark.parametrize(("task", "level", "expected"), [
    (TASK, 0, ("low", 1000)),
    (TASK, -1, ("low", 1000)),
    (TASK, 1, ("normal", 5000)),
    (TASK, 2, ("high", 20000)),
    (TASK, 7, ("high", 20000)),  # past the last rung: the last rung
    (replace(TASK, levels=[]), 3, ("low", 1000)),
])
def test_each_level_has_its_priority_and_timeout(task: TaskSpec, level: int, expected: tuple[str, int]) -> None:
    assert level_params(task, level) == expected
