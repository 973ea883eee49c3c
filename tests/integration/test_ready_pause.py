"""An executor's ready consumer pauses a partition whose local backlog is full; librdkafka keeps that pause across a
rebalance (librdkafka#1849), so a partition paused when it was revoked came back paused and was never fetched again
(a 55 s stall in a fault test, until the stall check replaced the consumer). After each assignment the claimer
resumes what it did not pause itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ksched import kafka
from ksched.executor.claims import Claimer
from ksched.executor.ledger import Ledger, Stats
from ksched.topics import ensure_topics, ready_topic
from tests.support import settings_for

pytestmark = [pytest.mark.broker]


def test_partitions_paused_before_a_rebalance_are_fetched_again_after_it(bootstrap: str, tmp_path: Path) -> None:
    s = settings_for(bootstrap, tmp_path, ready_partitions=2, session_timeout_s=6.0)
    ensure_topics(s)
    topics = [ready_topic(s, p, "") for p in ("high", "normal", "low")]
    p = kafka.producer(s)

    def produce(n: int) -> None:
        for partition in range(2):
            for i in range(n):
                p.produce(topics[1], b"not a ready record", f"k{i}".encode(), partition)
        p.flush(10)

    produce(5)
    # No free slot: it only fetches and buffers, and pauses each partition once 2 records wait in it.
    claimer = Claimer(s, "ex-a", "", Ledger(), Stats(), lambda: (0, 0), backlog_limit=2)
    claimer.subscribe()
    other = None
    try:
        deadline = time.monotonic() + 60
        while len(claimer._paused) < 2 and time.monotonic() < deadline:
            claimer.step()
        assert claimer._paused == {(topics[1], 0), (topics[1], 1)}

        # Another executor joins (every partition is revoked and handed out again), then leaves.
        other = kafka.consumer(s, group=f"{s.prefix}-executors", **{"partition.assignment.strategy": "range"})
        other.subscribe(topics)
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(0.1)
            claimer.step()
        other.close()
        other = None
        deadline = time.monotonic() + 60
        while len(claimer._consumer.assignment()) < 6 and time.monotonic() < deadline:
            claimer.step()
        assert len(claimer._consumer.assignment()) == 6

        # Its buffers were dropped with the revocation: it must fetch both partitions of `normal` again.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(claimer._buffers.get((topics[1], q)) for q in range(2)):
            claimer.step()
        assert all(claimer._buffers.get((topics[1], q)) for q in range(2)), claimer._buffers.keys()
    finally:
        if other is not None:
            other.close()
        claimer.close()
