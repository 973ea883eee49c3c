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


def parse_instant(text: str) -> int:
    """An ISO-8601 instant with an offset (or Z), or epoch milliseconds; ValueError naming the text if neither."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 instant") from None
    if dt.tzinfo is None:
        raise ValueError(f"instant {text!r} has no time zone offset")
    return int(dt.timestamp() * 1000)
