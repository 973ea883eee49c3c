"""The HTTP API's query parameters, checked before anything is read: a bad one is a 400 that names it.

Pure: a mapping of parameters in, a typed query or a `QueryError` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ksched.errors import KschedError
from ksched.instants import parse_instant
from ksched.schemas.events import RunState

RUN_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
MAX_LIMIT = 10_000


class QueryError(KschedError):
    """A query parameter is invalid; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


#: The largest page of history one request may ask for (0 asks for all).
MAX_HISTORY = 100_000


def _only(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for name in query:
        if name not in allowed:
            raise QueryError(name, f"unknown parameter (this endpoint takes {', '.join(allowed) or 'none'})")


def _instant(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise QueryError(name, str(exc)) from None


@dataclass(frozen=True)
class RunsQuery:
    states: frozenset[str] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 50


def runs_query(query: Mapping[str, str]) -> RunsQuery:
    """`state` (comma-separated run states), `since`/`until` (epoch ms or ISO-8601), `limit` (0: all)."""
    _only(query, ("state", "since", "until", "limit"))
    states = None
    if query.get("state"):
        states = frozenset(s.strip().upper() for s in query["state"].split(","))
        unknown = sorted(states - set(RUN_STATES))
        if unknown:
            raise QueryError("state", f"unknown run state {unknown[0]!r} (one of {', '.join(RUN_STATES)})")
    text = query.get("limit", "50")
    if not text.isdigit() or int(text) > MAX_LIMIT:
        raise QueryError("limit", f"expected a whole number from 0 to {MAX_LIMIT}, got {text!r}")
    since, until = _instant(query, "since"), _instant(query, "until")
    if since is not None and until is not None and since > until:
        raise QueryError("until", "is before since")
    return RunsQuery(states, since, until, int(text))


@dataclass(frozen=True)
class HistoryQuery:
    ticks: bool = False
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 1000


def history_query(query: Mapping[str, str]) -> HistoryQuery:
    """`ticks=1` (the partition's ticks too), `since`/`until` (ISO-8601 or epoch ms), `limit` (a page; 0: all)."""
    _only(query, ("ticks", "since", "until", "limit"))
    ticks = query.get("ticks", "0")
    if ticks not in ("0", "1"):
        raise QueryError("ticks", f"expected 0 or 1, got {ticks!r}")
    text = query.get("limit", "1000")
    if not text.isdigit() or int(text) > MAX_HISTORY:
        raise QueryError("limit", f"expected a whole number from 0 to {MAX_HISTORY}, got {text!r}")
    since, until = _instant(query, "since"), _instant(query, "until")
    if since is not None and until is not None and since > until:
        raise QueryError("until", "is before since")
    return HistoryQuery(ticks == "1", since, until, int(text))


def no_query(query: Mapping[str, str]) -> None:
    _only(query, ())


def attempt_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise QueryError("attempt", f"expected an attempt number from 1, got {text!r}")
    return int(text)
