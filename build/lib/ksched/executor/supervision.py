"""Supervising what this executor holds: its granted attempts while they run, and its claims while they wait.

Owns the runtime's hooks (an attempt started; an attempt ended: reported, then settled in the ledger) and the
supervisor thread: heartbeats for every granted attempt, the attempts' timeouts, the renewal of claims waiting
longer than half a lease for their answer, and giving up on claims that wait longer than `claim_timeout_s`.
"""

from __future__ import annotations

import threading
import time

from ksched.schemas.events import FailureReason

from .ledger import Ledger, Stats, now_ms
from .reporting import Reporter
from .runtime import Attempt, Ended, Runtime
from .sandbox import Process


def timed_out(attempt: Attempt, wall_ms: int) -> bool:
    """Whether a started attempt has run longer than its timeout (0: none)."""
    proc, timeout_ms = attempt.process, attempt.ready.timeout_ms
    return proc is not None and timeout_ms > 0 and wall_ms - proc.started_at_ms > timeout_ms


class Supervisor:
    def __init__(self, ledger: Ledger, stats: Stats, reporter: Reporter, *, heartbeat_s: float, lease_s: float,
                 claim_timeout_s: float) -> None:
        self.ledger = ledger
        self.stats = stats
        self.reporter = reporter
        self.heartbeat_s = heartbeat_s
        # A claim answered within half a lease is never renewed; one waiting longer is, every half lease.
        self.renew_every_s = lease_s / 2
        self.claim_timeout_s = claim_timeout_s

    def on_started(self, attempt: Attempt, proc: Process) -> None:
        self.stats.started += 1
        self.reporter.started(attempt, proc)

    def on_ended(self, ended: Ended) -> None:
        self.reporter.ended(ended)
        self.stats.finished += 1
        self.ledger.ended(ended.attempt.key)

    def run(self, runtime: Runtime, stop: threading.Event) -> None:
        """The supervisor thread, until `stop`."""
        next_beat = time.monotonic() + self.heartbeat_s
        while not stop.wait(0.05):
            now = time.monotonic()
            sweep = self.ledger.sweep(now, self.claim_timeout_s, self.renew_every_s)
            self.stats.abandoned += sweep.abandoned
            wall = now_ms()
            for p in sweep.renew:  # a scheduler this slow to answer must not let the grant lapse meanwhile
                self.stats.renewals += 1
                self.reporter.renewal(p, wall)
            for a in sweep.attempts:
                if timed_out(a, wall):
                    runtime.end_early(a, FailureReason.TIMEOUT, f"timed out after {a.ready.timeout_ms} ms")
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                for a in sweep.attempts:
                    self.reporter.heartbeat(a, wall)
            self.reporter.poll()
