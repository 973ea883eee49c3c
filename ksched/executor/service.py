"""The executor: claims ready attempts, runs them once their claim has won, and reports what happened.

This module wires the parts together and owns their threads, the start and the orderly stop:
  * main       - the claim loop (`claims`): consumes the ready topics, claims what fits the free slots and
                 staging places in one Kafka transaction with the consumed offsets and the group metadata;
  * control    - this executor's grants, rejections and cancel requests (`control`); a grant hands the
                 attempt to the runtime (`runtime`: fetch, stage until its instant, start, reap);
  * supervisor - heartbeats, per-attempt timeouts, renewals of and giving up on unanswered claims
                 (`supervision`).
They share what was claimed and taken on through the `ledger`, and report through `reporting`.
The scheduler decides which claim wins; an attempt's process starts only after its grant arrives.
A stopping executor waits briefly for its open claims' answers, then hands back every attempt it holds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksched.artifacts import ArtifactStore
from ksched.config import Settings
from ksched.schemas.events import FailureReason

from .cache import ArtifactCache
from .claims import Claimer
from .control import Control
from .ledger import EARLY_MIN_WAITING, Ledger, Stats, free_capacity
from .reporting import Reporter
from .runtime import Runtime
from .sandbox import Isolation, require_prlimit
from .secrets import DirectorySecrets, SecretStore, open_secrets
from .supervision import Supervisor

GRANT_WAIT_ON_STOP_S = 3.0  # how long a stopping executor waits for the answers to its open claims

log = logging.getLogger(__name__)


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class ExecutorConfig:
    #: Processes this executor runs at once.
    slots: int = 4
    #: Attempts fired ahead of their instant that it may hold (claimed, binary fetched) until they start.
    staging: int = 1024
    #: Claims of attempts due now beyond the free slots (-1: as many as `slots`), so slots do not sit idle
    #: while a claim waits for the scheduler's answer.
    prefetch: int = -1
    grace_s: float = 5.0
    #: How long a claim may wait for the scheduler's answer before its slot is given back (a grant that comes
    #: later is handed back unstarted, as CLAIM_ABANDONED).
    claim_timeout_s: float = 30.0
    max_artifact_bytes: int = 512 * 1024 * 1024
    log_limit_bytes: int = 1024 * 1024
    #: Whether a completion may offer its freed slot to the task it makes ready (`supervision`): a DAG's next task
    #: is then granted straight to this executor, without the ready topic and a claim.
    offers: bool = True
    #: Claims waiting for their answers from which an attempt due now gets its process created, held before its
    #: binary, as soon as its claim is made: the grant then lets it go with one write (`runtime.Runtime.early`).
    #: 0: every claim; -1: never.
    early_from: int = EARLY_MIN_WAITING
    #: The pool of executors this one belongs to: it takes only tasks labelled `pool: <name>` ("": unlabelled).
    pool: str = ""
    workdir: Path | None = None
    keep_workdirs: bool = False
    #: Jobs run contained (their own PID namespace, unprivileged uids from this base when the executor is root,
    #: the executor's files hidden). False: as the executor's own user, uncontained: trusted jobs only.
    isolated: bool = True
    job_uid_base: int = 200_000
    #: Host directories jobs see read-write at the same path (data they share, a ledger).
    shared: tuple[Path, ...] = ()
    #: The secret store `env_from` references resolve in: a directory or s3://bucket/prefix ("": none).
    secrets: str = ""


class Executor:
    def __init__(self, settings: Settings, store: ArtifactStore, config: ExecutorConfig | None = None,
                 executor_id: str | None = None) -> None:
        self.settings = settings
        self.config = config or ExecutorConfig()
        self.id = executor_id or new_executor_id()
        root = self.config.workdir or settings.home / "executor" / self.id
        self.workroot = root / "runs"
        self.cache = ArtifactCache(store, root / "cache", self.config.max_artifact_bytes)
        self.store = store
        self.stats = Stats()
        self.ledger = Ledger()
        self._stop = threading.Event()  # stop claiming
        self._closed = threading.Event()  # stop listening for answers too (set last, when shutting down)
        self.reporter = Reporter(settings, self.id, store, self.config.log_limit_bytes)
        self.claimer = Claimer(settings, self.id, self.config.pool, self.ledger, self.stats, self.capacity,
                               backlog_limit=max(2, self.config.slots, self.config.staging))
        self.control = Control(settings, self.id, self.ledger, self.stats, self.reporter)
        self.supervisor = Supervisor(self.ledger, self.stats, self.reporter, heartbeat_s=settings.heartbeat_s,
                                     lease_s=settings.lease_s, claim_timeout_s=self.config.claim_timeout_s,
                                     slots=self.config.slots if self.config.offers else 0, pool=self.config.pool)

    def stop(self) -> None:
        self._stop.set()

    def _isolation(self, secrets: SecretStore | None) -> Isolation | None:
        if not self.config.isolated:
            log.warning("jobs run uncontained, as %s", "root" if os.geteuid() == 0 else "this executor's user")
            return None
        root = self.workroot.parent
        secret_dir = [secrets.root] if isinstance(secrets, DirectorySecrets) else []
        hidden = tuple(dict.fromkeys(p.resolve() for p in (self.settings.home, root, *secret_dir)))
        # Up to `slots` running and 1,000 held at once, each with its own uid.
        isolation = Isolation.default(hidden, self.config.slots + 1000 + 8, self.config.job_uid_base,
                                      shared=tuple(p.resolve() for p in self.config.shared))
        if isolation.namespaces or isolation.uids is not None:  # the limits are set inside, by the program
            require_prlimit()
        return isolation

    def capacity(self) -> tuple[int, int]:
        """(claims of attempts due now it may still make, places for attempts staged ahead of their instant)."""
        return free_capacity(self.config.slots, self.config.prefetch, self.config.staging, *self.ledger.load())

    def run(self) -> None:
        secrets = open_secrets(self.config.secrets, self.settings.s3_endpoint_url)
        self.runtime = Runtime(self.config.slots, self.cache, self.workroot, self.supervisor.on_started,
                               self.supervisor.on_ended, grace_s=self.config.grace_s,
                               keep_workdirs=self.config.keep_workdirs, isolation=self._isolation(secrets),
                               secrets=secrets)
        self.claimer.on_claimed = lambda p: self.runtime.early(p.ready, p.claim_id)
        self.claimer.early_from = self.config.early_from
        self.claimer.init_transactions()
        self.control.assign()
        self._control_thread = self._spawn_thread(self.control.run, "control", self.runtime, self._closed)
        self._spawn_thread(self.supervisor.run, "supervisor", self.runtime, self._stop)
        self.claimer.subscribe()
        log.info("executor %s up with %d slots", self.id, self.config.slots)
        try:
            while not self._stop.is_set():
                self.claimer.step()
        finally:
            self._shutdown()

    def _spawn_thread(self, target: Any, name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"{name}-{self.id}", daemon=True)
        t.start()
        return t

    def _shutdown(self) -> None:
        # Let the answers to open claims arrive, so granted attempts are handed back rather than left to a lease.
        deadline = time.monotonic() + GRANT_WAIT_ON_STOP_S
        while time.monotonic() < deadline and self.ledger.waiting():
            time.sleep(0.02)
        # Handed back: the scheduler re-offers them (unstarted ones do not use up a retry).
        for a in self.ledger.drain():
            self.runtime.end_early(a, FailureReason.EXECUTOR_STOPPED, f"executor {self.id} is shutting down")
        self.runtime.drain(self.config.grace_s + 2)
        self.runtime.stop()
        self.stats.early, self.stats.early_taken = self.runtime.early_created, self.runtime.early_taken
        self._closed.set()
        self._control_thread.join(5)
        self.claimer.close()
        self.control.close()
        self.reporter.flush(10)
