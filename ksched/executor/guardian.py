"""The guardian: a small process of the executor's that kills its attempts' process groups when the executor dies.

An uncontained attempt used to be started through `setpriv --pdeathsig KILL`, one more program exec'd per
attempt (about 0.9 ms of CPU of the 1.5 ms a one-line shell script's start costs on a 2-core box), and the
signal reached only the attempt's first process. Now the executor hands each attempt's pidfd to the guardian
over a socket as it starts it (`Guardian.watch`); when that socket reaches its end — the executor died,
however, or exited — the guardian SIGKILLs the process group of every attempt still running, then exits.
Contained attempts need none of it: bubblewrap's `--die-with-parent` ends their PID namespace.

The guardian is this file run by the interpreter in isolated mode (`-I`: nothing of ksched, the environment or
the working directory on its path), in a session of its own (a terminal's Ctrl-C or a signal to the executor's
group leaves it running until the socket ends), and single-threaded; it only waits, on the socket and the
pidfds. It holds no child of the executor's, so the executor reaps its attempts as before.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading

log = logging.getLogger(__name__)


def _alive(pidfd: int) -> bool:
    """Whether the process is still running (a pidfd is readable once it has exited)."""
    poll = select.poll()  # not select(): a guardian of a thousand attempts has pidfds past FD_SETSIZE
    poll.register(pidfd, select.POLLIN)
    return not poll.poll(0)


def guard(sock: socket.socket) -> None:
    """The guardian's loop: watch the pidfds the executor sends until the socket ends, then kill what runs."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    watched: dict[int, int] = {}  # pidfd -> pid (the attempt's process group: it leads a session of its own)
    while True:
        for key, _ in sel.select():
            if key.data is not None:  # an attempt's first process ended: the executor reaps it
                sel.unregister(key.fd)
                os.close(key.fd)
                watched.pop(key.fd, None)
                continue
            try:
                data, fds, flags, _ = socket.recv_fds(sock, 32, 1)
            except OSError:
                data, fds, flags = b"", [], 0
            if flags & socket.MSG_CTRUNC:
                print(f"ksched guardian: the pidfd of process {data.decode()} was lost (out of file descriptors?); "
                      "it will not be killed with the executor", file=sys.stderr, flush=True)
            if not data:
                for pidfd, pid in watched.items():
                    # Only while its first process runs is the pid surely still this attempt's group.
                    if _alive(pidfd):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                return
            for pidfd in fds:
                watched[pidfd] = int(data)
                sel.register(pidfd, selectors.EVENT_READ, pidfd)


class Guardian:
    """The executor's side: starts the guardian on first use, and again if it is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        atexit.register(self.close)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pid: int) -> None:
        """Have the guardian kill `pid`'s process group if this process dies while `pid` runs. `pid` must be an
        unreaped child (so the pid is still its own). Raises OSError if no guardian can be reached."""
        pidfd = os.pidfd_open(pid)
        try:
            with self._lock:
                if self._closed:
                    raise OSError("the guardian is closed: this process is exiting")
                for attempt in (1, 2):
                    if self._sock is None:
                        self._start()
                    assert self._sock is not None
                    try:
                        socket.send_fds(self._sock, [str(pid).encode()], [pidfd])
                        return
                    except (BrokenPipeError, ConnectionResetError) as err:  # it died: closing kills nothing more
                        if attempt == 2:
                            raise
                        log.warning("the guardian is gone (%s); starting another", err)
                        self._close()
        finally:
            os.close(pidfd)

    def close(self) -> None:
        """At this process's exit: the guardian kills whatever of ours still runs, and ends."""
        if self._lock.acquire(timeout=5):  # a thread stuck sending holds it: then the exit ends the guardian
            try:
                self._closed = True
                self._close()
            finally:
                self._lock.release()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours

    def _close(self) -> None:
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            sock.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # a pidfd per running or held attempt: often past 1,024
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends with its socket, after the executor
    guard(socket.socket(fileno=int(sys.argv[1])))
