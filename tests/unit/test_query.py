"""The API's query parameters: each bad one is named, good ones are typed."""

from __future__ import annotations

import pytest

from ksched.streams.query import (
    HistoryQuery,
    QueryError,
    RunsQuery,
    attempt_number,
    history_query,
    no_query,
    runs_query,
)


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ({"limit": "abc"}, "limit", "expected a whole number from 0 to 10000, got 'abc'"),
        ({"limit": "-5"}, "limit", "expected a whole number from 0 to 10000, got '-5'"),
        ({"limit": "10001"}, "limit", "expected a whole number from 0 to 10000, got '10001'"),
        ({"since": "notatime"}, "since", "'notatime' is neither epoch milliseconds nor an ISO-8601 instant"),
        ({"until": "2026-01-01T00:00:00"}, "until", "instant '2026-01-01T00:00:00' has no time zone offset"),
        ({"state": "FAILED,BOGUS"}, "state", "unknown run state 'BOGUS'"),
        ({"since": "20", "until": "10"}, "until", "is before since"),
        ({"sort": "x"}, "sort", "unknown parameter (this endpoint takes state, since, until, limit)"),
    ],
)
def test_a_bad_runs_parameter_is_named(query: dict[str, str], param: str, message: str) -> None:
    with pytest.raises(QueryError) as exc:
        runs_query(query)
    assert exc.value.param == param
    assert message in str(exc.value) and str(exc.value).startswith(f"{param}: ")


def test_good_runs_parameters_are_typed() -> None:
    assert runs_query({}) == RunsQuery(None, None, None, 50)
    assert runs_query({"state": "failed, running", "since": "1000", "until": "1970-01-01T00:00:02Z",
                       "limit": "0"}) == RunsQuery(frozenset({"FAILED", "RUNNING"}), 1000, 2000, 0)


def test_history_takes_ticks_a_time_range_and_a_page_size() -> None:
    assert history_query({}) == HistoryQuery(False, None, None, 1000)
    assert history_query({"ticks": "1", "since": "1000", "until": "1970-01-01T00:00:02Z", "limit": "5"}) == \
        HistoryQuery(True, 1000, 2000, 5)
    with pytest.raises(QueryError, match="ticks: expected 0 or 1, got 'yes'"):
        history_query({"ticks": "yes"})
    with pytest.raises(QueryError, match="limit: expected a whole number from 0 to 100000"):
        history_query({"limit": "100001"})
    with pytest.raises(QueryError, match="until: is before since"):
        history_query({"since": "2000", "until": "1000"})
    with pytest.raises(QueryError, match="since: "):
        history_query({"since": "yesterday"})
    with pytest.raises(QueryError, match=r"^x: unknown parameter"):
        no_query({"x": "1"})


@pytest.mark.parametrize("text", ["0", "x", "-1", "1e3", ""])
def test_an_attempt_is_a_number_from_1(text: str) -> None:
    with pytest.raises(QueryError, match=r"^attempt: "):
        attempt_number(text)
    assert attempt_number("3") == 3


def test_a_bearer_token_is_needed_only_when_tokens_are_configured() -> None:
    from ksched.streams.web import authorized

    assert authorized(None, set())
    assert authorized("Bearer read", {"read", "admin"}) and authorized("bearer admin", {"read", "admin"})
    assert not authorized(None, {"read"})
    assert not authorized("Bearer nope", {"read"})
    assert not authorized("Basic read", {"read"})
    assert not authorized("read", {"read"})


@pytest.mark.parametrize(("host", "token", "open_", "refused"), [
    ("127.0.0.1", "", False, False),     # loopback: only this host reaches it
    ("::1", "", False, False),
    ("localhost", "", False, False),
    ("0.0.0.0", "", False, True),        # every interface, no token: refused
    ("10.1.2.3", "", False, True),
    ("streams-1", "", False, True),      # a name that is not localhost may be any address
    ("0.0.0.0", "t", False, False),      # a token guards it
    ("0.0.0.0", "", True, False),        # opened on purpose
])
def test_the_api_is_served_beyond_this_host_only_with_a_token_or_on_purpose(
        host: str, token: str, open_: bool, refused: bool) -> None:
    from ksched.config import Settings
    from ksched.streams.web import exposure_error

    why = exposure_error(host, Settings(api_token=token), open_)
    assert (why is not None) == refused
    assert why is None or ("KSCHED_API_TOKEN" in why and "--web-open" in why)
