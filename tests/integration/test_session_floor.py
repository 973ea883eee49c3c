"""The streams worker reads the brokers' floor for session timeouts, which decides how fast a dead worker's
partitions move (docs/ARCHITECTURE.md "Faults")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ksched.kafka import session_timeout_floor_s
from tests.support import settings_for

pytestmark = [pytest.mark.broker]


def test_the_brokers_floor_for_session_timeouts_is_read(bootstrap: str, tmp_path: Path) -> None:
    floor = session_timeout_floor_s(settings_for(bootstrap, tmp_path))
    assert floor is not None and floor > 0
    if not os.environ.get("KSCHED_BOOTSTRAP_SERVERS") and os.environ.get("KSCHED_TEST_BROKER") != "testcontainers":
        assert floor == 1.0  # what ksched's own broker sets (devbroker), below the streams workers' 3 s


def test_an_unreachable_cluster_gives_no_floor(tmp_path: Path) -> None:
    assert session_timeout_floor_s(settings_for("127.0.0.1:1", tmp_path), timeout_s=1.0) is None
