"""When a job fires: cron expressions in a time zone, one-off instants, spread, and the DST rules.

Pure functions of their arguments (no clock). The scheduler agent, `ksched next` and the tests all use
these, so a preview is exactly what the agent will do.

Cron dialect
    5 fields `minute hour day-of-month month day-of-week`, or 6 with a leading seconds field
    (`second minute hour dom month dow`, as Quartz and Spring write it). Macros: @yearly @annually
    @monthly @weekly @daily @midnight @hourly. When both day-of-month and day-of-week are restricted,
    either matching is enough (classic Vixie cron).

Daylight saving time (decided, documented in docs/SCHEDULING.md)
    Cron fields are matched against wall-clock time in the job's IANA zone.
    * A wall time that does not exist (spring-forward gap) fires once, at the first valid instant
      after the gap (the transition itself). Several matches inside one gap still fire once.
    * A wall time that occurs twice (fall-back) fires once, at its first occurrence.
"""

from __future__ import annotations

import hashlib
import re
import sys
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ksched.errors import JobSpecError
from ksched.instants import from_ms
from ksched.schemas.events import Schedule

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Cron:
    """A validated cron expression, normalised to 6 fields (seconds first)."""

    expr: str
    fields6: str

    @property
    def has_seconds(self) -> bool:
        return len(self.expr.split()) == 6


@lru_cache(maxsize=4096)
def parse_cron(expr: str) -> Cron:
    """Validate `expr`; raise JobSpecError('schedule', ...) naming what is wrong."""
    text = " ".join(expr.split())
    if not text:
        raise JobSpecError("schedule", "empty cron expression")
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise JobSpecError("schedule", f"unknown macro {text!r} (known: {', '.join(MACROS)})")
        base = MACROS[text.lower()]
        fields6 = "0 " + base
    else:
        parts = text.split(" ")
        if len(parts) == 5:
            fields6 = "0 " + text
        elif len(parts) == 6:
            fields6 = text
        else:
            raise JobSpecError(
                "schedule", f"cron expression {expr!r} has {len(parts)} fields; expected 5, or 6 with seconds first"
            )
    try:
        # One parse serves both the check and the firing (`_matcher` caches it): parsing is most of what
        # registering a job with an expression of its own costs (`croniter.is_valid` would parse it once more).
        fires = _matcher(fields6).next_after(_EPOCH)
    except Exception as exc:
        raise JobSpecError("schedule", f"invalid cron expression {expr!r}: {exc}") from None
    if fires is None:
        raise JobSpecError("schedule", f"invalid cron expression {expr!r}: it matches no date")
    return Cron(text, fields6)


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise JobSpecError("timezone", f"unknown IANA time zone {name!r}") from None


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000) if dt.tzinfo else int((dt - _EPOCH).total_seconds() * 1000)


def local_to_utc_ms(naive: datetime, tz: ZoneInfo) -> int:
    """The instant a wall-clock time stands for, with the DST rules above."""
    first = naive.replace(tzinfo=tz, fold=0)
    a = to_ms(first)
    b = to_ms(naive.replace(tzinfo=tz, fold=1))
    if a == b or _roundtrips(first, naive):
        # Unambiguous, or ambiguous: fold=0 is the first occurrence (PEP 495).
        return a
    # In a gap neither fold round-trips; the transition lies between the two readings.
    return _transition_between(min(a, b), max(a, b), tz)


def _roundtrips(aware: datetime, naive: datetime) -> bool:
    back = aware.astimezone(UTC).astimezone(aware.tzinfo).replace(tzinfo=None)
    return back == naive


def _transition_between(lo_ms: int, hi_ms: int, tz: ZoneInfo) -> int:
    """The first instant in (lo, hi] whose UTC offset differs from lo's (a DST transition)."""
    lo_off = from_ms(lo_ms, tz).utcoffset()
    lo, hi = lo_ms, hi_ms
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if from_ms(mid, tz).utcoffset() == lo_off:
            lo = mid
        else:
            hi = mid
    return hi


def spread_offset_ms(job_id: str, spread_ms: int) -> int:
    """A stable per-job offset in [0, spread_ms), like Jenkins' `H`: same job, same offset, everywhere."""
    if spread_ms <= 0:
        return 0
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % spread_ms


#: croniter keeps every expression it ever expanded in a module-level dict that nothing trims (about 0.5 KiB per
#: distinct expression: 50 MiB in a worker holding 100,000 jobs with expressions of their own). `_matcher` is the
#: bounded cache; croniter's is emptied when it outgrows it (an instance reads it only while it is constructed).
_CRONITER_EXPRESSIONS: dict[object, object] = getattr(sys.modules[croniter.__module__], "EXPRESSIONS", {})
_ONE_SECOND = timedelta(seconds=1)
#: A date that exists recurs within 8 years (29 February, over a century year that is not a leap year): a plain
#: expression with no match in 9 years has none at all.
_RECUR_YEARS = 9


