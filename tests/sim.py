"""Drives the pure reducer like the shell does, one job at a time, recording every decision."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ksched.schemas.events import (
    ClaimGranted,
    ClaimTask,
    JobSpec,
    SubmitJob,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    TaskReady,
    TaskStarted,
    Tick,
)
from ksched.streams.core.decide import decide, next_wakeup
from ksched.streams.core.emit import CONTROL, EVENTS, READY, Emit
from ksched.streams.core.model import JobState, Params

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z, a whole minute


@dataclass
class Sim:
    params: Params = field(default_factory=lambda: Params(lease_ms=10_000))
    state: JobState | None = None
    now: int = T0
    emits: list[Emit] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def send(self, event: Any) -> list[Emit]:
        if isinstance(event, Tick):  # the partition clock, as the shell keeps it
            self.now = max(self.now, event.now_ms)
        step = decide(self.state, event, self.now, self.params)
        self.state = step.state
        self.emits.extend(step.emits)
        return step.emits

    def submit(self, job: JobSpec) -> list[Emit]:
        return self.send(SubmitJob(f"cmd{next(self._ids)}", job, self.now))

    def tick(self, at: int | None = None) -> list[Emit]:
        self.now = max(self.now, at if at is not None else self.now)
        return self.send(Tick(0, self.now))

    def tick_to(self, at: int, step_ms: int = 1000) -> list[Emit]:
        """Ticks every `step_ms` up to `at` (only when the job is due, as the due index would)."""
        out: list[Emit] = []
        t = self.now
        while t < at:
            t = min(at, t + step_ms)
            wake = next_wakeup(self.state)
            self.now = t
            if wake is not None and wake <= t:
                out += self.send(Tick(0, t))
        return out

    # --- executor side ----------------------------------------------------------------------

    def claim(self, ready: TaskReady, executor: str = "ex1") -> list[Emit]:
        cid = f"{ready.task_id}#{ready.attempt}@{executor}"
        return self.send(ClaimTask(cid, ready.job_id, ready.run_id, ready.task_id, ready.attempt, executor, self.now))

    def run(self, ready: TaskReady, exit_code: int = 0, executor: str = "ex1") -> ClaimGranted:
        """Claim, start and complete `ready`; returns the grant."""
        grant = one(self.claim(ready, executor), ClaimGranted)
        self.start(grant)
        self.complete(grant, exit_code)
        return grant

    def start(self, g: ClaimGranted) -> list[Emit]:
        return self.send(TaskStarted(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id,
                                     self.now))

    def heartbeat(self, g: ClaimGranted) -> list[Emit]:
        return self.send(TaskHeartbeat(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id,
                                       self.now))

    def complete(self, g: ClaimGranted, exit_code: int = 0, offer: str = "", pool: str = "") -> list[Emit]:
        return self.send(TaskCompleted(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id,
                                       exit_code, self.now, self.now, offer_id=offer, offer_pool=pool))

    def fail(self, g: ClaimGranted, reason: str, retryable: bool = True) -> list[Emit]:
        return self.send(TaskFailed(g.job_id, g.run_id, g.task_id, g.attempt, g.fencing_token, g.executor_id,
                                    reason, "test", retryable, self.now))

    # --- queries ------------------------------------------------------------------------------

    def readies(self, emits: list[Emit] | None = None) -> list[TaskReady]:
        return [e.record for e in (self.emits if emits is None else emits) if e.channel == READY]

    def logged(self, cls: type, emits: list[Emit] | None = None) -> list[Any]:
        return [e.record for e in (self.emits if emits is None else emits)
                if e.channel == EVENTS and isinstance(e.record, cls)]

    def control(self, emits: list[Emit]) -> list[Any]:
        return [e.record for e in emits if e.channel == CONTROL]


def one(emits: list[Emit], cls: type) -> Any:
    found = [e.record for e in emits if isinstance(e.record, cls)]
    assert found, f"no {cls.__name__} in {[type(e.record).__name__ for e in emits]}"
    return found[0]
