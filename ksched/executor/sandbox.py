"""Running one attempt's binary: its own directory, a clean environment, its own session and process
group, dies with the executor, and its output captured to a file with a size cap.

Contained (`Isolation`, the executor's default): the attempt runs under bubblewrap in its own PID namespace,
so every descendant — a `setsid` or double-forked one too — dies when the attempt's first process exits, or
when it is killed at a timeout or cancel; as an unprivileged uid of its own (from a pool, one per attempt
at a time, so process limits hold per attempt and attempts cannot touch each other's files); with a private
/tmp, and the executor's own directories (credentials, artifact cache, other attempts' work dirs) replaced by
empty ones. Resource limits apply through the prlimit program, or by prlimit(2) on a held process outside a
namespace; the uid's RLIMIT_NPROC holds since it is not root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ksched.errors import ConfigError
from ksched.instants import iso
from ksched.schemas.events import ClaimGranted, Limits, TaskReady

from .guardian import Guardian

_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
BWRAP = shutil.which("bwrap")
log = logging.getLogger(__name__)
#: Kills the uncontained attempts' process groups if this process dies (one per process, started on first use).
GUARDIAN = Guardian()
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class UidPool:
    """Unprivileged uids handed to attempts, one per attempt while it runs (or is held)."""

    def __init__(self, base: int, size: int) -> None:
        if base < 1000:
            raise ValueError(f"job uids start at {base}: below 1000 they may be system users")
        self._free = list(range(base + size - 1, base - 1, -1))
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise OSError("no free job uid: more attempts at once than the pool holds")
            return self._free.pop()

    def give(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


@dataclass(frozen=True)
class Isolation:
    """How attempts are contained. `uids` None: they run as the executor's own user (which must not be root);
    `namespaces` False: no bubblewrap (a setsid'd descendant can then outlive its attempt)."""

    uids: UidPool | None
    namespaces: bool
    hidden: tuple[Path, ...] = ()
    shared: tuple[Path, ...] = ()

    @staticmethod
    def default(hidden: tuple[Path, ...], pool_size: int, uid_base: int = 200_000,
                shared: tuple[Path, ...] = ()) -> Isolation:
        """The executor's: namespaces where bubblewrap is installed, and unprivileged uids when it runs as root.
        Refuses to run jobs as root at all."""
        uids = UidPool(uid_base, pool_size) if os.geteuid() == 0 else None
        if uids is not None and _SETPRIV is None:
            raise OSError("setpriv (util-linux) is needed to run jobs as unprivileged users")
        if BWRAP is None:
            log.warning("bubblewrap (bwrap) is not installed: jobs get no PID namespace and can see this host's "
                        "files their uid may read; a setsid'd descendant can outlive its attempt")
        return Isolation(uids, BWRAP is not None, hidden, shared)

    def wrap(self, argv: list[str], workdir: Path, binary: Path, uid: int | None) -> list[str]:
        if uid is not None:
            assert _SETPRIV is not None
            deathsig = [] if self.namespaces else ["--pdeathsig", "KILL"]
            argv = [_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *deathsig,
                    "--", *argv]
        if not self.namespaces:
            return argv
        assert BWRAP is not None
        mounts = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
        roots = [Path("/tmp"), *self.shared, *self.hidden]
        # The directories bubblewrap creates on the way to a mount point are root's and closed (0700): each
        # mount is preceded by the walkable (0755, empty) directories above it, so the job's uid can reach its
        # work dir, its binary and the shared directories, and nothing else there.
        for path in self.shared:
            mounts += [*_walkable(roots, path), "--bind", str(path), str(path)]
        for path in sorted(self.hidden, key=lambda p: len(p.parts)):
            if path.is_dir():
                mounts += [*_walkable(roots, path), "--perms", "0755", "--tmpfs", str(path)]
            elif path.exists():
                mounts += ["--ro-bind", "/dev/null", str(path)]
        mounts += [*_walkable(roots, workdir), "--bind", str(workdir), str(workdir),
                   *_walkable(roots, binary), "--ro-bind", str(binary), str(binary)]
        userns = ["--unshare-user"] if os.geteuid() != 0 else []
        return [BWRAP, "--die-with-parent", "--unshare-pid", "--unshare-ipc", *userns, *mounts,
                "--chdir", str(workdir), "--", *argv]


def attempt_env(ready: TaskReady, grant: ClaimGranted | None, workdir: Path) -> dict[str, str]:
    """The whole environment of the process: nothing of the executor's own (no secrets leak in). Without the
    grant (a process created when its claim was made), the fencing token is left to the word that lets it go."""
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
        "KSCHED_ATTEMPT": str(ready.attempt if grant is None else grant.attempt),
        "KSCHED_SCHEDULED_FOR": iso(ready.scheduled_for_ms),
    })
    if grant is not None:
        env["KSCHED_FENCING_TOKEN"] = str(grant.fencing_token)
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
    uid: int | None = None
    pool: UidPool | None = None
    namespaced: bool = False

    def retire(self) -> None:
        """The attempt is over (reaped or discarded): its uid goes back to the pool. Idempotent."""
        pool, self.pool = self.pool, None
        if pool is not None and self.uid is not None:
            pool.give(self.uid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def release(self, fencing_token: int | None = None) -> None:
        """Let a held process exec its binary now, with `fencing_token` as its KSCHED_FENCING_TOKEN if given (one
        created before its grant). Raises OSError if it is gone (nothing then runs)."""
        gate, self.gate = self.gate, None
        if gate is None:
            return
        go_and_close(gate, GO if fencing_token is None else b"go %d\n" % fencing_token)
        self.started_at_ms = int(time.time() * 1000)

    def discard(self) -> None:
        """Kill a held process that will not be released, and reap it."""
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self.retire()

    def kill_tree(self, grace_s: float) -> None:
        """SIGTERM the whole process group and every descendant (a `setsid` one too), then SIGKILL what is left
        after `grace_s`. In a PID namespace the SIGKILL of its first process ends everything in it."""
        for pid in _descendants(self.popen.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if not self.namespaced:  # bubblewrap's first process would take the group's SIGTERM as the end of all
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not _group_alive(self.popen.pid):
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def _walkable(roots: list[Path], target: Path) -> list[str]:
    """bubblewrap options making the directories between the outermost of `roots` holding `target` and target's
    parent (existing ones are left as they are)."""
    holders = [r for r in roots if target.is_relative_to(r) and r != target]
    if not holders:
        return []
    root = min(holders, key=lambda r: len(r.parts))
    opts: list[str] = []
    for i in range(len(root.parts) + 1, len(target.parts)):
        opts += ["--perms", "0755", "--dir", str(Path(*target.parts[:i]))]
    return opts


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (whatever its session), from /proc's children lists, deepest last."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    # bubblewrap's own processes take SIGTERM as the end: only the job's get it, to end cleanly in the grace
    return [p for p in found if not _is_bwrap(p)]


def _is_bwrap(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def require_prlimit() -> None:
    """Raises ConfigError where the prlimit program is missing: an attempt in bubblewrap or with a pool uid could
    not get its limits (as the executor's own user the executor sets them itself, by prlimit(2))."""
    if _PRLIMIT is None:
        raise ConfigError("prlimit (util-linux) is not installed: jobs' resource limits could not be applied")


def rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """The attempt's resource limits as (resource, soft, hard): each soft and hard alike, as `prlimit` sets them."""
    values = [(resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024),
              (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_NPROC, limits.processes)]
    return [(res, value, value) for res, value in values if value]


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
        opts.append(f"--nproc={limits.processes}")  # per uid: it holds for the pool uids, not for root
    return opts


GO = b"go\n"


def _libc_keeping_the_gil() -> ctypes.PyDLL | None:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        libc.write.argtypes, libc.write.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_ssize_t
        libc.close.argtypes, libc.close.restype = [ctypes.c_int], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


#: libc's write and close through a handle that keeps the GIL while they run (ctypes.PyDLL). Letting a held
#: process go is a write of 3 bytes to a pipe with room (atomic, never blocks) and a close. Through `os` each call
#: gives up the GIL, and taking it back waits for the executor's other threads, busy reaping and reporting the
#: processes let go a moment before: 500 releases took 0.97-2.06 s through `os` beside four threads busy in Python,
#: 0.19-0.21 s this way (alone, about the same: 134-166 against 97-166 ms; three runs each, alternating).
_LIBC = _libc_keeping_the_gil()


def go_and_close(gate: int, word: bytes = GO) -> None:
    """Write the go word to a held process's gate and close it. OSError if the process is gone (EPIPE)."""
    if _LIBC is None:
        try:
            os.write(gate, word)
        finally:
            os.close(gate)
        return
    written = _LIBC.write(gate, word, len(word))
    err = ctypes.get_errno() if written < 0 else 0
    _LIBC.close(gate)
    if written < 0:
        raise OSError(err, os.strerror(err))
    if written != len(word):  # not for a few bytes to a pipe (PIPE_BUF is at least 512): never let go half a word
        raise OSError(errno.EIO, f"wrote {written} of {len(word)} bytes to the gate")


# The shim a held process runs until it is released: it execs the binary only on the go word, so a gate that
# closes any other way (the executor died or discarded it) runs nothing. A number after the word is the fencing
# token of a process created before its grant came (`Runtime.early`).
_SHIM = ('IFS=" " read -r word token && [ "$word" = go ] || exit 111; '
         'case $token in ""|*[!0-9]*) ;; *) export KSCHED_FENCING_TOKEN="$token" ;; esac; exec "$@" </dev/null')


def spawn(binary: Path, args: list[str], env: dict[str, str], workdir: Path, limits: Limits | None = None,
          hold: bool = False, isolation: Isolation | None = None) -> Process:
    """Start the attempt, or with `hold` create its sandboxed process now and let it exec the binary only when
    released (so an attempt due at an instant starts with one write, not a fork and several execs).
    `isolation` None: as the executor's own user, in no namespace (tests of the parts below it).
    Raises OSError if it cannot be started."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    uid = None
    if isolation is not None and isolation.uids is not None:
        uid = isolation.uids.take()
        for path in (workdir, workdir / "tmp"):
            os.chown(path, uid, uid)
            os.chmod(path, 0o700)  # no other attempt's uid may look in
    try:
        return _spawn(binary, args, env, workdir, limits, hold, isolation, uid)
    except BaseException:
        if uid is not None and isolation is not None and isolation.uids is not None:
            isolation.uids.give(uid)
        raise


def _spawn(binary: Path, args: list[str], env: dict[str, str], workdir: Path, limits: Limits | None, hold: bool,
           isolation: Isolation | None, uid: int | None) -> Process:
    log_path = workdir / "output.log"
    argv = [str(binary), *args]
    # Its process group is killed if the executor dies, so a dead executor leaves no orphan running: by the
    # guardian (in a namespace bubblewrap's --die-with-parent does it; with a uid, the uid's setpriv).
    guarded = (isolation is None or not isolation.namespaces) and uid is None
    opts = limit_args(limits) if limits is not None else []
    # As the executor's own user, the process gets its limits by prlimit(2) while it waits at its gate, before
    # its binary runs. Started at once, it is let go right after. The shim's exec costs less CPU than the prlimit
    # program's (0.54-0.55 against 0.77-0.82 ms, `/bin/true` behind each, 400 starts). In bubblewrap they must be
    # set inside by the program (its sandboxed child is forked); with a pool uid too: prlimit(2) on another uid's
    # process needs CAP_SYS_RESOURCE, which a root without it (as in a container) lacks once `setpriv` switched.
    held_limits = rlimits(limits) if limits is not None and uid is None and (
        isolation is None or not isolation.namespaces) else []
    # A guarded process waits at its gate until the guardian watches it too: an executor killed between the start
    # and the watch would leave it running.
    gated = hold or bool(held_limits) or guarded
    gate_r = gate_w = -1
    if gated:
        gate_r, gate_w = os.pipe()
        os.set_inheritable(gate_w, False)
        argv = ["/bin/sh", "-c", _SHIM, "ksched-held", *argv]  # the gate is its stdin until released
    if opts and not held_limits:
        if _PRLIMIT is None:
            raise OSError(errno.ENOENT, "prlimit (util-linux) is not installed: the limits cannot be set")
        argv = [_PRLIMIT, *opts, "--", *argv]
    if isolation is not None:
        argv = isolation.wrap(argv, workdir, binary, uid)
    try:
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=gate_r if gated else subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
    except OSError:
        if gated:
            os.close(gate_w)
        raise
    finally:
        if gated:
            os.close(gate_r)
    try:
        _limit_and_guard(popen, held_limits, opts, guarded)
    except OSError:
        _abandon(popen, gate_w)
        raise
    pool = isolation.uids if isolation is not None else None
    proc = Process(popen, log_path, int(time.time() * 1000), gate_w if gated else None, uid, pool,
                   isolation is not None and isolation.namespaces)
    if gated and not hold:
        try:
            proc.release()  # closes the gate, also when the write fails
        except OSError:  # it died at its gate (killed from outside): nothing ran; `spawn` gives its uid back
            _abandon(popen, -1)
            raise
    return proc


def _limit_and_guard(popen: subprocess.Popen[bytes], held_limits: list[tuple[int, int, int]], opts: list[str],
                     guarded: bool) -> None:
    """Set the limits of a process waiting at its gate, and have the guardian watch it. OSError if either fails."""
    try:
        for res, soft, hard in held_limits:
            resource.prlimit(popen.pid, res, (soft, hard))
    except OSError as err:  # above this user's hard limit, or gone: it is not started this way
        raise OSError(err.errno, f"cannot set the limits {opts}: {err.strerror}") from err
    if guarded:
        GUARDIAN.watch(popen.pid)


def _abandon(popen: subprocess.Popen[bytes], gate: int) -> None:
    """Kill and reap a process that will not run, and close its gate (-1: none, or closed already)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()
    if gate >= 0:
        os.close(gate)


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