class _Croniter:
    """Stepping with croniter itself: the expressions `_Fields` does not cover (`L`, `#`)."""

    def __init__(self, it: croniter) -> None:
        self._it = it

    def next_after(self, cur: datetime) -> datetime | None:
        self._it.set_current(cur, force=True)
        try:
            return self._it.get_next(datetime)
        except (ValueError, OverflowError):  # past year 9999, or no date matches (croniter's bad date)
            return None


@dataclass(frozen=True)
class _Fields:
    """A plain expression as croniter expanded it: the values each field allows (`None`: any). Stepping over
    them finds the same instants as croniter's `get_next` (tests/unit/test_schedule.py compares the two) at a
    tenth of its cost, which registration pays for every job with an expression of its own."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # 0 is Sunday, as in cron

    def _day_matches(self, d: datetime) -> bool:
        if self.months is not None and d.month not in self.months:
            return False
        dom = self.days is None or d.day in self.days
        dow = self.weekdays is None or (d.weekday() + 1) % 7 in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return dom or dow  # both restricted: either is enough (Vixie cron, croniter's day_or)
        return dom and dow

    def next_after(self, cur: datetime) -> datetime | None:
        """The first whole second strictly after `cur` (naive wall time) that the expression matches."""
        try:
            t = cur.replace(microsecond=0) + _ONE_SECOND
        except OverflowError:
            return None
        day = t.replace(hour=0, minute=0, second=0)
        clock: tuple[int, int, int] | None = (t.hour, t.minute, t.second)
        limit = t.year + _RECUR_YEARS
        while day.year < limit:
            if self._day_matches(day):
                hms = self._first_at_or_after(clock) if clock else (self.hours[0], self.minutes[0], self.seconds[0])
                if hms is not None:
                    return day.replace(hour=hms[0], minute=hms[1], second=hms[2])
            clock = None
            try:
                day += timedelta(days=1)
            except OverflowError:
                return None
        return None

    def _first_at_or_after(self, clock: tuple[int, int, int]) -> tuple[int, int, int] | None:
        h, m, s = clock
        i = bisect_left(self.hours, h)
        if i == len(self.hours):
            return None
        if self.hours[i] > h:
            return self.hours[i], self.minutes[0], self.seconds[0]
        j = bisect_left(self.minutes, m)
        if j < len(self.minutes) and self.minutes[j] > m:
            return h, self.minutes[j], self.seconds[0]
        if j < len(self.minutes):
            k = bisect_left(self.seconds, s)
            if k < len(self.seconds):
                return h, m, self.seconds[k]
            if j + 1 < len(self.minutes):
                return h, self.minutes[j + 1], self.seconds[0]
        if i + 1 < len(self.hours):
            return self.hours[i + 1], self.minutes[0], self.seconds[0]
        return None


def _fields(expanded: Sequence[Sequence[int | str]], nth: Mapping[int, object]) -> _Fields | None:
    """`croniter.expand`'s result (minute, hour, day, month, weekday, second) as `_Fields`, or None where it
    uses what they do not cover."""
    if nth or any(not isinstance(v, int) for f in expanded for v in f if v != "*"):
        return None

    def values(f: Sequence[int | str], lo: int, hi: int) -> tuple[int, ...]:
        return tuple(range(lo, hi + 1)) if f[0] == "*" else tuple(sorted({int(v) for v in f}))

    def allowed(f: Sequence[int | str]) -> frozenset[int] | None:
        return None if f[0] == "*" else frozenset(int(v) for v in f)

    minute, hour, day, month, weekday, second = expanded
    return _Fields(values(second, 0, 59), values(minute, 0, 59), values(hour, 0, 23), allowed(day), allowed(month),
                   allowed(weekday))


#: Per field of a 6-field expression (second, minute, hour, day, month, weekday): the lowest and highest value
#: written, and where `*` and `a/n` end (a weekday may be written 7, Sunday; croniter counts them to 6).
_RANGES = ((0, 59, 59), (0, 59, 59), (0, 23, 23), (1, 31, 31), (1, 12, 12), (0, 7, 6))
_ITEM = re.compile(r"(\*|\d+-\d+|\d+)(?:/(\d+))?")
#: Month and weekday names, read as their numbers (croniter's names; with a seconds field it refused a weekday
#: written 7 beside a name, `sun,7`, which cron takes).
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {4: {n: str(i) for i, n in enumerate(_MONTHS, 1)}, 5: {n: str(i) for i, n in enumerate(_WEEKDAYS)}}
_NAME = re.compile(r"[a-z]{3}")


def _plain_fields(fields6: str) -> _Fields | None:
    """The common expressions (numbers, month and weekday names, `*`, `a-b`, steps, lists) read without croniter,
    as croniter reads them (tests/unit/test_schedule.py compares the two); None for anything else (`L`, `#`, a
    range that wraps, an error), which croniter then parses. Registering a job with an expression of its own mostly
    paid for croniter's parse; its fields are few and shared (`_field`)."""
    texts = fields6.split(" ")
    sets = [_field(text, i) for i, text in enumerate(texts)]
    if any(v is None for v in sets):
        return None
    second, minute, hour, day, month, weekday = sets
    assert second and minute and hour and day and month and weekday
    # As croniter: a day field is "any" when written `*`, or when it lists every day and the other day field's
    # text holds a `*`; both day fields restricted means either matching is enough.
    day_any = texts[3] == "*" or (len(day) == 31 and "*" in texts[5])
    weekday_any = texts[5] == "*" or (len(weekday) == 7 and "*" in texts[3])
    return _Fields(second, minute, hour, None if day_any else frozenset(day), frozenset(month),
                   None if weekday_any else frozenset(weekday))


