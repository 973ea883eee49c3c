"""The executor's parts: its pure decisions (tables of cases), its ledger, and the parts that touch the OS, the
artifact cache and the sandboxed process (real subprocesses)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ksched.artifacts import LocalStore
from ksched.errors import ArtifactError, ConfigError
from ksched.executor import sandbox
from ksched.executor.cache import ArtifactCache
from ksched.executor.claims import BoundedCalls, Wedged, flow_control, positions, settling, stalled, take
from ksched.executor.ledger import (
    GrantAnswer,
    Ledger,
    Pending,
    answer_grant,
    free_capacity,
    is_stale,
    may_offer,
    needs_renewal,
    remember,
)
from ksched.executor.reporting import retryable
from ksched.executor.runtime import Attempt, Ended
from ksched.executor.sandbox import Process, attempt_env, cap_log, spawn
from ksched.executor.supervision import timed_out
from ksched.schemas.events import ClaimGranted, FailureReason, Limits, TaskReady
from tests.samples import sample


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def put(store: LocalStore, tmp_path: Path, name: str, data: bytes):  # type: ignore[no-untyped-def]
    f = tmp_path / name
    f.write_bytes(data)
    return store.put_file(f)


def test_the_cache_verifies_and_reuses_artifacts(store: LocalStore, tmp_path: Path) -> None:
    ref = put(store, tmp_path, "ok.sh", b"#!/bin/sh\nexit 0\n")
    cache = ArtifactCache(store, tmp_path / "cache")
    path = cache.get(ref)
    assert path.read_bytes() == b"#!/bin/sh\nexit 0\n" and os.access(path, os.X_OK)
    store._path(ref.digest).unlink()  # gone from the store: the cache still has it
    assert cache.get(ref) == path


@pytest.mark.parametrize(
    ("data", "corrupt", "limit", "reason"),
    [
        (b"#!/bin/sh\n", True, 1 << 20, FailureReason.DIGEST_MISMATCH),
        (b"just some text\n", False, 1 << 20, FailureReason.NOT_EXECUTABLE),
        (b"#!/bin/sh\n" + b"x" * 5000, False, 1000, FailureReason.ARTIFACT_TOO_LARGE),
    ],
)
def test_bad_artifacts_fail_with_a_clear_reason(store: LocalStore, tmp_path: Path, data: bytes, corrupt: bool,
                                                 limit: int, reason: str) -> None:
    ref = put(store, tmp_path, "bad", data)
    if corrupt:
        store._path(ref.digest).write_bytes(b"#!/bin/sh\necho tampered\n")
    with pytest.raises(ArtifactError) as exc:
        ArtifactCache(store, tmp_path / "cache", max_bytes=limit).get(ref)
    assert exc.value.reason == reason
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written stays behind


def test_a_missing_artifact_is_reported(store: LocalStore, tmp_path: Path) -> None:
    from ksched.schemas.events import ArtifactRef

    with pytest.raises(ArtifactError) as exc:
        ArtifactCache(store, tmp_path / "cache").get(ArtifactRef("sha256:" + "1" * 64, "gone", 1))
    assert exc.value.reason == FailureReason.ARTIFACT_MISSING


def test_the_process_gets_a_clean_environment_with_its_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "executor-secret")
    ready = sample(TaskReady)
    grant = sample(ClaimGranted)
    env = attempt_env(ready, grant, tmp_path)
    script = tmp_path / "env.sh"
    script.write_text("#!/bin/sh\nenv\n")
    script.chmod(0o755)
    proc = spawn(script, [], env, tmp_path / "work")
    assert proc.popen.wait(10) == 0
    out = dict(line.split("=", 1) for line in proc.log_path.read_text().splitlines() if "=" in line)
    assert "AWS_SECRET_ACCESS_KEY" not in out
    assert out["KSCHED_TASK_ID"] == ready.task_id
    assert out["KSCHED_ATTEMPT"] == str(grant.attempt)
    assert out["KSCHED_FENCING_TOKEN"] == str(grant.fencing_token)
    assert out["KSCHED_SCHEDULED_FOR"].endswith("Z")
    assert out["HOME"] == str(tmp_path)


def test_kill_tree_stops_the_whole_process_group(tmp_path: Path) -> None:
    script = tmp_path / "tree.sh"
    pidfile = tmp_path / "child.pid"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work")
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    proc.kill_tree(grace_s=1.0)
    assert proc.popen.wait(5) is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
            if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived")


def test_big_logs_are_capped_keeping_head_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_bytes(b"H" * 1000 + b"x" * 100_000 + b"T" * 1000)
    cap_log(log, 4000)
    data = log.read_bytes()
    assert data.startswith(b"H" * 1000) and data.endswith(b"T" * 1000) and b"bytes of output dropped" in data
    assert len(data) < 4200


@pytest.mark.parametrize(("limits", "probe", "expected"), [
    (Limits(open_files=64), "ulimit -n", "64"),
    (Limits(cpu_seconds=7, open_files=0), "ulimit -t", "7"),
    (Limits(memory_mb=512, open_files=0), "ulimit -v", str(512 * 1024)),
])
def test_resource_limits_apply_to_the_process(tmp_path: Path, limits: Limits, probe: str, expected: str) -> None:
    script = tmp_path / "probe.sh"
    script.write_text(f"#!/bin/sh\n{probe}\n")
    script.chmod(0o755)
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", limits)
    assert proc.popen.wait(10) == 0
    assert proc.log_path.read_text().strip() == expected


def test_a_cpu_hog_is_stopped_by_its_cpu_limit(tmp_path: Path) -> None:
    script = tmp_path / "hog.sh"
    script.write_text("#!/bin/sh\nwhile :; do :; done\n")
    script.chmod(0o755)
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", Limits(cpu_seconds=1, open_files=0))
    assert proc.popen.wait(30) != 0  # SIGXCPU, then SIGKILL at the hard limit


def test_a_held_process_runs_its_binary_only_when_released_with_its_limits_and_args(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = tmp_path / "probe.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2" > {ran}\nulimit -n\nls /proc/$$/fd\nreadlink /proc/$$/fd/0\n')
    script.chmod(0o755)
    proc = spawn(script, ["a b", "$HOME"], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", Limits(open_files=64),
                 hold=True)
    assert proc.popen.poll() is None and not ran.exists()  # created, blocked before the binary
    proc.release()
    assert proc.popen.wait(10) == 0
    assert ran.read_text() == "a b $HOME\n"  # arguments pass through untouched
    lines = proc.log_path.read_text().split()
    assert lines[0] == "64"  # its limits
    assert lines[-1] == "/dev/null" and "3" not in lines[1:-1]  # stdin is /dev/null again; no fd of the gate


@pytest.mark.parametrize(("limits", "probe", "expected"), [
    (Limits(open_files=64), "ulimit -n; ulimit -Hn", "64 64"),
    (Limits(cpu_seconds=7, open_files=0), "ulimit -t; ulimit -Ht", "7 7"),
    (Limits(memory_mb=512, open_files=0), "ulimit -v; ulimit -Hv", f"{512 * 1024} {512 * 1024}"),
])
@pytest.mark.parametrize("hold", [True, False])
def test_a_process_outside_a_namespace_gets_its_limits_without_the_prlimit_program(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: Limits, probe: str, expected: str,
        hold: bool) -> None:
    monkeypatch.setattr(sandbox, "_PRLIMIT", str(tmp_path / "no-prlimit"))  # exec'ing it would fail the start
    script = tmp_path / "probe.sh"
    script.write_text(f"#!/bin/sh\n{probe}\nls /proc/$$/fd\nreadlink /proc/$$/fd/0\n")
    script.chmod(0o755)
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", limits, hold=hold)
    assert (proc.gate is not None) == hold  # started at once: already let go
    proc.release()
    assert proc.popen.wait(10) == 0
    lines = proc.log_path.read_text().split()
    assert " ".join(lines[:2]) == expected
    assert lines[-1] == "/dev/null" and "3" not in lines[2:-1]  # stdin is /dev/null again; no fd of the gate


def test_a_process_started_at_once_outside_a_namespace_waits_for_nothing_but_its_limits(tmp_path: Path) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    fds = len(os.listdir("/proc/self/fd"))
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", Limits(open_files=64))
    assert proc.gate is None and proc.popen.wait(10) == 3
    assert len(os.listdir("/proc/self/fd")) == fds  # the gate's both ends are closed
    with pytest.raises(OSError, match="cannot set the limits"):  # past fs.nr_open: refused, nothing runs
        spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work2", Limits(open_files=1 << 31))
    assert len(os.listdir("/proc/self/fd")) == fds


def test_an_executor_without_the_prlimit_program_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.require_prlimit()  # installed here
    monkeypatch.setattr(sandbox, "_PRLIMIT", None)  # before: attempts started at once ran with no limits, silently
    with pytest.raises(ConfigError, match="prlimit"):
        sandbox.require_prlimit()


def test_a_held_process_whose_limits_cannot_be_set_is_not_started(tmp_path: Path) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="cannot set the limits"):  # past fs.nr_open: refused even to root
        spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", Limits(open_files=1 << 31), hold=True)
    assert len(os.listdir("/proc/self/fd")) == fds  # its gate closed; it was killed and reaped


def test_releasing_a_held_process_that_was_killed_raises_and_closes_its_gate(tmp_path: Path) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    proc = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "work", hold=True)
    gate = proc.gate
    assert gate is not None
    os.killpg(proc.popen.pid, 9)
    proc.popen.wait(10)
    with pytest.raises(OSError) as caught:  # EPIPE from the libc write, not a SIGPIPE
        proc.release()
    assert caught.value.errno == errno.EPIPE and proc.gate is None
    with pytest.raises(OSError):  # closed, not leaked
        os.fstat(gate)


def test_a_held_process_that_is_discarded_or_loses_its_executor_runs_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = tmp_path / "mark.sh"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    discarded = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "w1", hold=True)
    discarded.discard()
    orphaned = spawn(script, [], {"PATH": "/usr/bin:/bin"}, tmp_path / "w2", hold=True)
    assert orphaned.gate is not None
    os.close(orphaned.gate)  # what the executor's death does to the gate
    assert orphaned.popen.wait(10) == 111
    assert discarded.popen.returncode is not None and not ran.exists()


# --- the ledger and its decisions -------------------------------------------------------------------


@pytest.mark.parametrize(("slots", "prefetch", "staging", "due_now", "staged", "free"), [
    (4, -1, 1024, 0, 0, (8, 1024)),  # prefetch -1: as many claims ahead as slots
    (4, 0, 1024, 3, 0, (1, 1024)),
    (4, 2, 10, 6, 10, (0, 0)),
    (4, 0, 10, 5, 2, (-1, 8)),  # staged attempts that came due count too
])
def test_free_capacity_counts_slots_prefetch_and_staging_places(slots: int, prefetch: int, staging: int,
                                                                 due_now: int, staged: int,
                                                                 free: tuple[int, int]) -> None:
    assert free_capacity(slots, prefetch, staging, due_now, staged) == free


@pytest.mark.parametrize(("pending", "abandoned", "taken", "draining", "answer"), [
    (True, False, False, False, GrantAnswer.START),
    (True, False, False, True, GrantAnswer.STOPPING),
    (False, True, False, False, GrantAnswer.ABANDONED),
    (False, True, False, True, GrantAnswer.ABANDONED),  # handed back as abandoned, draining or not
    (True, False, True, False, GrantAnswer.REPEAT),  # the attempt was taken on under an earlier claim
    (False, True, True, False, GrantAnswer.REPEAT),
    (False, False, False, False, GrantAnswer.NOT_OURS),
    (False, False, True, True, GrantAnswer.REPEAT),
])
def test_what_a_grant_means(pending: bool, abandoned: bool, taken: bool, draining: bool,
                            answer: GrantAnswer) -> None:
    assert answer_grant(pending=pending, abandoned=abandoned, taken=taken, draining=draining) is answer


@pytest.mark.parametrize(("since", "committed", "renewed", "now", "stale", "renew"), [
    (100.0, True, 100.0, 110.0, False, False),  # answered within half a lease: never renewed
    (100.0, True, 100.0, 115.0, False, True),  # half a lease (15 s) since it was sent
    (100.0, True, 115.0, 129.0, False, False),  # renewed at 115: next at 130
    (100.0, False, 0.0, 120.0, False, False),  # its transaction has not committed: nothing to renew
    (100.0, True, 130.0, 130.5, True, False),  # waited longer than the claim timeout (30 s)
])
def test_when_a_waiting_claim_is_renewed_or_given_up(since: float, committed: bool, renewed: float, now: float,
                                                     stale: bool, renew: bool) -> None:
    p = Pending(sample(TaskReady), "c1", since, staged=False, committed=committed, renewed=renewed)
    assert (is_stale(p, now, 30.0), needs_renewal(p, now, 15.0)) == (stale, renew)


def test_a_bounded_memory_forgets_the_oldest_first() -> None:
    memory: dict[str, None] = {}
    for key in "abcd":
        remember(memory, key, None, 3)
    assert list(memory) == ["b", "c", "d"]


def claim(ledger: Ledger, claim_id: str, attempt: int = 1, since: float = 0.0) -> Pending:
    ready = replace(sample(TaskReady), attempt=attempt)
    return ledger.open([Pending(ready, claim_id, since, staged=False)])[0]


def grant_for(p: Pending) -> ClaimGranted:
    return replace(sample(ClaimGranted), task_id=p.ready.task_id, attempt=p.ready.attempt, claim_id=p.claim_id)


def test_a_granted_attempt_is_started_once_and_not_claimed_again() -> None:
    ledger = Ledger()
    p = claim(ledger, "c1")
    assert ledger.load() == (1, 0)
    answer = ledger.answer(grant_for(p))
    assert answer.what is GrantAnswer.START and answer.attempt is not None
    assert ledger.attempt(answer.attempt.key) is answer.attempt and ledger.load() == (1, 0)
    assert ledger.answer(grant_for(p)).what is GrantAnswer.REPEAT
    assert ledger.open([Pending(p.ready, "c2", 1.0, staged=False)]) == []  # a re-sent ready record
    ledger.ended(answer.attempt.key)
    assert ledger.load() == (0, 0)


def test_a_claim_given_up_on_is_handed_back_when_its_grant_comes_and_a_rejection_settles_it() -> None:
    ledger = Ledger()
    late, rejected, fresh = claim(ledger, "c1", 1), claim(ledger, "c2", 2), claim(ledger, "c3", 3, since=25.0)
    ledger.committed([late, rejected, fresh], now=0.0)
    sweep = ledger.sweep(now=31.0, claim_timeout_s=30.0, renew_every_s=15.0)
    assert sweep.abandoned == 2 and sweep.renew == [fresh] and fresh.renewed == 31.0
    assert ledger.waiting()  # c3 still waits
    answer = ledger.answer(grant_for(late))
    assert answer.what is GrantAnswer.ABANDONED and answer.claimed_at == 0.0
    assert ledger.answer(grant_for(late)).what is GrantAnswer.REPEAT  # handed back once
    assert ledger.reject("c2") is False  # no longer waiting, and forgotten as abandoned
    assert ledger.answer(grant_for(rejected)).what is GrantAnswer.NOT_OURS
    assert ledger.reject("c3") is True and not ledger.waiting()


def test_a_draining_ledger_hands_grants_back_and_lists_what_is_running() -> None:
    ledger = Ledger()
    running, late = claim(ledger, "c1", 1), claim(ledger, "c2", 2)
    started = ledger.answer(grant_for(running)).attempt
    assert ledger.drain() == [started]
    answer = ledger.answer(grant_for(late))
    assert answer.what is GrantAnswer.STOPPING and answer.attempt is not None
    assert ledger.attempt(answer.attempt.key) is None  # handed back, not running


def test_an_offered_slot_is_taken_up_by_the_grant_that_follows_its_ready_record() -> None:
    ledger = Ledger()
    running = ledger.answer(grant_for(claim(ledger, "c1"))).attempt
    assert running is not None
    assert ledger.offer("o1", now=5.0, slots=1)  # counting the attempt that is ending, one slot: free after it
    claim(ledger, "c2", 2)
    assert not ledger.offer("o2", now=5.0, slots=1)  # a claim waits for the slot it frees: no offer
    child = replace(sample(TaskReady), task_id="j@1/child", attempt=1)
    direct = replace(sample(ClaimGranted), task_id=child.task_id, attempt=1, claim_id="o1")
    assert ledger.answer(direct).what is GrantAnswer.NOT_OURS  # no ready record came ahead of it
    ledger.handed(child)
    answer = ledger.answer(direct)
    assert answer.what is GrantAnswer.START and answer.attempt is not None and answer.claimed_at == 5.0
    assert answer.attempt.ready is child and answer.attempt.grant is direct
    assert ledger.attempt(answer.attempt.key) is answer.attempt
    assert ledger.answer(direct).what is GrantAnswer.REPEAT  # a worker re-deciding sends it again
    ledger.handed(replace(child, task_id="j@1/other"))  # a grant naming an offer never made is not ours
    assert ledger.answer(replace(direct, task_id="j@1/other", claim_id="o2")).what is GrantAnswer.NOT_OURS
    ledger.drain()
    assert not ledger.offer("o3", now=6.0, slots=8)  # a draining executor offers nothing
    assert may_offer(4, 4) and not may_offer(4, 5)


def test_a_completion_offers_its_slot_only_when_the_supervisor_may() -> None:
    from ksched.executor.ledger import Stats
    from ksched.executor.supervision import Supervisor

    class Reports(_Reports):
        id = "ex1"
        offers: list[tuple[str, str]] = []

        def ended(self, ended: Any, offer_id: str = "", offer_pool: str = "") -> None:
            self.offers.append((offer_id, offer_pool))

    for slots, reason, offered in ((2, "", True), (0, "", False), (2, FailureReason.TIMEOUT, False)):
        reports, stats, ledger = Reports(), Stats(), Ledger()
        reports.offers = []
        attempt = ledger.answer(grant_for(claim(ledger, "c1"))).attempt
        assert attempt is not None
        sup = Supervisor(ledger, stats, reports, heartbeat_s=2.0, lease_s=10.0, claim_timeout_s=30.0,  # type: ignore[arg-type]
                         slots=slots, pool="big")
        sup.on_ended(Ended(attempt, exit_code=0 if not reason else None, started_at_ms=1, finished_at_ms=2,
                           reason=reason))
        (offer, pool), = reports.offers
        assert bool(offer) is offered and stats.offered == int(offered)
        if offered:
            assert offer.startswith(f"{attempt.key}/offer@ex1/") and pool == "big"


def test_a_failed_claim_transaction_forgets_its_claims() -> None:
    ledger = Ledger()
    p = claim(ledger, "c1")
    ledger.forget([p])
    assert not ledger.waiting() and ledger.answer(grant_for(p)).what is GrantAnswer.NOT_OURS
    assert ledger.open([p]) == [p]  # claimed again when its record comes again


@pytest.mark.parametrize(("reason", "started", "again"), [
    (FailureReason.EXECUTOR_STOPPED, None, True),  # handed back before it started
    (FailureReason.EXECUTOR_STOPPED, 1_000, True),  # handed back while it ran
    (FailureReason.TIMEOUT, 1_000, True),
    (FailureReason.TIMEOUT, None, False),  # ran out of time before it could start
    (FailureReason.CANCELLED, 1_000, False),
    (FailureReason.DIGEST_MISMATCH, None, False),
    (FailureReason.SPAWN_ERROR, None, False),
])
def test_which_endings_are_worth_another_attempt(reason: str, started: int | None, again: bool) -> None:
    attempt = Attempt(sample(TaskReady), sample(ClaimGranted))
    assert retryable(Ended(attempt, reason, "", started_at_ms=started)) is again


# --- choosing what to claim ----------------------------------------------------------------------

NOW_MS = 1_700_000_000_000


def ready_at(name: str, due_ms: int) -> TaskReady:
    return replace(sample(TaskReady), task_id=name, scheduled_for_ms=due_ms)


def buffers(**partitions: list[str | None]) -> dict[tuple[str, int], deque[tuple[str, TaskReady | None]]]:
    """`high0=["a", "+b"]`: partition 0 of topic high holds a (due now) then b (due in a minute); None is an
    undecodable record."""
    out: dict[tuple[str, int], deque[tuple[str, TaskReady | None]]] = {}
    for key, names in partitions.items():
        q: deque[tuple[str, TaskReady | None]] = deque()
        for n in names:
            if n is None:
                q.append(("?", None))
            else:
                q.append((n.lstrip("+"), ready_at(n.lstrip("+"), NOW_MS + (60_000 if n.startswith("+") else 0))))
        out[(key[:-1], int(key[-1]))] = q
    return out


@pytest.mark.parametrize(("partitions", "free_now", "free_staged", "taken", "left"), [
    # High priority first, whatever partition answered first.
    ({"low0": ["l1"], "high0": ["h1"]}, 1, 0, ["h1"], {"low0": 1, "high0": 0}),
    # Round robin over a topic's partitions, each in order.
    ({"high0": ["a1", "a2"], "high1": ["b1", "b2"]}, 3, 0, ["a1", "b1", "a2"], {"high0": 0, "high1": 1}),
    # A partition whose next attempt has no place waits, even if a later record of it would fit.
    ({"high0": ["a1", "+a2"]}, 0, 5, [], {"high0": 2}),
    ({"high0": ["+a1", "a2", "+a3"]}, 0, 5, ["a1"], {"high0": 2}),
    # Staged attempts use staging places, not slots.
    ({"high0": ["+a1", "+a2"], "low0": ["l1"]}, 1, 2, ["a1", "a2", "l1"], {"high0": 0, "low0": 0}),
    # Undecodable records are taken along (their offsets are committed), needing no place.
    ({"high0": [None, "a1", None]}, 1, 0, ["?", "a1", "?"], {"high0": 0}),
    ({"high0": [None, "a1"]}, 0, 0, ["?"], {"high0": 1}),
])
def test_which_ready_records_are_taken(partitions: dict[str, list[str | None]], free_now: int, free_staged: int,
                                       taken: list[str], left: dict[str, int]) -> None:
    bufs = buffers(**partitions)
    got = take(bufs, ["high", "normal", "low"], free_now, free_staged, soon_ms=NOW_MS + 50)
    assert [m for m, _, _ in got] == taken
    assert all(staged == (r is not None and r.scheduled_for_ms > NOW_MS + 50) for _, r, staged in got)
    assert {f"{t}{p}": len(q) for (t, p), q in bufs.items()} == left


@pytest.mark.parametrize(("backlog", "paused", "pause", "resume"), [
    ({"a": 10, "b": 9}, set(), ["a"], []),  # paused at the limit
    ({"a": 10}, {"a"}, [], []),  # already paused
    ({"a": 6, "b": 5}, {"a", "b"}, [], ["b"]),  # resumed once down to half of it
    ({"a": 0}, set(), [], []),
])
def test_a_partition_is_paused_at_its_backlog_limit_and_resumed_at_half(backlog: dict[str, int], paused: set[str],
                                                                      pause: list[str], resume: list[str]) -> None:
    assert flow_control(backlog, paused, 10) == (pause, resume)


def test_a_claimed_batch_commits_past_its_last_record_and_rewinds_to_its_first() -> None:
    batch = [(("high", 0), 7), (("low", 1), 3), (("high", 0), 8), (("high", 0), 9)]
    assert positions(batch) == ({("high", 0): 10, ("low", 1): 4}, {("high", 0): 7, ("low", 1): 3})


@pytest.mark.parametrize(("timeout_ms", "started_at_ms", "now_ms", "late"), [
    (1000, 5000, 6000, False),  # exactly its timeout: not yet
    (1000, 5000, 6001, True),
    (0, 5000, 10**9, False),  # no timeout
    (1000, None, 10**9, False),  # not started (staged, or waiting for a slot): its time has not begun
])
def test_a_started_attempt_times_out_after_its_timeout(tmp_path: Path, timeout_ms: int, started_at_ms: int | None,
                                                       now_ms: int, late: bool) -> None:
    attempt = Attempt(replace(sample(TaskReady), timeout_ms=timeout_ms), sample(ClaimGranted))
    if started_at_ms is not None:
        attempt.process = Process(None, tmp_path / "log", started_at_ms)  # type: ignore[arg-type]
    assert timed_out(attempt, now_ms) is late


# --- BoundedCalls: a transactional call that never returns does not stop the executor ------------------------


def test_a_bounded_call_returns_its_value_or_raises_its_error() -> None:
    calls = BoundedCalls("t")
    assert calls.call("add", lambda: 1 + 1, 5.0) == 2

    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        calls.call("fail", fail, 5.0)
    assert calls.call("again", lambda: "same thread serves the next call", 5.0) == "same thread serves the next call"


def test_a_call_that_never_returns_is_given_up_and_the_next_runs_on_a_new_thread() -> None:
    calls = BoundedCalls("t")
    stuck = threading.Event()
    threads: list[str] = []

    def hang() -> None:
        threads.append(str(threading.current_thread().ident))
        stuck.wait()  # as librdkafka's send_offsets_to_transaction waiting for a coordinator that never answers

    with pytest.raises(Wedged, match="send_offsets did not return within 0s"):
        calls.call("send_offsets", hang, 0.2)

    def where() -> str:
        return str(threading.current_thread().ident)

    assert calls.call("next", where, 5.0) != threads[0]
    stuck.set()


# --- stalled: when the ready topics' consumer is replaced --------------------------------------------------


@pytest.mark.parametrize(("fetched", "assigned", "revoked", "backlog_since", "stall"), [
    (0, 0, 0, None, False),           # idle, nothing waiting: fine however long
    (100, 50, 40, 99, False),         # fetched just now
    (60, 50, 40, 90, True),           # 40 s without a fetch while its partitions hold records, 10 s unfetched
    (60, 50, 40, 100, False),         # 40 s idle, and records came just now: the fetch in flight takes them
    (60, 50, 40, 96, False),          # ... seen by the last check only (less than STALL_CHECK_S ago)
    (100, 50, 60, None, True),        # revoked 40 s ago, never assigned again: a rebalance that never ended
    (100, 50, 80, None, False),       # revoked 20 s ago: a rebalance may take that long
    (100, 90, 60, None, False),       # revoked, then assigned (perhaps nothing: more executors than partitions)
])
def test_the_ready_consumer_counts_as_stalled_only_when_records_wait_or_a_rebalance_never_ends(
        fetched: float, assigned: float, revoked: float, backlog_since: float | None, stall: bool) -> None:
    why = stalled(100.0, fetched, assigned, revoked, backlog_since)
    assert (why is not None) == stall, why


@pytest.mark.parametrize(("unanswered", "now", "hold"), [
    (set(), 0.0, False),                             # every new partition answered: choose
    ({("ready.high", 0)}, 0.0, True),                # the high-priority partition has not answered yet: wait
    ({("ready.high", 0)}, 3.0, False),               # ... but not past the deadline
    ({("ready.low", 1), ("ready.high", 0)}, 2.9, True),
])
def test_first_claims_after_an_assignment_wait_for_every_new_partition_to_answer_up_to_a_deadline(
        unanswered: set[tuple[str, int]], now: float, hold: bool) -> None:
    assert settling(unanswered, now, deadline=3.0) is hold


def test_an_empty_log_is_not_uploaded_and_reads_back_empty(tmp_path: Path) -> None:
    from ksched.artifacts import EMPTY_LOG, LocalStore, read_log
    from ksched.config import Settings
    from ksched.executor.reporting import Reporter

    store = LocalStore(tmp_path / "store")
    reporter = Reporter(Settings(bootstrap_servers="127.0.0.1:1"), "ex1", store, 1 << 20)
    empty, full = tmp_path / "empty.log", tmp_path / "full.log"
    empty.write_bytes(b"")
    full.write_bytes(b"out\n")
    assert reporter._upload_log("j@t/main#1", empty) == EMPTY_LOG
    assert not (tmp_path / "store" / "logs").exists()  # nothing stored for it
    ref = reporter._upload_log("j@t/main#2", full)
    assert read_log(store, ref) == b"out\n" and read_log(store, EMPTY_LOG) == b""


class _Reports:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def started(self, attempt: Any, proc: Any) -> None:
        self.sent.append(("started", attempt.key))

    def ended(self, ended: Any, offer_id: str = "", offer_pool: str = "") -> None:
        self.sent.append(("ended", ended.attempt.key))


def test_a_quick_attempts_start_is_reported_with_its_end_and_a_long_ones_on_its_own() -> None:
    from ksched.executor.ledger import Ledger, Stats
    from ksched.executor.runtime import Attempt, Ended
    from ksched.executor.supervision import Supervisor
    from ksched.schemas.events import ClaimGranted, TaskReady
    from tests.samples import sample

    reports, stats = _Reports(), Stats()
    sup = Supervisor(Ledger(), stats, reports, heartbeat_s=2.0, lease_s=10.0, claim_timeout_s=30.0)  # type: ignore[arg-type]
    quick = Attempt(sample(TaskReady), replace(sample(ClaimGranted), task_id="j@1/quick"))
    slow = Attempt(sample(TaskReady), replace(sample(ClaimGranted), task_id="j@1/slow"))
    sup.on_started(quick, None)  # type: ignore[arg-type]
    sup.on_started(slow, None)  # type: ignore[arg-type]
    sup.on_ended(Ended(quick, exit_code=0, started_at_ms=1, finished_at_ms=2))
    assert reports.sent == [("ended", quick.key)] and stats.folded == 1
    sup.report_starts(time.monotonic())  # not yet fold_s after the start
    assert reports.sent == [("ended", quick.key)]
    sup.report_starts(time.monotonic() + sup.fold_s)
    sup.on_ended(Ended(slow, exit_code=0, started_at_ms=1, finished_at_ms=2))
    assert reports.sent == [("ended", quick.key), ("started", slow.key), ("ended", slow.key)]
    assert stats.folded == 1 and stats.started == 2


class _Produced:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, int]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"", partition: int = -1) -> None:
        self.records.append((topic, key, value, partition))

    def poll(self, _timeout: float) -> int:
        return 0


def test_heartbeats_are_one_record_per_inbox_partition_naming_its_attempts(tmp_path: Path) -> None:
    from ksched.artifacts import LocalStore
    from ksched.config import Settings
    from ksched.executor import reporting
    from ksched.executor.reporting import Reporter
    from ksched.executor.runtime import Attempt
    from ksched.partitioning import partition_for
    from ksched.schemas.codec import default_codec
    from ksched.schemas.events import ClaimGranted, ExecutorHeartbeat, TaskReady
    from tests.samples import sample

    settings = Settings(bootstrap_servers="127.0.0.1:1", prefix="hb", partitions=4)
    reporter = Reporter(settings, "ex1", LocalStore(tmp_path / "store"), 1 << 20)
    produced = _Produced()
    reporter._producer = produced  # type: ignore[assignment]
    attempts = []
    for i in range(40):  # two attempts of each of 20 jobs
        job = f"job{i // 2}"
        ready = replace(sample(TaskReady), job_id=job, run_id=f"{job}@1", task_id=f"{job}@1/t{i % 2}")
        attempts.append(Attempt(ready, replace(sample(ClaimGranted), job_id=job, fencing_token=i)))
    sent = reporter.heartbeats(attempts, 1234)
    partitions = {partition_for(f"job{j}", 4) for j in range(20)}
    assert sent == len(produced.records) == len(partitions)
    codec, named = default_codec(), []
    for topic, key, value, partition in produced.records:
        beat = codec.decode(value)
        assert isinstance(beat, ExecutorHeartbeat) and topic == "hb.inbox" and key == b"ex1"
        assert beat.partition == partition and beat.at_ms == 1234
        assert all(partition_for(a.job_id, 4) == partition for a in beat.attempts)
        named += [(a.task_id, a.fencing_token) for a in beat.attempts]
    assert sorted(named) == sorted((a.ready.task_id, a.grant.fencing_token) for a in attempts)
    # Many attempts of one partition are split over records that stay small.
    produced.records.clear()
    reporting.HEARTBEAT_BATCH, saved = 3, reporting.HEARTBEAT_BATCH
    try:
        one = [a for a in attempts if partition_for(a.ready.job_id, 4) == partition_for("job0", 4)]
        assert reporter.heartbeats(one, 1) == -(-len(one) // 3)
    finally:
        reporting.HEARTBEAT_BATCH = saved


def test_a_work_dir_is_removed_whatever_the_job_left_in_it_and_nothing_outside(tmp_path: Path) -> None:
    from ksched.executor.runtime import remove_workdir

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    plain, busy, linked = (tmp_path / name for name in ("plain", "busy", "linked"))
    for d in (plain, busy, linked):
        (d / "tmp").mkdir(parents=True)
        (d / "output.log").write_text("log")
    (busy / "tmp" / "deep" / "er").mkdir(parents=True)
    (busy / "result.csv").write_text("1,2")
    (linked / "tmp").rmdir()
    (linked / "tmp").symlink_to(outside)  # the job swapped its tmp for a link: the link goes, not its target
    (linked / "output.log").unlink()
    (linked / "output.log").symlink_to(outside / "keep")
    for d in (plain, busy, linked, tmp_path / "never-made"):
        remove_workdir(d)
        assert not d.exists() and not d.is_symlink()
    assert (outside / "keep").read_text() == "x"


def _run_noops(store: LocalStore, tmp_path: Path, n: int, slots: int, spawners: int) -> list[Ended]:
    """Run `n` no-op attempts due now through a runtime; how each ended."""
    from ksched.executor import runtime as rt

    ref = put(store, tmp_path, "ok.sh", b"#!/bin/sh\nexit 0\n")
    ended: list[Ended] = []
    done = threading.Event()

    def on_ended(e: Ended) -> None:
        ended.append(e)
        if len(ended) == n:
            done.set()

    runtime = rt.Runtime(slots, ArtifactCache(store, tmp_path / "cache"), tmp_path / "runs", lambda a, p: None,
                         on_ended, spawners=spawners)
    now = int(time.time() * 1000)
    for i in range(n):
        ready = replace(sample(TaskReady), task_id=f"j@1/t{i}", artifact=ref, args=[], env_from={}, limits=None,
                        scheduled_for_ms=now + i, start_by_ms=None)
        runtime.submit(Attempt(ready, replace(sample(ClaimGranted), task_id=ready.task_id)))
    assert done.wait(60)
    runtime.drain(10)
    runtime.stop()
    return ended


def test_processes_are_created_by_several_threads_at_once(store: LocalStore, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork and exec waits for a CPU on a busy machine; one thread creating processes one after another capped an
    executor's starts. Here every creation must wait for the others at a barrier: only creations that run at the
    same time get past it (one at a time, the first breaks it after its timeout and its attempt fails)."""
    from ksched.executor import runtime as rt

    n = 4
    barrier = threading.Barrier(n, timeout=20)
    real_spawn = rt.spawn

    def spawn_together(*args: Any, **kwargs: Any) -> Process:
        try:
            barrier.wait()
        except threading.BrokenBarrierError as exc:
            raise OSError("created alone") from exc
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(rt, "spawn", spawn_together)
    ended = _run_noops(store, tmp_path, n, slots=n, spawners=n)
    assert sorted((e.reason, e.exit_code) for e in ended) == [("", 0)] * n


