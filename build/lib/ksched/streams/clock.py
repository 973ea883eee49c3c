"""The partition clock: the time of the latest tick a partition has seen, kept in its table so a restarted
worker resumes from it. Decisions read this clock, never the wall clock, so replay reproduces them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ksched.schemas.events import Tick

from .jobstore import RESERVED, Store

CLOCK_KEY = RESERVED + b"clock"


@dataclass(frozen=True, slots=True)
class Advance:
    """What one tick does to its partition: the tick to decide with, and up to when jobs are due."""

    tick: Tick
    horizon_ms: int


class PartitionClocks:
    def __init__(self) -> None:
        self._now: dict[int, int | None] = {}

    def get(self, partition: int) -> int | None:
        return self._now.get(partition)

    def restore(self, partition: int, raw: bytes) -> None:
        self._now[partition] = int(raw)

    def forget(self, partition: int) -> None:
        self._now.pop(partition, None)

    def advance(self, store: Store, partition: int, tick: Tick, resume_gap_ms: int, lease_ms: int) -> Advance:
        """Move the clock to the tick (never backwards) and say which jobs the tick visits.

        After a gap longer than `resume_gap_ms` the scheduler was away: the reports sent meanwhile were read
        with a stale clock, and grants made while catching up reached their executors only now. The tick is
        marked `resumed_from_ms`, and every job with a lease that would lapse within a lease from now is
        visited, so its leases are renewed rather than lapsed.
        """
        clock = self._now.get(partition)
        now = tick.now_ms if clock is None else max(clock, tick.now_ms)
        if now != clock:
            self._now[partition] = now
            store.put(CLOCK_KEY, str(now).encode())
        if clock is not None and now - clock > resume_gap_ms:
            return Advance(replace(tick, resumed_from_ms=clock), now + lease_ms)
        return Advance(tick, now)
