"""Retry decisions as data: whether an ended attempt is retried, after how long, at which level."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ksched.schemas.events import Outcome, TaskSpec

from .model import Attempt

#: How many attempts of a task whose lease lapsed before any start was reported are not counted against its
#: retries. Such an attempt may never have run: the executor gave up on a claim its scheduler answered late (a
#: worker that failed over), or died between its claim and the start; its `CLAIM_ABANDONED` report, if any,
#: comes after the lapse and finds the attempt ended. Beyond this many, they count: an executor that crashes
#: each time right after starting a job must not retry it forever.
FREE_UNSTARTED_LAPSES = 3


def jitter_unit(key: str) -> float:
    """A deterministic number in [-1, 1) from `key`: the same attempt always gets the same jitter."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def backoff_ms(spec: TaskSpec, failed_attempt: int, key: str) -> int:
    """Delay before the attempt after `failed_attempt` (1-based): exponential, capped, with jitter."""
    p = spec.retry
    base = min(float(p.backoff_max_ms), p.backoff_ms * p.multiplier ** (failed_attempt - 1))
    delay = base * (1.0 + p.jitter * jitter_unit(key))
    return max(0, int(min(delay, float(p.backoff_max_ms))))


def unstarted_lapse(a: Attempt) -> bool:
    return a.outcome == Outcome.LOST and a.started_at_ms is None


def attempts_charged(attempts: Iterable[Attempt]) -> int:
    """The ended attempts that count against `max_attempts`: not those handed back unstarted (RELEASED), nor
    the first `FREE_UNSTARTED_LAPSES` whose lease lapsed before a start was reported."""
    made = free = 0
    for a in attempts:
        if a.outcome == Outcome.RELEASED:
            continue
        if unstarted_lapse(a) and free < FREE_UNSTARTED_LAPSES:
            free += 1
            continue
        made += 1
    return made


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    reason: str
    level: int = 0


RETRYABLE_OUTCOMES = frozenset({Outcome.FAILED, Outcome.TIMED_OUT, Outcome.LOST, Outcome.ERROR})


def decide_retry(
    spec: TaskSpec, attempts_made: int, outcome: str, exit_code: int | None, retryable: bool, level: int,
) -> RetryDecision:
    """Should the task run again? `retryable` is the reporter's word (False for e.g. a digest mismatch)."""
    if outcome == Outcome.SUCCEEDED:
        return RetryDecision(False, "succeeded", level)
    if outcome == Outcome.CANCELLED:
        return RetryDecision(False, "cancelled", level)
    if outcome == Outcome.RELEASED:
        return RetryDecision(True, "handed back unstarted by a stopping executor", level)
    if outcome not in RETRYABLE_OUTCOMES or not retryable:
        return RetryDecision(False, "not retryable", level)
    if exit_code is not None and exit_code in spec.retry.no_retry_exit_codes:
        return RetryDecision(False, f"exit code {exit_code} is not retried", level)
    if attempts_made >= spec.retry.max_attempts:
        return RetryDecision(False, f"gave up after {attempts_made} attempt(s)", level)
    if outcome == Outcome.TIMED_OUT and level < len(spec.levels):
        nxt = spec.levels[level]
        return RetryDecision(True, f"attempt {attempts_made} timed out; moving to level {level + 1} "
                                   f"({nxt.priority}, timeout {nxt.timeout_ms} ms)", level + 1)
    return RetryDecision(True, f"attempt {attempts_made} {outcome.lower()}", level)


def level_params(spec: TaskSpec, level: int) -> tuple[str, int]:
    """(priority, timeout_ms) of an attempt at `level` of the multi-level queue (0: the task's own)."""
    if level <= 0 or not spec.levels:
        return spec.priority, spec.timeout_ms
    rung = spec.levels[min(level, len(spec.levels)) - 1]
    return rung.priority, rung.timeout_ms
