"""Supervising what this executor holds: its granted attempts while they run, and its claims while they wait.

Owns the runtime's hooks (an attempt started; an attempt ended: reported, then settled in the ledger) and the
supervisor thread: heartbeats for every granted attempt, the attempts' timeouts, the renewal of claims waiting
longer than half a lease for their answer, and giving up on claims that wait longer than `claim_timeout_s`.

An attempt's start is reported `START_FOLD_S` after it, unless it ended by then: its end report carries its start
(the scheduler takes a completion of a granted attempt as its start too), so a quick attempt costs one report,
not two, and a long one still shows RUNNING after a moment. The grant's lease covers the wait (heartbeats renew a
granted attempt's lease whether or not its start was reported).

An attempt that completes while the executor will have a slot free offers that slot in its completion report
(`Ledger.offer`): the scheduler may grant it the task the completion makes ready (the next task of a DAG) at once,
sending the ready record and the grant to this executor's control partition, with no claim in between.
"""

from __future__ import annotations

import threading
import time
import uuid

from ksched.schemas.events import FailureReason

from .ledger import Ledger, Stats, now_ms
from .reporting import Reporter
from .runtime import Attempt, Ended, Runtime
from .sandbox import Process


def timed_out(attempt: Attempt, wall_ms: int) -> bool:
    """Whether a started attempt has run longer than its timeout (0: none)."""
    proc, timeout_ms = attempt.process, attempt.ready.timeout_ms
    return proc is not None and timeout_ms > 0 and wall_ms - proc.started_at_ms > timeout_ms


#: How long after its start an attempt's start is reported, unless it ended meanwhile.
START_FOLD_S = 0.25


class Supervisor:
    def __init__(self, ledger: Ledger, stats: Stats, reporter: Reporter, *, heartbeat_s: float, lease_s: float,
                 claim_timeout_s: float, slots: int = 0, pool: str = "") -> None:
        self.ledger = ledger
        #: Completions offer a free slot when the executor has `slots` (0: never) for tasks of `pool`.
        self.slots = slots
        self.pool = pool
        self.stats = stats
        self.reporter = reporter
        self.heartbeat_s = heartbeat_s
        # A claim answered within half a lease is never renewed; one waiting longer is, every half lease.
        self.renew_every_s = lease_s / 2
        self.claim_timeout_s = claim_timeout_s
        self.fold_s = min(START_FOLD_S, heartbeat_s / 2)
        self._lock = threading.Lock()
        self._unreported: dict[str, tuple[float, Attempt, Process]] = {}  # attempt key -> (report at, ...)

    def on_started(self, attempt: Attempt, proc: Process) -> None:
        self.stats.started += 1
        if self.fold_s <= 0:
            self.reporter.started(attempt, proc)
            return
        with self._lock:
            self._unreported[attempt.key] = (time.monotonic() + self.fold_s, attempt, proc)

    def report_starts(self, now: float, everything: bool = False) -> None:
        """Report the starts of the attempts still running `fold_s` after they started (all: `everything`)."""
        with self._lock:
            due = [k for k, (at, _, _) in self._unreported.items() if everything or at <= now]
            starts = [self._unreported.pop(k) for k in due]
        for _, attempt, proc in starts:
            self.reporter.started(attempt, proc)

    def on_ended(self, ended: Ended) -> None:
        with self._lock:
            if self._unreported.pop(ended.attempt.key, None) is not None:
                self.stats.folded += 1  # its end reports its start
        offer = ""
        if self.slots > 0 and not ended.reason:
            a = ended.attempt
            offer = f"{a.key}/offer@{self.reporter.id}/{uuid.uuid4().hex[:12]}"
            if self.ledger.offer(offer, time.monotonic(), self.slots):
                self.stats.offered += 1
            else:
                offer = ""
        self.reporter.ended(ended, offer, self.pool)
        self.stats.finished += 1
        self.ledger.ended(ended.attempt.key)

    def run(self, runtime: Runtime, stop: threading.Event) -> None:
        """The supervisor thread, until `stop`."""
        next_beat = time.monotonic() + self.heartbeat_s
        while not stop.wait(0.05):
            now = time.monotonic()
            self.report_starts(now)
            # Processes created at their claims are kept while their claims live (each was opened in the ledger
            # before its process was asked for, so one created after this sweep is in it).
            early = runtime.has_early()
            sweep = self.ledger.sweep(now, self.claim_timeout_s, self.renew_every_s, with_live=early)
            self.stats.abandoned += sweep.abandoned
            if early:
                runtime.keep_early(sweep.live)
            wall = now_ms()
            if sweep.renew:  # a scheduler this slow to answer must not let the grants lapse meanwhile
                self.stats.renewals += len(sweep.renew)
                self.stats.renewal_records += self.reporter.renewals(sweep.renew, wall)
            for a in sweep.attempts:
                if timed_out(a, wall):
                    runtime.end_early(a, FailureReason.TIMEOUT, f"timed out after {a.ready.timeout_ms} ms")
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                if sweep.attempts:
                    self.stats.heartbeats += self.reporter.heartbeats(sweep.attempts, wall)
            self.reporter.poll()
        self.report_starts(time.monotonic(), everything=True)
