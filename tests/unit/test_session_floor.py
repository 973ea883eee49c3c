"""A streams worker's session timeout is raised to what the brokers accept, never left where the join fails."""

from __future__ import annotations

from ksched.config import Settings
from ksched.streams.worker import KAFKA_SESSION_FLOOR_S, session_within_floor


def test_a_session_timeout_the_brokers_accept_stands() -> None:
    s = Settings(session_timeout_s=3.0)
    assert session_within_floor(s, 1.0).session_timeout_s == 3.0
    assert session_within_floor(s, 3.0).session_timeout_s == 3.0


def test_a_session_timeout_below_the_brokers_floor_is_raised_to_it() -> None:
    assert session_within_floor(Settings(session_timeout_s=3.0), 4.5).session_timeout_s == 4.5


def test_an_unreadable_floor_is_taken_to_be_kafkas_default() -> None:
    assert session_within_floor(Settings(session_timeout_s=3.0), None).session_timeout_s == KAFKA_SESSION_FLOOR_S
    assert session_within_floor(Settings(session_timeout_s=10.0), None).session_timeout_s == 10.0
