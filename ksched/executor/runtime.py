"""Starting and reaping attempts' processes without a thread per attempt.

* fetchers (a small pool) get each granted attempt's artifact into the cache;
* the starter thread holds staged attempts until their instant (a heap) and starts them while slots
  are free, highest priority first; an attempt staged well ahead gets its process created at once, held
  before its binary (see `sandbox.spawn(hold=True)`), so at the instant it only has to be let go;
* the reaper thread waits on every running process at once (pidfds in a selector) and hands each ended
  one to the finishers (a small pool: log upload, then the report).
A thousand attempts due in the same second start as fast as processes can be forked.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import logging
import os
import selectors
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ksched.errors import ArtifactError, SecretError
from ksched.schemas.events import ClaimGranted, FailureReason, TaskReady

from .cache import ArtifactCache
from .sandbox import Isolation, Process, attempt_env, spawn
from .secrets import SecretStore, resolve

log = logging.getLogger(__name__)
_RANK = {"high": 0, "normal": 1, "low": 2}
#: The GIL switch interval while a burst of held processes is let go (see `Runtime._let_go`): 1,000 take well under.
LET_GO_SWITCH_S = 1.0


@dataclass
class Attempt:
    ready: TaskReady
    grant: ClaimGranted
    staged: bool = False  # fired ahead of its instant and not yet started
    process: Process | None = None
    ending: str = ""  # "", or the FailureReason it is being stopped for (TIMEOUT, CANCELLED, EXECUTOR_STOPPED)
    ending_message: str = ""
    killer: threading.Thread | None = None
    workdir: Path | None = None
    held: Process | None = None  # created ahead of its instant, waiting to be released

    @property
    def key(self) -> str:
        return f"{self.grant.task_id}#{self.grant.attempt}"


class _Early(enum.Enum):
    QUEUED = "queued"  # its creation waits for a fetch thread
    CREATING = "creating"


@dataclass(frozen=True)
class Ended:
    """How an attempt ended, for the report."""

    attempt: Attempt
    reason: str = ""  # "" when the process exited on its own; else a FailureReason
    message: str = ""
    exit_code: int | None = None
    started_at_ms: int | None = None
    finished_at_ms: int = 0
    log_path: Path | None = None


@dataclass
class Runtime:
    slots: int
    cache: ArtifactCache
    workroot: Path
    on_started: Callable[[Attempt, Process], None]
    on_ended: Callable[[Ended], None]
    grace_s: float = 5.0
    keep_workdirs: bool = False
    fetchers: int = 4
    #: Threads creating processes at once. A process's fork and exec take ~0.5 ms of CPU but, on busy cores, some
    #: ms of waiting for one (the parent waits in vfork until the child has exec'd; the GIL is released): one
    #: thread creating them one after another capped an executor at ~140 starts/s with a core idle.
    spawners: int = 4
    #: Attempts due at least this far ahead get their process created at once, held until the instant.
    hold_ahead_s: float = 0.5
    max_held: int = 1000
    #: How attempts are contained (None: as the executor's own user, in no namespace: tests of the parts).
    isolation: Isolation | None = None
    #: Where `env_from` secrets are resolved (None: tasks that reference secrets fail with SECRET_MISSING).
    secrets: SecretStore | None = None
    _held: int = 0
    _heap: list[tuple[float, int, Attempt]] = field(default_factory=list)
    #: Due attempts waiting for a slot: highest priority first, then the earliest instant.
    _waiting: list[tuple[int, float, int, Attempt]] = field(default_factory=list)
    _running: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sweep: bool = False  # a staged attempt was cancelled: take it out of the heap now
    _starting: int = 0  # attempts taken off the heap that the starter is still starting (or ending)
    #: Processes created at their claims, and those their grants took (reported in the executor's stats).
    early_created: int = 0
    early_taken: int = 0
    #: Processes created at their claim, by claim id, until their grant takes them (or the claim is lost).
    _early: dict[str, Process | _Early] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fetch = ThreadPoolExecutor(self.fetchers, thread_name_prefix="fetch")
        self._finish = ThreadPoolExecutor(4, thread_name_prefix="finish")
        self._spawn = ThreadPoolExecutor(self.spawners, thread_name_prefix="spawn") if self.spawners > 1 else None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._new: deque[tuple[Attempt, Process]] = deque()
        self._threads = [threading.Thread(target=self._starter, name="starter", daemon=True),
                         threading.Thread(target=self._reaper, name="reaper", daemon=True)]
        for t in self._threads:
            t.start()

    # --- public ---------------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        """A granted attempt: fetch its artifact, then start it at its instant."""
        self._fetch.submit(self._prepare, attempt)

    def early(self, ready: TaskReady, claim_id: str) -> None:
        """A claim of an attempt due now was made: create its process now, held before its binary, so that when
        the grant comes it is let go with one write (the fork and execs then overlap the claim's trip to the
        scheduler instead of following the grant). Nothing runs before the grant: the binary is exec'd only on
        the go word, which carries the grant's fencing token. An attempt that reads secrets is not created early
        (a secret is resolved only for a granted attempt), nor one fired ahead (it is held once granted)."""
        if ready.env_from or ready.scheduled_for_ms / 1000 - time.time() >= self.hold_ahead_s:
            return
        with self._cond:
            if self._stop.is_set() or claim_id in self._early or self._held >= self.max_held:
                return
            self._early[claim_id] = _Early.QUEUED
            self._held += 1  # its place among the held is kept from now on
        try:
            self._fetch.submit(self._create_early, ready, claim_id)
        except RuntimeError:  # shut down by stop()
            self._drop_early([claim_id])

    def has_early(self) -> bool:
        return bool(self._early)

    def keep_early(self, claims: set[str]) -> None:
        """Discard the processes created early whose claims are no longer live (lost, given up on, or their
        attempt over before it took its process)."""
        with self._cond:
            if not self._early:
                return
            gone = [c for c, e in self._early.items() if e is not _Early.CREATING and c not in claims]
        self._drop_early(gone)

    def end_early(self, attempt: Attempt, reason: str, message: str) -> None:
        """Stop an attempt (timeout, cancel): kill its process tree, or keep it from starting."""
        with self._cond:
            if attempt.ending:
                return
            attempt.ending, attempt.ending_message = reason, message
            proc = attempt.process
            self._sweep = True
            self._cond.notify()
        if proc is not None:
            attempt.killer = threading.Thread(target=proc.kill_tree, args=(self.grace_s,), daemon=True)
            attempt.killer.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            gone = [c for c, e in self._early.items() if e is not _Early.CREATING]
        self._drop_early(gone)
        self._wake()
        self._fetch.shutdown(wait=False, cancel_futures=True)
        if self._spawn is not None:
            self._spawn.shutdown(wait=False)

    def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for running processes to be reaped and reported, and for attempts being ended
        before they started (staged, held or waiting for a slot) to be reported too."""
        deadline = time.monotonic() + timeout_s
        while self._unsettled() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._finish.shutdown(wait=True)

    def _unsettled(self) -> bool:
        with self._cond:
            return bool(self._running or self._sweep or self._starting
                        or any(e[2].ending for e in self._heap) or any(w[3].ending for w in self._waiting))

    # --- fetch ----------------------------------------------------------------------------------

    def _prepare(self, attempt: Attempt) -> None:
        try:
            self.cache.get(attempt.ready.artifact)
        except ArtifactError as err:
            self._ended(Ended(attempt, err.reason, str(err), finished_at_ms=_now_ms()))
            return
        except Exception as exc:  # an unexpected store failure ends the attempt, never the executor
            self._ended(Ended(attempt, FailureReason.ARTIFACT_MISSING, f"artifact fetch failed: {exc}",
                              finished_at_ms=_now_ms()))
            return
        start_at = attempt.ready.scheduled_for_ms / 1000
        early = self._take_early(attempt.grant.claim_id)
        if early is not None:
            attempt.held, attempt.workdir = early, self._workdir(attempt.ready)
        elif start_at - time.time() >= self.hold_ahead_s:
            self._hold(attempt)
        with self._cond:
            heapq.heappush(self._heap, (start_at, next(self._seq), attempt))
            self._sweep = self._sweep or bool(attempt.ending)  # ended while its binary was being fetched
            self._cond.notify()

    def _hold(self, attempt: Attempt) -> None:
        """Create the staged attempt's process now, blocked before its binary: at the instant, one write."""
        with self._cond:
            if self._held >= self.max_held or attempt.ending:
                return
            self._held += 1
        try:
            attempt.workdir = self._workdir(attempt.ready)
            attempt.held = spawn(self.cache.get(attempt.ready.artifact), list(attempt.ready.args),
                                 self._env(attempt, attempt.workdir), attempt.workdir,
                                 attempt.ready.limits, hold=True, isolation=self.isolation)
        except (OSError, ArtifactError, SecretError) as err:  # it is started the usual way at its instant
            log.warning("could not create the process of %s ahead: %s", attempt.key, err)
            self._unhold()

    def _create_early(self, ready: TaskReady, claim_id: str) -> None:
        with self._cond:
            if self._early.get(claim_id) is not _Early.QUEUED:  # its grant came first, or its claim was lost
                return
            self._early[claim_id] = _Early.CREATING
        workdir, proc = self._workdir(ready), None
        try:
            proc = spawn(self.cache.get(ready.artifact), list(ready.args), attempt_env(ready, None, workdir), workdir,
                         ready.limits, hold=True, isolation=self.isolation)
        except Exception as err:  # it is created the usual way once granted
            log.warning("could not create the process of %s#%d at its claim: %s", ready.task_id, ready.attempt, err)
        with self._cond:
            if proc is None:
                del self._early[claim_id]
                self._held -= 1
            else:
                self._early[claim_id] = proc
                self.early_created += 1
            self._cond.notify_all()
        if proc is None and not self.keep_workdirs:
            remove_workdir(workdir)

    def _take_early(self, claim_id: str) -> Process | None:
        """The process created at this claim, if any (waiting for one being created: they share its work dir).
        Taken, it stays counted as held until it is let go; a creation still queued is called off."""
        with self._cond:
            while self._early.get(claim_id) is _Early.CREATING:
                self._cond.wait(0.1)
            taken = self._early.pop(claim_id, None)
            if taken is _Early.QUEUED:
                self._held -= 1
            elif taken is not None:
                self.early_taken += 1
        return taken if isinstance(taken, Process) else None

    def _drop_early(self, claims: list[str]) -> None:
        """Call off or discard what was created early for `claims`, with its work dir (one being created is left
        to the next call)."""
        with self._cond:
            dropped = [self._early.pop(c) for c in claims if self._early.get(c) not in (None, _Early.CREATING)]
            self._held -= len(dropped)
        for proc in dropped:
            if isinstance(proc, Process):
                proc.discard()
                if not self.keep_workdirs:
                    remove_workdir(proc.log_path.parent)

    def _workdir(self, ready: TaskReady) -> Path:
        return self.workroot / f"{ready.task_id}#{ready.attempt}".replace("/", "_")

    def _env(self, attempt: Attempt, workdir: Path) -> dict[str, str]:
        """The process's whole environment, its secrets resolved now (SecretError if one is missing)."""
        return {**attempt_env(attempt.ready, attempt.grant, workdir),
                **resolve(attempt.ready.env_from, self.secrets)}

    def _unhold(self) -> None:
        with self._cond:
            self._held -= 1

    # --- start ----------------------------------------------------------------------------------

    def _starter(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.time()
                if self._sweep:
                    self._sweep = False
                    startable = [e[2] for e in self._heap if e[2].ending]
                    startable += [w[3] for w in self._waiting if w[3].ending]
                    self._heap = [e for e in self._heap if not e[2].ending]
                    self._waiting = [w for w in self._waiting if not w[3].ending]
                    heapq.heapify(self._heap)
                    heapq.heapify(self._waiting)
                else:
                    startable = []
                while self._heap and self._heap[0][0] <= now:
                    start_at, seq, attempt = heapq.heappop(self._heap)
                    attempt.staged = False
                    heapq.heappush(self._waiting, (_RANK.get(attempt.ready.priority, 1), start_at, seq, attempt))
                while self._waiting and self._running < self.slots:
                    attempt = heapq.heappop(self._waiting)[3]
                    if not attempt.ending:
                        self._running += 1
                    startable.append(attempt)
                if not startable:
                    timeout = max(0.0, self._heap[0][0] - now) if self._heap else None
                    self._cond.wait(timeout)
                    continue
                self._starting += len(startable)
            # An attempt past its start-by instant (its occurrence's misfire grace) is not started: the scheduler
            # records its occurrence as missed, with the lateness measured here, where wall time is known.
            wall = _now_ms()
            for attempt in startable:
                why = too_late(attempt.ready, wall)
                if why and not attempt.ending:
                    attempt.ending, attempt.ending_message = FailureReason.TOO_LATE, why
                    self._release()
            # Held processes first: a burst due at one instant is let go with one write each, before any of
            # the reporting that follows a start.
            t0 = time.monotonic()
            released = self._let_go(startable)
            if released and log.isEnabledFor(logging.DEBUG):
                first = min(a.ready.scheduled_for_ms for a in startable if id(a) in released)
                log.debug("let %d held processes go in %.1f ms, from %.1f ms after the first one's instant",
                          len(released), (time.monotonic() - t0) * 1000, wall - first)
            self._start_all(startable, released)

    def _let_go(self, startable: list[Attempt]) -> dict[int, Process | None]:
        """Let the held processes among `startable` go, in one loop that keeps the GIL: at CPython's default
        switch interval (5 ms) any other thread of the executor that wakes takes it in turn, and on cores crowded
        by the processes just let go, a thread holding it can wait long for a CPU while this loop waits for it."""
        held = [a for a in startable if a.held is not None and not a.ending]
        released: dict[int, Process | None] = {}
        if not held:
            return released
        interval = sys.getswitchinterval()
        sys.setswitchinterval(max(interval, LET_GO_SWITCH_S))
        taken = 0  # held processes taken off their attempts: no longer counted as held, whatever happens next
        try:
            for attempt in held:
                proc, attempt.held = attempt.held, None
                taken += 1
                assert proc is not None
                released[id(attempt)] = self._release_held(proc, attempt)
        finally:
            sys.setswitchinterval(interval)
            with self._cond:
                self._held -= taken
        return released

    def _start_all(self, startable: list[Attempt], released: dict[int, Process | None]) -> None:
        """Finish starting the released attempts and end the ending ones here; hand the creation of new processes
        to the spawn threads (a fork and exec waits for a CPU, so several are created at once)."""
        for attempt in startable:
            if id(attempt) in released or attempt.ending or self._spawn is None:
                self._started(attempt, released.get(id(attempt)))
                continue
            try:
                self._spawn.submit(self._started, attempt)
            except RuntimeError:  # shut down by stop()
                self._started(attempt)

    def _started(self, attempt: Attempt, released: Process | None = None) -> None:
        try:
            self._start(attempt, released)
        except Exception:  # a bug: not to pass unseen in a pool thread, nor to keep a slot for good
            log.exception("starting %s failed", attempt.key)
            if attempt.process is None and not attempt.ending:
                self._release()
                self._ended(Ended(attempt, FailureReason.SPAWN_ERROR, "the executor failed to start it",
                                  finished_at_ms=_now_ms()))
        finally:
            with self._cond:
                self._starting -= 1

    def _start(self, attempt: Attempt, released: Process | None = None) -> None:
        """Start `attempt` (or finish starting it: `released` is its held process, already let go)."""
        held, attempt.held = attempt.held, None
        if held is not None:
            self._unhold()
        if attempt.ending and released is None:  # cancelled while staged or waiting for a slot
            if held is not None:
                held.discard()
            self._ended(Ended(attempt, attempt.ending, attempt.ending_message, finished_at_ms=_now_ms()))
            return
        workdir = self._workdir(attempt.ready)
        attempt.workdir = workdir
        try:
            proc = released or (self._release_held(held, attempt) if held is not None else None)
            if proc is None:
                binary = self.cache.get(attempt.ready.artifact)
                workdir.mkdir(parents=True, exist_ok=True)
                proc = spawn(binary, list(attempt.ready.args), self._env(attempt, workdir),
                             workdir, attempt.ready.limits, isolation=self.isolation)
        except (OSError, ArtifactError, SecretError) as err:
            self._release()
            reason = err.reason if isinstance(err, ArtifactError | SecretError) else FailureReason.SPAWN_ERROR
            self._ended(Ended(attempt, reason, f"cannot start {attempt.ready.artifact.name}: {err}",
                              finished_at_ms=_now_ms()))
            return
        with self._cond:
            attempt.process = proc
            cancelled = attempt.ending
        self.on_started(attempt, proc)
        if cancelled:  # a cancel arrived while the process was being created
            attempt.ending = ""
            self.end_early(attempt, cancelled, attempt.ending_message)
        self._new.append((attempt, proc))
        self._wake()

    @staticmethod
    def _release_held(held: Process, attempt: Attempt) -> Process | None:
        try:
            held.release(attempt.grant.fencing_token)
            return held
        except OSError as err:  # it died while held (killed from outside): start it the usual way
            log.warning("a held process was gone at its instant (%s); starting a new one", err)
            held.discard()
            return None

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify()

    # --- reap ------------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _reaper(self) -> None:
        while not self._stop.is_set() or self._running:
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                attempt, proc = key.data
                self._selector.unregister(key.fd)
                os.close(key.fd)
                code = proc.popen.wait()
                finished = _now_ms()
                self._release()
                self._finish.submit(self._finished, attempt, proc, code, finished)
            while self._new:
                attempt, proc = self._new.popleft()
                self._selector.register(os.pidfd_open(proc.pid), selectors.EVENT_READ, (attempt, proc))

    def _finished(self, attempt: Attempt, proc: Process, code: int, finished: int) -> None:
        if attempt.killer is not None:
            attempt.killer.join()
        proc.retire()
        self._ended(Ended(attempt, attempt.ending, attempt.ending_message, code, proc.started_at_ms, finished,
                          proc.log_path))

    def _ended(self, ended: Ended) -> None:
        try:
            self.on_ended(ended)
        except Exception:  # a failing report hook must not kill the pool
            log.exception("reporting the end of %s failed", ended.attempt.key)
        finally:
            workdir = ended.attempt.workdir
            if workdir is not None and not self.keep_workdirs:
                remove_workdir(workdir)


def remove_workdir(workdir: Path) -> None:
    """Remove an attempt's work dir. Most hold only what the sandbox made (its log and an empty tmp): three calls.
    Anything else the job left is removed by `shutil.rmtree`, which walks the tree by file descriptors and cost
    about a sixth of the executor's samples in the throughput bench (py-spy) when every attempt went through it."""
    try:
        os.unlink(workdir / "output.log")
        os.rmdir(workdir / "tmp")
        os.rmdir(workdir)
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


def too_late(ready: TaskReady, wall_ms: int) -> str:
    """Why `ready` must not start at `wall_ms` (past its start-by instant), or "" if it may."""
    if ready.start_by_ms is None or wall_ms <= ready.start_by_ms:
        return ""
    late = (wall_ms - ready.scheduled_for_ms) / 1000
    grace = (ready.start_by_ms - ready.scheduled_for_ms) / 1000
    return f"would have started {late:.1f}s after its instant; its misfire grace is {grace:g}s"


def _now_ms() -> int:
    return int(time.time() * 1000)
