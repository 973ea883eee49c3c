"""Cron, one-off instants, spread and the DST rules, as tables of cases on real zone transitions."""

from __future__ import annotations

from datetime import UTC, datetime

import hypothesis
import hypothesis.strategies as st
import pytest
from croniter import croniter

from ksched.errors import JobSpecError
from ksched.instants import from_ms, iso
from ksched.schemas.events import Schedule
from ksched.streams.core.schedule import (
    _Croniter,
    _Fields,
    _fields,
    _matcher,
    _plain_fields,
    next_fire,
    parse_cron,
    preview,
    spread_offset_ms,
    to_ms,
    zone,
)


def ms(*args: int) -> int:
    return to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def local(t: int, tz: str) -> str:
    return from_ms(t, zone(tz)).isoformat()


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", ms(2026, 1, 1, 0, 7), [ms(2026, 1, 1, 0, 15), ms(2026, 1, 1, 0, 30)]),
        ("*/10 * * * * *", ms(2026, 1, 1, 0, 0, 5), [ms(2026, 1, 1, 0, 0, 10), ms(2026, 1, 1, 0, 0, 20)]),
        ("@hourly", ms(2026, 1, 1, 0, 0), [ms(2026, 1, 1, 1), ms(2026, 1, 1, 2)]),
        ("@daily", ms(2026, 1, 1, 12), [ms(2026, 1, 2), ms(2026, 1, 3)]),
        ("@weekly", ms(2026, 1, 1), [ms(2026, 1, 4), ms(2026, 1, 11)]),  # Sundays
        ("@monthly", ms(2026, 1, 15), [ms(2026, 2, 1), ms(2026, 3, 1)]),
        ("@yearly", ms(2026, 6, 1), [ms(2027, 1, 1), ms(2028, 1, 1)]),
        # Day-of-month and day-of-week both restricted: either matches (the 13th, or any Friday).
        ("0 0 13 * 5", ms(2026, 2, 1), [ms(2026, 2, 6), ms(2026, 2, 13), ms(2026, 2, 20)]),
    ],
)
def test_cron_fire_times_in_utc(expr: str, after: int, expected: list[int]) -> None:
    assert preview(Schedule(cron=expr), "j", after, len(expected)) == expected


def test_fire_times_are_strictly_after_the_given_instant() -> None:
    s = Schedule(cron="*/10 * * * * *")
    assert next_fire(s, "j", ms(2026, 1, 1, 0, 0, 10)) == ms(2026, 1, 1, 0, 0, 20)
    assert next_fire(s, "j", ms(2026, 1, 1, 0, 0, 10) - 1) == ms(2026, 1, 1, 0, 0, 10)


