"""Running one attempt's binary: its own directory, a clean environment, its own session and process
group, dies with the executor, and its output captured to a file with a size cap."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ksched.instants import iso
from ksched.schemas.events import ClaimGranted, Limits, TaskReady

_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def attempt_env(ready: TaskReady, grant: ClaimGranted, workdir: Path) -> dict[str, str]:
    """The whole environment of the process: nothing of the executor's own (no secrets leak in)."""
    env = {
        "PATH": BASE_PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "LANG": "C.UTF-8",
    }
    env.update(ready.env)
    env.update({
        "KSCHED_JOB_ID": ready.job_id,
        "KSCHED_RUN_ID": ready.run_id,
        "KSCHED_TASK_ID": ready.task_id,
        "KSCHED_ATTEMPT": str(grant.attempt),
        "KSCHED_FENCING_TOKEN": str(grant.fencing_token),
        "KSCHED_SCHEDULED_FOR": iso(ready.scheduled_for_ms),
    })
    return env


def looks_executable(path: Path) -> bool:
    """An ELF binary or a script with a shebang; anything else would fail with ENOEXEC."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"#!") or head == b"\x7fELF"


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at_ms: int
    gate: int | None = None  # held: the write end of the pipe its shim waits on before it execs the binary

    @property
    def pid(self) -> int:
        return self.popen.pid

    def release(self) -> None:
        """Let a held process exec its binary now. Raises OSError if it is gone (nothing then runs)."""
        gate, self.gate = self.gate, None
        if gate is None:
            return
        try:
            os.write(gate, GO)
        finally:
            os.close(gate)
        self.started_at_ms = int(time.time() * 1000)

    def discard(self) -> None:
        """Kill a held process that will not be released, and reap it."""
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def kill_tree(self, grace_s: float) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace_s`."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not _group_alive(self.popen.pid):
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def limit_args(limits: Limits) -> list[str]:
    """`prlimit` options for the attempt's resource limits (0: no limit)."""
    opts = []
    if limits.cpu_seconds:
        opts.append(f"--cpu={limits.cpu_seconds}")
    if limits.memory_mb:
        opts.append(f"--as={limits.memory_mb * 1024 * 1024}")
    if limits.open_files:
        opts.append(f"--nofile={limits.open_files}")
    if limits.processes:
        opts.append(f"--nproc={limits.processes}")  # not enforced for root, as the kernel decides
    return opts


GO = b"go\n"
# The shim a held process runs until it is released: it execs the binary only on the go word, so a gate that
# closes any other way (the executor died or discarded it) runs nothing.
_SHIM = 'IFS= read -r word && [ "$word" = go ] && exec "$@" </dev/null; exit 111'


def spawn(binary: Path, args: list[str], env: dict[str, str], workdir: Path, limits: Limits | None = None,
          hold: bool = False) -> Process:
    """Start the attempt, or with `hold` create its sandboxed process now and let it exec the binary only when
    released (so an attempt due at an instant starts with one write, not a fork and three execs).
    Raises OSError if it cannot be started."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    log_path = workdir / "output.log"
    argv = [str(binary), *args]
    gate_r = gate_w = -1
    if hold:
        gate_r, gate_w = os.pipe()
        os.set_inheritable(gate_w, False)
        argv = ["/bin/sh", "-c", _SHIM, "ksched-held", *argv]  # the gate is its stdin until released
    if _SETPRIV:
        # The process is killed if the executor dies, so a dead executor leaves no orphan running.
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    opts = limit_args(limits) if limits is not None else []
    if opts and _PRLIMIT:
        argv = [_PRLIMIT, *opts, "--", *argv]
    try:
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=gate_r if hold else subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
    except OSError:
        if hold:
            os.close(gate_w)
        raise
    finally:
        if hold:
            os.close(gate_r)
    return Process(popen, log_path, int(time.time() * 1000), gate_w if hold else None)


def cap_log(path: Path, limit: int) -> None:
    """Keep the first and last `limit/2` bytes of a log that grew past `limit`."""
    size = path.stat().st_size if path.exists() else 0
    if size <= limit:
        return
    half = limit // 2
    with open(path, "rb") as f:
        head = f.read(half)
        f.seek(size - half)
        tail = f.read(half)
    marker = f"\n[ksched: {size - 2 * half} bytes of output dropped]\n".encode()
    path.write_bytes(head + marker + tail)
