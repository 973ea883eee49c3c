"""Instants as the events carry them (epoch milliseconds, UTC) and as people read them (ISO-8601).

Shared by the pure core (run ids are built from `iso`) and the executor (KSCHED_SCHEDULED_FOR), so it
sits below both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def from_ms(ms: int, tz: ZoneInfo | None = None) -> datetime:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.astimezone(tz) if tz is not None else dt


def iso(ms: int) -> str:
    """UTC ISO-8601 with a Z, milliseconds only when not zero (used in run ids)."""
    dt = from_ms(ms)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ms % 1000:03d}Z" if ms % 1000 else f"{base}Z"