@lru_cache(maxsize=4096)
def _field(text: str, index: int) -> tuple[int, ...] | None:
    """The values field `index` of a 6-field expression allows, sorted; None where `_plain_fields` defers."""
    lo, hi, top = _RANGES[index]
    if index in _NAMES:
        names = _NAMES[index]
        text = _NAME.sub(lambda m: names.get(m.group(0), m.group(0)), text.lower())
    values: set[int] = set()
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if m is None:
            return None
        base, step = m.group(1), int(m.group(2) or 1)
        if base == "*":
            a, b = lo, top
        elif "-" in base:
            a, b = (int(v) for v in base.split("-"))
            if a >= b:  # `a-a` is the whole cycle to croniter, `b-a` wraps around
                return None
        else:
            a = b = int(base)
            if m.group(2):  # `a/n` runs to the field's end (`top/n` is the whole cycle to croniter)
                if a >= top:
                    return None
                b = top
        if step < 1 or a < lo or b > hi:
            return None
        values.update(range(a, b + 1, step))
    if index == 5:
        values = {0 if d == 7 else d for d in values}
    return tuple(sorted(values))


@lru_cache(maxsize=4096)
def _matcher(fields6: str) -> _Fields | _Croniter:
    """A parsed expression to reuse: parsing costs far more than stepping (single-threaded use only)."""
    fast = _plain_fields(fields6)
    if fast is not None:
        return fast
    expanded, nth = croniter.expand(fields6, second_at_beginning=True)
    fast = _fields(expanded, nth)
    matcher = fast if fast is not None else _Croniter(croniter(fields6, _EPOCH, second_at_beginning=True))
    if len(_CRONITER_EXPRESSIONS) > 4096:
        _CRONITER_EXPRESSIONS.clear()
    return matcher


def _nominal_next(cron: Cron, tz: ZoneInfo, after_ms: int) -> int | None:
    """The first nominal fire instant strictly after `after_ms`, with the DST rules applied."""
    start_local = from_ms(after_ms, tz).replace(tzinfo=None)
    it = _matcher(cron.fields6)
    # Stepping works on naive wall time here, so it never applies DST itself.
    local: datetime | None = start_local - _ONE_SECOND
    for _ in range(100_000):  # a repeated hour of per-second matches is 3,600; stay far above it
        local = it.next_after(local)  # type: ignore[arg-type]
        if local is None:  # past year 9999: the schedule has no more instants
            return None
        instant = local_to_utc_ms(local, tz)
        if instant > after_ms:
            return instant
    return None


#: Serves the jobs being worked on (each event asks for its job's next fire again, with the same cursor); the
#: entry pins its `Schedule`, so a cache as large as the registered jobs held about 0.2 KiB for each of them.
@lru_cache(maxsize=8192)
def next_fire(schedule: Schedule, job_id: str, after_ms: int) -> int | None:
    """The first fire instant strictly after `after_ms` (None: the schedule has no more)."""
    offset = spread_offset_ms(job_id, schedule.spread_ms)
    if schedule.cron:
        nominal = _nominal_next(parse_cron(schedule.cron), zone(schedule.timezone), after_ms - offset)
        return None if nominal is None else nominal + offset
    if schedule.at_ms is not None and schedule.at_ms + offset > after_ms:
        return schedule.at_ms + offset
    return None


def fire_times(schedule: Schedule, job_id: str, after_ms: int) -> Iterator[int]:
    """Every fire instant strictly after `after_ms`, in order (endless for cron, at most one for `at`)."""
    t: int | None = after_ms
    while True:
        t = next_fire(schedule, job_id, t)
        if t is None:
            return
        yield t


def preview(schedule: Schedule, job_id: str, after_ms: int, count: int) -> list[int]:
    out: list[int] = []
    for t in fire_times(schedule, job_id, after_ms):
        out.append(t)
        if len(out) >= count:
            break
    return out