def test_a_failure_while_starting_ends_the_attempt_and_frees_its_slot(store: LocalStore, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error in a spawn thread is not swallowed with its slot: the attempt ends as SPAWN_ERROR and the
    next one runs in the one slot."""
    from ksched.executor import runtime as rt

    real_spawn, calls = rt.spawn, []

    def spawn_once_broken(*args: Any, **kwargs: Any) -> Process:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(rt, "spawn", spawn_once_broken)
    ended = _run_noops(store, tmp_path, 2, slots=1, spawners=2)
    assert sorted((e.reason, e.exit_code) for e in ended) == [("", 0), (FailureReason.SPAWN_ERROR, None)]


def test_a_burst_of_held_processes_is_let_go_keeping_the_gil_and_the_switch_interval_is_restored(
        store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the default switch interval any thread of the executor that woke took the GIL from the loop letting a
    burst go, and on cores crowded by the processes let go it could keep it long: one executor's ~500 releases took
    0.60-1.00 s at the default, 0.43-0.77 s at the long interval (`./dev bench firing_lag`)."""
    from ksched.executor import runtime as rt

    ref = put(store, tmp_path, "ok.sh", b"#!/bin/sh\nexit 0\n")
    seen: list[float] = []
    real_release = Process.release

    def release(self: Process, fencing_token: int | None = None) -> None:
        seen.append(sys.getswitchinterval())
        real_release(self, fencing_token)

    monkeypatch.setattr(Process, "release", release)
    before = sys.getswitchinterval()
    ended: list[Ended] = []
    done = threading.Event()

    def on_ended(e: Ended) -> None:
        ended.append(e)
        if len(ended) == 3:
            done.set()

    runtime = rt.Runtime(3, ArtifactCache(store, tmp_path / "cache"), tmp_path / "runs", lambda a, p: None, on_ended)
    due = int(time.time() * 1000) + 1500  # held: at least `hold_ahead_s` ahead
    for i in range(3):
        ready = replace(sample(TaskReady), task_id=f"j@1/t{i}", artifact=ref, args=[], env_from={}, limits=None,
                        scheduled_for_ms=due, start_by_ms=None)
        runtime.submit(Attempt(ready, replace(sample(ClaimGranted), task_id=ready.task_id)))
    assert done.wait(60)
    runtime.drain(10)
    runtime.stop()
    assert sorted((e.reason, e.exit_code) for e in ended) == [("", 0)] * 3
    assert seen == [rt.LET_GO_SWITCH_S] * 3 and runtime._held == 0
    assert sys.getswitchinterval() == before


def _early_runtime(store: LocalStore, tmp_path: Path, on_ended: Any) -> tuple[Any, TaskReady, Path]:
    """A runtime and an attempt due now whose binary writes its fencing token and attempt to `out`."""
    from ksched.executor import runtime as rt

    out = tmp_path / "out"
    ref = put(store, tmp_path, "say.sh",
              f'#!/bin/sh\necho "$KSCHED_FENCING_TOKEN $KSCHED_ATTEMPT" >> {out}\n'.encode())
    runtime = rt.Runtime(2, ArtifactCache(store, tmp_path / "cache"), tmp_path / "runs", lambda a, p: None,
                         on_ended)
    ready = replace(sample(TaskReady), task_id="j@1/t", attempt=3, artifact=ref, args=[], env_from={}, limits=None,
                    scheduled_for_ms=int(time.time() * 1000), start_by_ms=None)
    return runtime, ready, out


def _created(runtime: Any, claim_id: str) -> Process:
    deadline = time.monotonic() + 30
    while not isinstance(proc := runtime._early.get(claim_id), Process):
        assert time.monotonic() < deadline, runtime._early
        time.sleep(0.01)
    return proc


def test_a_process_created_at_its_claim_runs_its_binary_only_once_granted_with_the_grants_token(
        store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process of an attempt due now is created (held) when its claim is made; the grant lets it go, passing the
    fencing token through its gate, and no second process is created."""
    from ksched.executor import runtime as rt

    spawned: list[bool] = []
    real_spawn = rt.spawn

    def counting(*args: Any, **kwargs: Any) -> Process:
        spawned.append(bool(kwargs.get("hold")))
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(rt, "spawn", counting)
    ended: list[Ended] = []
    runtime, ready, out = _early_runtime(store, tmp_path, ended.append)
    runtime.early(ready, "cl1")
    proc = _created(runtime, "cl1")
    time.sleep(0.3)
    assert not out.exists() and proc.popen.poll() is None  # held: nothing ran before the grant
    assert runtime._held == 1
    grant = replace(sample(ClaimGranted), task_id=ready.task_id, attempt=3, claim_id="cl1", fencing_token=42)
    runtime.submit(Attempt(ready, grant))
    deadline = time.monotonic() + 30
    while not ended and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.drain(10)
    runtime.stop()
    assert [(e.reason, e.exit_code) for e in ended] == [("", 0)]
    assert out.read_text() == "42 3\n" and spawned == [True]
    assert runtime._held == 0 and runtime._early == {}


def test_a_process_created_at_a_claim_that_is_lost_is_discarded_having_run_nothing(
        store: LocalStore, tmp_path: Path) -> None:
    runtime, ready, out = _early_runtime(store, tmp_path, lambda e: None)
    runtime.early(ready, "lost")
    proc = _created(runtime, "lost")
    runtime.keep_early({"lost"})  # its claim still waits: kept
    assert runtime._early == {"lost": proc}
    runtime.keep_early({"another"})  # rejected, given up on, or its attempt over
    runtime.stop()
    assert proc.popen.returncode is not None and not out.exists()
    assert not proc.log_path.parent.exists()  # its work dir went with it
    assert runtime._held == 0 and runtime._early == {}


def test_no_process_is_created_at_the_claim_of_an_attempt_with_secrets_or_fired_ahead(
        store: LocalStore, tmp_path: Path) -> None:
    """A secret is resolved only for a granted attempt; an attempt fired ahead is held once granted."""
    runtime, ready, _ = _early_runtime(store, tmp_path, lambda e: None)
    runtime.early(replace(ready, env_from={"TOKEN": "secret:t"}), "with-secret")
    runtime.early(replace(ready, scheduled_for_ms=int(time.time() * 1000) + 60_000), "ahead")
    runtime.stop()
    assert runtime._early == {} and runtime._held == 0


def test_a_sweep_names_the_live_claims_waiting_and_granted() -> None:
    ledger = Ledger()
    waiting, granted, lost = claim(ledger, "c1"), claim(ledger, "c2", attempt=2), claim(ledger, "c3", attempt=3)
    ledger.answer(grant_for(granted))
    ledger.reject(lost.claim_id)
    assert ledger.sweep(0.0, 30.0, 15.0, with_live=True).live == {waiting.claim_id, granted.claim_id}
    assert ledger.sweep(0.0, 30.0, 15.0).live == set()


def test_processes_are_created_at_their_claims_only_in_a_burst() -> None:
    from ksched.executor.ledger import EARLY_MIN_WAITING, creates_early

    assert not creates_early(1) and not creates_early(EARLY_MIN_WAITING - 1)
    assert creates_early(EARLY_MIN_WAITING) and creates_early(1000)
    assert creates_early(1, early_from=0) and not creates_early(1000, early_from=-1)
