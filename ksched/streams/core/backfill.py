"""Backfill's arithmetic: ranges of occurrence instants, and the next instants a backfill fires. Pure.

A backfill covers [from, to]; `backfilled` (merged ranges) is what every backfill of the job covered before, so
a repeated or overlapping backfill fires only instants no earlier one did. Its state is a cursor over its
ranges, so its cost per event does not grow with the length of the range.
"""

from __future__ import annotations

from collections.abc import Iterator

from ksched.schemas.events import Schedule

from .schedule import fire_times

Ranges = tuple[tuple[int, int], ...]


def subtract(lo: int, hi: int, covered: Ranges) -> Ranges:
    """[lo, hi] without the (sorted, disjoint) `covered` ranges."""
    out: list[tuple[int, int]] = []
    start = lo
    for c_lo, c_hi in covered:
        if c_hi < start or c_lo > hi:
            continue
        if c_lo > start:
            out.append((start, c_lo - 1))
        start = max(start, c_hi + 1)
        if start > hi:
            break
    if start <= hi:
        out.append((start, hi))
    return tuple(out)


def merge(covered: Ranges, lo: int, hi: int) -> Ranges:
    """`covered` with [lo, hi] added, merged (adjacent ranges join), sorted."""
    spans = sorted([*covered, (lo, hi)])
    out: list[tuple[int, int]] = []
    for s_lo, s_hi in spans:
        if out and s_lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], s_hi))
        else:
            out.append((s_lo, s_hi))
    return tuple(out)


def instants(schedule: Schedule, job_id: str, ranges: Ranges, after_ms: int | None) -> Iterator[int]:
    """The occurrence instants in `ranges` after `after_ms`, in order (lazily: a year of seconds costs nothing
    until it is fired)."""
    for lo, hi in ranges:
        if after_ms is not None and after_ms >= hi:
            continue
        start = lo - 1 if after_ms is None or after_ms < lo else after_ms
        for t in fire_times(schedule, job_id, start):
            if t > hi:
                break
            yield t
