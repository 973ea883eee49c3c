"""Jobs run contained (real bubblewrap, real processes): an unprivileged uid of their own, every descendant
dead with the attempt, limits that hold, and none of the executor's files in sight."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksched.executor.sandbox import Isolation, Process, UidPool, spawn
from ksched.schemas.events import Limits

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (./dev setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only from a root executor"),
]
ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An executor's home: its cache (one binary per test), other attempts' work dirs, a credentials file."""
    h = tmp_path / "home"
    (h / "cache").mkdir(parents=True)
    (h / "runs").mkdir()
    (h / "kafka.properties").write_text("sasl.password=hunter2\n")
    return h


@pytest.fixture
def iso(home: Path) -> Isolation:
    return Isolation.default((home,), pool_size=8, uid_base=210_000)


def job(home: Path, name: str, body: str) -> Path:
    path = home / "cache" / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o555)
    return path


def run(iso: Isolation, home: Path, binary: Path, name: str = "a1", limits: Limits | None = None) -> tuple[int, str]:
    workdir = home / "runs" / name
    proc = spawn(binary, [], ENV, workdir, limits, isolation=iso)
    code = proc.popen.wait(timeout=60)
    proc.retire()
    return code, (workdir / "output.log").read_text()


def alive(pattern: str) -> list[int]:
    """Processes whose command line holds `pattern`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if pattern in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    tag = f"{time.monotonic_ns() % 10**9}"
    yield tag
    for pid in alive(f"sleep 31{tag}"):  # nothing should be left; never leave it running if it is
        os.kill(pid, 9)


def test_a_job_runs_as_an_unprivileged_uid_of_its_own(iso: Isolation, home: Path) -> None:
    code, out = run(iso, home, job(home, "id", "id -u; id -g; id -G\n"))
    assert code == 0
    uid, gid, groups = out.split()
    assert int(uid) >= 210_000 and gid == uid and groups == uid


def test_two_attempts_at_once_get_different_uids_and_a_finished_one_gives_its_uid_back(home: Path) -> None:
    pool = UidPool(220_000, 2)
    iso = Isolation(pool, namespaces=True, hidden=(home,))
    binary = job(home, "wait", "id -u; sleep 1\n")
    a = spawn(binary, [], ENV, home / "runs" / "a", isolation=iso)
    b = spawn(binary, [], ENV, home / "runs" / "b", isolation=iso)
    with pytest.raises(OSError, match="no free job uid"):
        spawn(binary, [], ENV, home / "runs" / "c", isolation=iso)
    assert {a.popen.wait(), b.popen.wait()} == {0}
    uids = {(home / "runs" / n / "output.log").read_text().strip() for n in "ab"}
    assert uids == {"220000", "220001"}
    a.retire()
    a.retire()  # idempotent
    assert pool.take() == 220_000


@pytest.mark.parametrize("hold", [False, True])
def test_with_a_uid_and_no_namespace_a_job_gets_its_limits_every_time(home: Path, hold: bool) -> None:
    # No bubblewrap: the process is `setpriv` to a pool uid, then the prlimit program, then the shim. Set from
    # outside by prlimit(2), the limits raced `setpriv`: a root without CAP_SYS_RESOURCE (this machine's CI, a
    # container's root) may not set another uid's, so a start failed whenever `setpriv` switched first. Many
    # starts, so a race shows.
    # With no mount namespace the uid must reach the binary and its work dir itself: pytest's tmp dirs are 0700.
    root = Path(tempfile.mkdtemp(prefix="ksched-uid-"))
    try:
        root.chmod(0o755)
        iso = Isolation(UidPool(230_000, 2), namespaces=False, hidden=(home,))
        (root / "cache").mkdir(mode=0o755)
        binary = job(root, "lim", "id -u; ulimit -n; ulimit -Hn\n")
        for i in range(20):
            workdir = root / "runs" / f"u{i}"
            proc = spawn(binary, [], ENV, workdir, Limits(open_files=64), hold=hold, isolation=iso)
            proc.release()
            assert proc.popen.wait(timeout=60) == 0
            proc.retire()
            assert (workdir / "output.log").read_text().split() in (["230000", "64", "64"], ["230001", "64", "64"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_setsid_child_and_a_background_child_die_when_the_job_exits(iso: Isolation, home: Path,
                                                                      marker: str) -> None:
    body = f"setsid sleep 31{marker} & \n(sleep 31{marker} &)\nsleep 0.2\necho spawned\n"
    code, out = run(iso, home, job(home, "escape", body))
    assert (code, out.strip()) == (0, "spawned")
    deadline = time.monotonic() + 5
    while alive(f"sleep 31{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(f"sleep 31{marker}") == []


def test_a_timeout_kill_ends_every_descendant_after_the_job_had_its_sigterm(iso: Isolation, home: Path,
                                                                           marker: str) -> None:
    body = (f"trap 'echo got-term; exit 0' TERM\nsetsid sleep 31{marker} &\necho ready\n"
            "while :; do sleep 0.05; done\n")
    workdir = home / "runs" / "t"
    proc: Process = spawn(job(home, "slow", body), [], ENV, workdir, isolation=iso)
    deadline = time.monotonic() + 10
    while "ready" not in (workdir / "output.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(f"sleep 31{marker}")
    proc.kill_tree(grace_s=2.0)
    proc.popen.wait(timeout=10)
    time.sleep(0.2)
    assert alive(f"sleep 31{marker}") == []
    assert "got-term" in (workdir / "output.log").read_text()


def test_the_process_limit_holds(iso: Isolation, home: Path) -> None:
    binary = job(home, "forks", "for i in $(seq 20); do sleep 3 & done\necho all-forked\n")
    code, out = run(iso, home, binary, "limited", Limits(processes=5))
    assert code != 0 and "cannot fork" in out.lower() and "all-forked" not in out
    code, out = run(iso, home, binary, "unlimited", Limits(processes=0))
    assert (code, out.strip()) == (0, "all-forked")


def test_the_memory_limit_holds(iso: Isolation, home: Path) -> None:
    _code, out = run(iso, home, job(home, "mem", "dd if=/dev/zero of=/dev/null bs=200M count=1 2>&1; echo $?\n"),
                    limits=Limits(memory_mb=64))
    assert out.strip().splitlines()[-1] != "0" and "memory" in out.lower()


def test_the_executors_files_and_other_attempts_work_dirs_are_out_of_sight(iso: Isolation, home: Path) -> None:
    other = home / "runs" / "other"
    other.mkdir()
    (other / "output.log").write_text("someone else's output\n")
    body = (f"cat {home}/kafka.properties 2>&1; ls {home}/runs; ls {home}/cache; ls /tmp | wc -l;\n"
            "echo private > /tmp/mine && cat /tmp/mine\n")
    code, out = run(iso, home, job(home, "peek", body), name="mine")
    assert code == 0
    assert "hunter2" not in out and "No such file" in out
    lines = out.splitlines()
    assert lines[1] == "mine"  # its own work dir only, not "other"
    assert lines[2] == "peek"  # its own binary only
    assert lines[-1] == "private"
    assert not Path("/tmp/mine").exists()


def test_a_held_attempt_runs_contained_when_released(iso: Isolation, home: Path) -> None:
    workdir = home / "runs" / "held"
    proc = spawn(job(home, "held", "id -u\n"), [], ENV, workdir, hold=True, isolation=iso)
    proc.release()
    assert proc.popen.wait(timeout=30) == 0
    proc.retire()
    assert int((workdir / "output.log").read_text()) >= 210_000