@pytest.mark.parametrize(
    ("expr", "field_message"),
    [
        ("61 * * * *", "invalid cron expression"),
        ("* * *", "has 3 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("@often", "unknown macro"),
        ("", "empty cron expression"),
        ("a b c d e", "invalid cron expression"),
    ],
)
def test_invalid_cron_expressions_name_the_schedule_field(expr: str, field_message: str) -> None:
    with pytest.raises(JobSpecError, match=field_message) as exc:
        parse_cron(expr)
    assert exc.value.field == "schedule"


def test_unknown_time_zone_is_rejected() -> None:
    with pytest.raises(JobSpecError, match="unknown IANA time zone") as exc:
        zone("Mars/Olympus_Mons")
    assert exc.value.field == "timezone"


# --- DST: real transitions ------------------------------------------------------------------------


def test_new_york_spring_forward_gap_fires_once_at_the_first_instant_after_it() -> None:
    s = Schedule(cron="30 2 * * *", timezone="America/New_York")  # 02:30 does not exist on 2026-03-08
    times = preview(s, "j", ms(2026, 3, 7, 12), 3)
    assert [local(t, s.timezone) for t in times] == [
        "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]


def test_several_matches_inside_one_gap_still_fire_once() -> None:
    s = Schedule(cron="*/30 1-3 * * *", timezone="America/New_York")
    times = preview(s, "j", ms(2026, 3, 8, 5), 5)  # 00:00 local
    assert [local(t, s.timezone) for t in times] == [
        "2026-03-08T01:00:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:30:00-04:00", "2026-03-09T01:00:00-04:00"]


def test_new_york_fall_back_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    s = Schedule(cron="*/30 1 * * *", timezone="America/New_York")  # 01:xx happens twice on 2026-11-01
    times = preview(s, "j", ms(2026, 10, 31, 12), 4)
    assert [local(t, s.timezone) for t in times] == [
        "2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:00:00-05:00", "2026-11-02T01:30:00-05:00"]


def test_starting_inside_the_second_pass_of_a_repeated_hour_does_not_fire_it_again() -> None:
    s = Schedule(cron="*/30 * * * *", timezone="America/New_York")
    second_pass = to_ms(datetime(2026, 11, 1, 1, 10, tzinfo=zone("America/New_York"), fold=1))
    assert [local(t, s.timezone) for t in preview(s, "j", second_pass, 2)] == [
        "2026-11-01T02:00:00-05:00", "2026-11-01T02:30:00-05:00"]


@pytest.mark.parametrize(
    ("tz", "day", "expr", "expected"),
    [
        # London: 01:00 GMT -> 02:00 BST on 2026-03-29; 01:30 does not exist.
        ("Europe/London", (2026, 3, 28, 12), "30 1 * * *", "2026-03-29T02:00:00+01:00"),
        # London: 02:00 BST -> 01:00 GMT on 2026-10-25; 01:30 happens twice, fires on the first.
        ("Europe/London", (2026, 10, 24, 12), "30 1 * * *", "2026-10-25T01:30:00+01:00"),
        # Lord Howe: 02:00 -> 02:30 on 2026-10-04 (a 30-minute shift); 02:15 does not exist.
        ("Australia/Lord_Howe", (2026, 10, 3, 0), "15 2 * * *", "2026-10-04T02:30:00+11:00"),
        # Lord Howe: 02:00 -> 01:30 on 2026-04-05; 01:45 happens twice, fires on the first.
        ("Australia/Lord_Howe", (2026, 4, 4, 0), "45 1 * * *", "2026-04-05T01:45:00+11:00"),
    ],
)
def test_dst_transitions_around_the_world(tz: str, day: tuple[int, ...], expr: str, expected: str) -> None:
    s = Schedule(cron=expr, timezone=tz)
    first, second = preview(s, "j", ms(*day), 2)
    assert local(first, tz) == expected
    assert second - first > 20 * 3600 * 1000  # and only once that day


def test_one_off_at_fires_once_then_never() -> None:
    s = Schedule(at_ms=ms(2026, 5, 1))
    assert preview(s, "j", ms(2026, 4, 1), 3) == [ms(2026, 5, 1)]
    assert next_fire(s, "j", ms(2026, 5, 1)) is None


def test_spread_is_stable_per_job_within_its_window_and_spreads_jobs() -> None:
    window = 3_600_000
    offsets = {spread_offset_ms(f"job-{i}", window) for i in range(200)}
    assert all(0 <= o < window for o in offsets)
    assert len(offsets) > 190  # jobs do not pile up on the same instant
    offset = spread_offset_ms("job-1", window)
    # From the job id alone (replay and every worker must agree), so the value is fixed.
    assert offset == 1_720_618
    assert (spread_offset_ms("job-1", 1), spread_offset_ms("job-1", 0)) == (0, 0)
    s = Schedule(cron="@hourly", spread_ms=window)
    assert preview(s, "job-1", ms(2026, 1, 1), 2) == [ms(2026, 1, 1) + offset, ms(2026, 1, 1, 1) + offset]


def test_iso_run_instants() -> None:
    assert iso(ms(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert iso(ms(2026, 1, 2, 3, 4, 5) + 7) == "2026-01-02T03:04:05.007Z"


# --- stepping without croniter's get_next: the same instants ----------------------------------------------


def _field(lo: int, hi: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi)

    def written(v: int, as_name: bool) -> str:  # a value as its number, or as its name (any case) where it has one
        return names[v - lo].capitalize() if names and as_name else str(v)

    one = st.tuples(value, st.booleans()).map(lambda p: written(*p))
    span = st.tuples(value, value, st.booleans(), st.booleans()).map(
        lambda p: f"{written(min(p[:2]), p[2])}-{written(max(p[:2]), p[3])}")
    step = st.tuples(st.one_of(st.just("*"), span, one), st.integers(1, max(1, hi - lo))).map(
        lambda p: f"{p[0]}/{p[1]}")
    item = st.one_of(one, span, step)
    return st.one_of(st.just("*"), item, st.lists(item, min_size=2, max_size=4).map(",".join))


MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Weekdays 0-6: with the seconds field first, croniter refuses 7 (Sunday), which ksched accepts (see below).
FIELDS6 = st.tuples(_field(0, 59), _field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12, MONTHS),
                    _field(0, 6, DAYS)).map(" ".join)
INSTANTS = st.datetimes(datetime(1971, 1, 1), datetime(2400, 12, 31))


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(FIELDS6, INSTANTS)
def test_stepping_a_plain_expression_finds_what_croniter_finds(fields6: str, cur: datetime) -> None:
    try:
        it = croniter(fields6, cur, second_at_beginning=True)
    except Exception:
        hypothesis.reject()
    matcher = _matcher(fields6)
    assert isinstance(matcher, _Fields), fields6
    for _ in range(6):  # from a random instant, then from each match (the steps within a minute and an hour)
        try:
            expected: datetime | None = it.get_next(datetime)
        except ValueError:  # no date matches (croniter's bad date)
            expected = None
        found = matcher.next_after(cur)
        if expected is None and found is not None:
            # croniter gives up on a day of month that no allowed month has (30 February), even when the day
            # of week, restricted too, matches days there: cron's either-is-enough rule fires on those.
            assert matcher.days is not None and matcher.weekdays is not None, (fields6, found)
            assert (found.weekday() + 1) % 7 in matcher.weekdays and found > cur, (fields6, found)
            break
        assert found == expected
        if expected is None:
            break
        cur = expected


def _canonical(f: _Fields) -> tuple[object, ...]:
    return f.seconds, f.minutes, f.hours, f.days, f.months or frozenset(range(1, 13)), f.weekdays


@hypothesis.settings(max_examples=1500, deadline=None, database=None)
@hypothesis.given(FIELDS6)
def test_a_plain_expression_is_read_as_croniter_reads_it(fields6: str) -> None:
    ours = _plain_fields(fields6)
    try:
        theirs = _fields(*croniter.expand(fields6, second_at_beginning=True))
    except Exception:
        assert ours is None, f"{fields6!r}: croniter refuses it"
        return
    if ours is not None:
        assert theirs is not None and _canonical(ours) == _canonical(theirs), fields6


@pytest.mark.parametrize("fields6", ["0 0 0 L * *", "0 0 0 * * 5#2", "0 30 9 * * 1#1"])
def test_last_day_and_nth_weekday_are_stepped_by_croniter(fields6: str) -> None:
    cur = datetime(2026, 3, 17, 12, 0, 0)
    matcher = _matcher(fields6)
    assert isinstance(matcher, _Croniter)
    assert matcher.next_after(cur) == croniter(fields6, cur, second_at_beginning=True).get_next(datetime)


@pytest.mark.parametrize(("expr", "same_as"), [("0 9 * * 7", "0 9 * * 0"), ("0 9 * * 5-7", "0 9 * * 0,5,6"),
                                               ("0 9 1 * 1-7/2", "0 9 1 * 0,1,3,5"), ("0 9 * * sun,7", "0 9 * * 0"),
                                               ("0 9 * * Fri-7", "0 9 * * 0,5,6"),
                                               ("0 9 1 JAN-mar,dec sat", "0 9 1 1,2,3,12 6")])
def test_seven_is_sunday_as_in_vixie_cron(expr: str, same_as: str) -> None:
    after = ms(2026, 3, 1)
    assert preview(Schedule(cron=expr), "j", after, 10) == preview(Schedule(cron=same_as), "j", after, 10)


def test_an_expression_that_matches_no_date_is_invalid() -> None:
    with pytest.raises(JobSpecError, match="matches no date"):
        parse_cron("0 0 30 2 *")
    assert parse_cron("0 0 29 2 *").fields6 == "0 0 0 29 2 *"  # once in four (or eight) years
