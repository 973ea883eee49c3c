"""The due-time index of one partition: which jobs a tick must visit, without scanning all of them.

A heap of (wake instant, job id) with lazy deletion; rebuilt from the partition's states when the
partition is assigned. A tick costs O(due · log n), not O(registered jobs).
"""

from __future__ import annotations

import heapq


class DueIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._wake: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._wake)

    def set(self, job_id: str, wake_ms: int | None) -> None:
        if wake_ms is None:
            self._wake.pop(job_id, None)
            return
        if self._wake.get(job_id) == wake_ms:
            return
        self._wake[job_id] = wake_ms
        heapq.heappush(self._heap, (wake_ms, job_id))
        if len(self._heap) > 4 * len(self._wake) + 1024:
            self._compact()

    def wake_of(self, job_id: str) -> int | None:
        return self._wake.get(job_id)

    def pop_due(self, now_ms: int) -> list[str]:
        """Job ids whose wake instant is at or before `now_ms`, earliest first; they leave the index."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now_ms:
            wake, job_id = heapq.heappop(self._heap)
            if self._wake.get(job_id) == wake:
                del self._wake[job_id]
                due.append(job_id)
        return due

    def _compact(self) -> None:
        self._heap = [(w, j) for j, w in self._wake.items()]
        heapq.heapify(self._heap)
