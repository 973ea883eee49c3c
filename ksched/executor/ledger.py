"""What this executor has claimed and taken on, shared by its threads under one lock.

The ledger holds the claims waiting for the scheduler's answer, the claims given up on, the slots offered with
completions (and the ready records sent ahead of the grants that take them up), the granted attempts, the attempts
ever taken on (so none starts twice) and whether the executor is draining. The claim loop, the
control thread, the supervisor and the runtime's hooks each change it through one method, one critical section
each. The decisions about it (free capacity, what a grant means, when a claim is stale or due for renewal) are
pure functions beside it, and so are the executor's counters (`Stats`).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ksched.schemas.events import ClaimGranted, TaskReady

from .runtime import Attempt

K = TypeVar("K")
V = TypeVar("V")

TAKEN_MEMORY = 100_000
ABANDONED_MEMORY = 10_000
#: Offers not (yet) taken up, and ready records sent ahead of a grant, remembered at most.
OFFER_MEMORY = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Pending:
    ready: TaskReady
    claim_id: str
    since: float
    staged: bool  # fired ahead of its instant: it waits in the staging area, not in a slot
    committed: bool = False  # the claim's transaction committed: the scheduler will read it
    renewed: float = 0.0  # when the claim was last sent or renewed (monotonic)


@dataclass
class Stats:
    claimed: int = 0
    granted: int = 0
    rejected: int = 0
    started: int = 0
    finished: int = 0
    txn_aborts: int = 0
    renewals: int = 0  # claims renewed while waiting for a slow scheduler's answer
    renewal_records: int = 0  # the inbox records that carried them (packed per inbox partition)
    abandoned: int = 0  # claims given up on after claim_timeout_s
    transactions: int = 0
    replaced_producers: int = 0  # claim producers fenced by a new one: a transactional call never returned
    replaced_consumers: int = 0  # ready topics' consumers that stalled
    folded: int = 0  # attempts that ended before their start was reported: one report for both
    offered: int = 0  # completions that offered their slot to the task they make ready
    handed: int = 0  # grants taking up such an offer: attempts granted without a claim
    heartbeats: int = 0  # heartbeat records (one per inbox partition per interval, naming its attempts)
    early: int = 0  # processes created at their claims (`Runtime.early`)
    early_taken: int = 0  # of them, let go by their grants
    #: The last claim transactions' durations (bounded: an executor runs for months).
    claim_txn_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def summary(self) -> str:
        txn = sorted(self.claim_txn_ms)

        def at(q: float) -> float:
            return txn[min(len(txn) - 1, int(q * len(txn)))] if txn else 0.0

        return (f"claimed {self.claimed} in {self.transactions} transactions ({self.txn_aborts} aborted, "
                f"{self.replaced_producers} producers and {self.replaced_consumers} consumers replaced; "
                f"recent p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms), granted {self.granted}, "
                f"rejected {self.rejected}, renewed {self.renewals} (in {self.renewal_records} records), "
                f"abandoned {self.abandoned}, "
                f"granted on offers {self.handed} of {self.offered}, "
                f"started {self.started} ({self.folded} reported with their end), finished {self.finished}, "
                f"{self.heartbeats} heartbeat records, {self.early} processes created at their claims "
                f"({self.early_taken} taken by their grants)")


# --- pure decisions -------------------------------------------------------------------------------


def free_capacity(slots: int, prefetch: int, staging: int, due_now: int, staged: int) -> tuple[int, int]:
    """(claims of attempts due now that may still be made, free staging places), given how many claims and
    attempts hold a slot (`due_now`) or a staging place (`staged`). A negative `prefetch` means `slots`."""
    prefetch = prefetch if prefetch >= 0 else slots
    return slots + prefetch - due_now, staging - staged


class GrantAnswer(enum.Enum):
    START = "start"  # the answer to a claim still waiting: run the attempt
    REPEAT = "repeat"  # the attempt was taken on already (a scheduler re-deciding after a crash): ignore
    ABANDONED = "abandoned"  # the claim was given up on: hand the attempt back unstarted
    STOPPING = "stopping"  # the executor is draining: hand the attempt back unstarted
    NOT_OURS = "not ours"  # no claim of ours: ignore


def answer_grant(*, pending: bool, abandoned: bool, taken: bool, draining: bool) -> GrantAnswer:
    """What a grant means, given whether its claim is waiting or was abandoned, whether its attempt was taken on
    already, and whether the executor is draining."""
    if taken:
        return GrantAnswer.REPEAT
    if abandoned:
        return GrantAnswer.ABANDONED
    if not pending:
        return GrantAnswer.NOT_OURS
    if draining:
        return GrantAnswer.STOPPING
    return GrantAnswer.START


#: Claims waiting for their answers from which an attempt due now gets its process created at its claim
#: (`runtime.Runtime.early`): a burst, whose creations then overlap the claims' trip to the scheduler. In a steady
#: stream the early path costs the executors more CPU than it saves: 0.2 ms more per attempt alone (executor and
#: children, 1,500 no-ops through a bare runtime), 222-228 against 237-259 settled tasks/s with it always on
#: (`./dev bench throughput`, 32 slots, two runs each way), 234 with this bound (one run). The cold burst of
#: `./dev bench firing_lag --lookahead 0 --slots 600`: lag p99 1.49 and 2.44 s always on, 2.15, 2.41 and 2.40 s
#: with this bound, 1.93 s with 16, 3.36 s off. Every figure varies a lot from run to run.
EARLY_MIN_WAITING = 64


def creates_early(waiting: int, early_from: int = EARLY_MIN_WAITING) -> bool:
    """Whether claims due now, with `waiting` claims (theirs included) waiting for answers, get their processes
    created at once: from `early_from` waiting (0: always; -1: never)."""
    return early_from >= 0 and waiting >= early_from


def may_offer(slots: int, due_now: int) -> bool:
    """Whether an attempt that is ending may offer its slot to the task its completion makes ready: only when the
    executor, counting that attempt still (`due_now`: claims and attempts holding a slot), would then have a slot
    free, none of it promised to a claim. A busy executor claims from the ready topics as usual, in priority
    order."""
    return due_now <= slots


def is_stale(p: Pending, now: float, claim_timeout_s: float) -> bool:
    """Whether a claim has waited longer than `claim_timeout_s` for its answer (times are monotonic)."""
    return now - p.since > claim_timeout_s


def needs_renewal(p: Pending, now: float, renew_every_s: float) -> bool:
    """Whether a committed claim has waited `renew_every_s` since it was last sent or renewed."""
    return p.committed and now - p.renewed >= renew_every_s


def remember(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """Add `key` to an insertion-ordered memory, forgetting the oldest entry beyond `limit`."""
    memory[key] = value
    if len(memory) > limit:
        del memory[next(iter(memory))]


# --- the ledger -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    what: GrantAnswer
    attempt: Attempt | None = None  # the attempt the grant is for (START, ABANDONED, STOPPING)
    claimed_at: float = 0.0  # when its claim was made (monotonic)


@dataclass(frozen=True)
class Sweep:
    attempts: list[Attempt]  # the attempts granted and not yet ended
    renew: list[Pending]  # the claims to renew now (marked renewed)
    abandoned: int  # how many claims were given up on
    live: set[str] = field(default_factory=set)  # the claims still waiting or granted to an attempt not yet ended


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        # Claims given up on (no answer within claim_timeout_s), oldest first: a grant that still comes for one
        # is handed back at once rather than left to lapse as LOST. Bounded.
        self._abandoned: dict[str, Pending] = {}
        self._attempts: dict[str, Attempt] = {}
        # Attempts this executor has taken on, most recent last: a grant for one of them again (the scheduler
        # re-deciding after a crash) must not start it twice. Bounded; old attempts are long settled.
        self._taken: dict[str, None] = {}
        self._draining = False  # stopping: a grant that still arrives is handed straight back
        # Slots offered with a completion (offer id -> when), and the ready records the scheduler sent ahead of the
        # grants that take offers up (attempt key -> record). Offers are not counted as load: one taken up while
        # the slots filled waits for a slot like a prefetched claim. Bounded; most offers are never taken up.
        self._offers: dict[str, float] = {}
        self._handed: dict[str, TaskReady] = {}

    def load(self) -> tuple[int, int]:
        """(claims and attempts holding a slot, claims and attempts holding a staging place)."""
        with self._lock:
            return self._load()

    def _load(self) -> tuple[int, int]:
        staged = sum(1 for p in self._pending.values() if p.staged) + sum(
            1 for a in self._attempts.values() if a.staged)
        return len(self._pending) + len(self._attempts) - staged, staged

    def open(self, batch: Iterable[Pending]) -> list[Pending]:
        """Record new claims, leaving out attempts this executor already took on (a re-sent ready record)."""
        with self._lock:
            fresh = [p for p in batch if f"{p.ready.task_id}#{p.ready.attempt}" not in self._taken]
            for p in fresh:
                self._pending[p.claim_id] = p
            return fresh

    def offer(self, offer_id: str, now: float, slots: int) -> bool:
        """Offer a slot with a completion, if the executor will have one free (`may_offer`) and is not draining."""
        with self._lock:
            if self._draining or not may_offer(slots, self._load()[0]):
                return False
            remember(self._offers, offer_id, now, OFFER_MEMORY)
            return True

    def handed(self, ready: TaskReady) -> None:
        """A ready record the scheduler sent to this executor: the grant taking up one of its offers follows."""
        with self._lock:
            remember(self._handed, f"{ready.task_id}#{ready.attempt}", ready, OFFER_MEMORY)

    def committed(self, batch: Iterable[Pending], now: float) -> None:
        with self._lock:
            for p in batch:
                p.committed, p.renewed = True, now

    def forget(self, batch: Iterable[Pending]) -> None:
        """Claims whose transaction failed: their records will be delivered again."""
        with self._lock:
            for p in batch:
                self._pending.pop(p.claim_id, None)

    def reject(self, claim_id: str) -> bool:
        """A claim lost to another executor's; whether it was still waiting."""
        with self._lock:
            self._abandoned.pop(claim_id, None)
            return self._pending.pop(claim_id, None) is not None

    def answer(self, grant: ClaimGranted) -> Answer:
        """Settle the claim a grant answers; a START attempt is recorded as granted and taken on."""
        key = f"{grant.task_id}#{grant.attempt}"
        with self._lock:
            pending = self._pending.pop(grant.claim_id, None)
            if pending is None and grant.claim_id in self._offers and key in self._handed:
                # An offer taken up: the grant of the ready record sent ahead of it, as if claimed at the offer.
                pending = Pending(self._handed.pop(key), grant.claim_id, self._offers.pop(grant.claim_id), False,
                                  committed=True)
            abandoned = self._abandoned.pop(grant.claim_id, None) if pending is None else None
            what = answer_grant(pending=pending is not None, abandoned=abandoned is not None,
                                taken=key in self._taken, draining=self._draining)
            claim = pending or abandoned
            if what in (GrantAnswer.REPEAT, GrantAnswer.NOT_OURS) or claim is None:
                return Answer(what)
            attempt = Attempt(claim.ready, grant, staged=claim.staged)
            if what is GrantAnswer.START:
                self._attempts[key] = attempt
            if what is not GrantAnswer.STOPPING:
                remember(self._taken, key, None, TAKEN_MEMORY)
            return Answer(what, attempt, claim.since)

    def attempt(self, key: str) -> Attempt | None:
        with self._lock:
            return self._attempts.get(key)

    def ended(self, key: str) -> None:
        with self._lock:
            self._attempts.pop(key, None)

    def sweep(self, now: float, claim_timeout_s: float, renew_every_s: float, with_live: bool = False) -> Sweep:
        """Give up on stale claims, pick the claims due for renewal, and list the running attempts (and, if asked,
        the live claims)."""
        with self._lock:
            attempts = list(self._attempts.values())
            stale = [c for c, p in self._pending.items() if is_stale(p, now, claim_timeout_s)]
            for c in stale:
                remember(self._abandoned, c, self._pending.pop(c), ABANDONED_MEMORY)
            renew = [p for p in self._pending.values() if needs_renewal(p, now, renew_every_s)]
            for p in renew:
                p.renewed = now
            live = {*self._pending, *(a.grant.claim_id for a in attempts)} if with_live else set()
        return Sweep(attempts, renew, len(stale), live)

    def waiting(self) -> bool:
        """Whether any claim still waits for its answer."""
        return bool(self.waiting_count())

    def waiting_count(self) -> int:
        """How many claims wait for their answers."""
        with self._lock:
            return len(self._pending)

    def drain(self) -> list[Attempt]:
        """From now on every grant is handed back; the attempts granted so far, to end."""
        with self._lock:
            self._draining = True
            return list(self._attempts.values())
