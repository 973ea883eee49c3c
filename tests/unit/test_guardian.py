"""The guardian kills an uncontained attempt's whole process group when its executor dies (real processes)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ksched.executor.sandbox import GUARDIAN, spawn
from ksched.schemas.events import Limits

ENV = {"PATH": "/usr/bin:/bin"}
REPO = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_an_executor_killed_outright_takes_its_attempts_whole_process_groups_with_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "job.sh"
    # The attempt's first process and a child of it in its group: a pdeathsig reached only the first.
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pids}.tmp && mv {pids}.tmp {pids}\nwait\n")
    script.chmod(0o755)
    executor = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ksched.executor.sandbox import spawn
        spawn(Path({str(script)!r}), [], {ENV!r}, Path({str(tmp_path / "work")!r}))
        time.sleep(300)
    """)], cwd=REPO)
    try:
        _wait_until(pids.exists, 30, "the attempt wrote its pids")
        first, child = (int(p) for p in pids.read_text().split())
        assert _running(first) and _running(child)
        executor.send_signal(signal.SIGKILL)
        executor.wait(10)
        _wait_until(lambda: not _running(first) and not _running(child), 30, "the attempt's processes were killed")
    finally:
        executor.kill()
        executor.wait(10)
        if pids.exists():
            for pid in pids.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def test_a_lost_guardian_is_replaced_and_ended_attempts_leave_it_no_descriptor(tmp_path: Path) -> None:
    script = tmp_path / "true.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    assert spawn(script, [], ENV, tmp_path / "a").popen.wait(10) == 0
    first = GUARDIAN.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    _wait_until(lambda: not _running(first), 10, "the guardian died")
    procs = [spawn(script, [], ENV, tmp_path / f"w{i}") for i in range(20)]
    assert [p.popen.wait(10) for p in procs] == [0] * 20  # started and watched by a new guardian
    second = GUARDIAN.pid
    assert second is not None and second != first

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{second}/fd"))
    # stdin, stdout, stderr and the socket, plus its selector's epoll: the attempts' pidfds are closed as they end
    _wait_until(lambda: descriptors() <= 5, 10, "the guardian closed the ended attempts' pidfds")


def test_the_guardian_tells_a_running_attempt_from_an_ended_one_past_fd_1024(tmp_path: Path) -> None:
    # select() refuses descriptors past FD_SETSIZE; a guardian of 1,000 held attempts and the slots has them.
    from ksched.executor.guardian import _alive

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 2100:
        pytest.skip(f"needs more than 2,100 open files (soft limit {soft})")
    script = tmp_path / "wait.sh"
    script.write_text("#!/bin/sh\nread -r line\n")  # waits for its stdin to end
    script.chmod(0o755)
    proc = spawn(script, [], ENV, tmp_path / "w", hold=True)
    pidfd = os.pidfd_open(proc.pid)
    high = os.dup2(pidfd, 2100)
    os.close(pidfd)
    try:
        assert _alive(high)
        proc.discard()
        assert not _alive(high)
    finally:
        os.close(high)


@pytest.mark.parametrize("limits", [None, Limits(open_files=0)])
def test_an_attempt_runs_nothing_before_the_guardian_watches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 limits: Limits | None) -> None:
    # With no limits to set at its gate (none given, or a job that sets none), an attempt once ran from its
    # start: an executor killed before its watch reached the guardian left it running (CI saw it). It must wait
    # at its gate until watched.
    marker = tmp_path / "ran"
    script = tmp_path / "mark.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    seen: list[bool] = []
    watch = GUARDIAN.watch

    def slow_watch(pid: int) -> None:
        time.sleep(0.3)  # long enough for a running script to have touched its marker
        seen.append(marker.exists())
        watch(pid)

    monkeypatch.setattr(GUARDIAN, "watch", slow_watch)
    proc = spawn(script, [], ENV, tmp_path / "w", limits)
    assert proc.popen.wait(10) == 0
    assert seen == [False] and marker.exists()
