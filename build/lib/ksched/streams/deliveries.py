"""Which inbox records' outputs the broker has acknowledged, so their outbox entries can be dropped early.

A job record keeps the outputs of the inputs it applied until they are known to be out (see
`streams.shell`). The committed input offset says so, but only once per commit interval; a busy job's outbox,
and so each write of its record, would grow meanwhile with everything it emitted. The producer's delivery
acknowledgements say so as soon as they arrive.
"""

from __future__ import annotations

import threading


class Deliveries:
    """Per inbox partition, the offset through which every input's outputs were acknowledged by the broker.
    Delivery callbacks run on whichever thread polls the producer (the loop, or the flush in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, dict[int, int]] = {}  # partition -> input offset -> outputs not yet acknowledged
        self._through: dict[int, int] = {}
        # Bumped when a partition is forgotten, so an acknowledgement of an output sent before (the same input
        # offsets are processed again after a reassignment) cannot count for one sent after.
        self._generation: dict[int, int] = {}

    def sent(self, partition: int, offset: int, count: int) -> int:
        """Record `count` outputs of input `offset` in flight; returns the token their acknowledgements carry."""
        with self._lock:
            pending = self._open.setdefault(partition, {})
            pending[offset] = pending.get(offset, 0) + count
            return self._generation.get(partition, 0)

    def acknowledged(self, partition: int, offset: int, generation: int) -> None:
        with self._lock:
            pending = self._open.get(partition)
            if pending is None or offset not in pending or generation != self._generation.get(partition, 0):
                return  # the partition was reassigned meanwhile
            pending[offset] -= 1
            while pending:  # inputs are sent in offset order: advance over the fully acknowledged head
                head = next(iter(pending))
                if pending[head] > 0:
                    break
                del pending[head]
                self._through[partition] = head

    def through(self, partition: int) -> int | None:
        with self._lock:
            return self._through.get(partition)

    def forget(self, partitions: set[int]) -> None:
        """A partition that moved: only what this worker sends after it came back counts."""
        with self._lock:
            for p in partitions:
                self._open.pop(p, None)
                self._through.pop(p, None)
                self._generation[p] = self._generation.get(p, 0) + 1
