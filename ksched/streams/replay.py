"""Audit replay: rebuild the scheduler's state from the inbox with the same shell and reducers the agents use,
check the invariants, and compare the decisions it reproduces with the recorded decision log.

Invariants (checked on the recorded log and reports, so a tampered or buggy history is caught):
  * every due occurrence of a cron job was fired, skipped or recorded missed, and only once;
  * each attempt was granted to at most one claim;
  * at most one success per task (per rerun of it);
  * no process ran without a grant: every TaskStarted matches a ClaimGranted with its fencing token.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ksched.config import Settings
from ksched.errors import CodecError
from ksched.reader import Record
from ksched.schemas.codec import Codec, default_codec
from ksched.schemas.events import (
    AttemptEnded,
    ClaimGranted,
    JobAccepted,
    OccurrenceMissed,
    OccurrenceSkipped,
    Outcome,
    RerunTasks,
    RunTriggered,
    TaskStarted,
    Trigger,
)
from ksched.schemas.records import to_data

from .core.model import JobState, Params
from .core.schedule import fire_times
from .jobstore import JobStore
from .shell import InboxShell, decision_params


@dataclass
class MemoryStore:
    data: dict[bytes, bytes] = field(default_factory=dict)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted(self.data.items())


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    events: list[str]


@dataclass
class ReplayResult:
    jobs: dict[str, JobState]
    decisions: list[Any]
    violations: list[Violation]
    missing_from_log: list[str]
    not_reproduced: list[str]
    records: int
    pending_records: int = 0
    pending_decisions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing_from_log and not self.not_reproduced

    def digest(self) -> str:
        """A fingerprint of the rebuilt state, equal for equal histories."""
        blob = json.dumps({k: to_data(v) for k, v in sorted(self.jobs.items())}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def replay(settings: Settings, inbox: Iterable[Record], recorded: Iterable[Record] | None = None,
           params: Params | None = None, until_ms: int | None = None, codec: Codec | None = None,
           decided: dict[int, int] | None = None) -> ReplayResult:
    """Fold the inbox (partition by partition, in offset order) through the shell; check what happened.

    `decided` maps an inbox partition to the workers' committed offset on it, when known. Records at or after
    it may not have been decided yet (workers stopped or behind), so the decisions replayed from them are not
    required to be in the log yet; they are counted as pending instead.
    """
    codec = codec or default_codec()
    shell = InboxShell(settings, codec, params or decision_params(settings))
    stores: dict[int, MemoryStore] = collections.defaultdict(MemoryStore)
    decisions: list[Any] = []
    reports: list[Any] = []
    settled_ids: set[str] = set()
    pending_ids: set[str] = set()
    settled_stores: dict[int, MemoryStore] = {}  # each partition's state as of the committed offset
    count = pending_records = 0
    events_topic = settings.topic("events")
    for rec in sorted(inbox, key=lambda r: (r.partition, r.offset)):
        if until_ms is not None and rec.timestamp_ms > until_ms:
            continue
        count += 1
        is_pending = decided is not None and rec.offset >= decided.get(rec.partition, 0)
        if is_pending and rec.partition not in settled_stores:
            settled_stores[rec.partition] = MemoryStore(dict(stores[rec.partition].data))
        produced = shell.process(stores[rec.partition], rec.partition, rec.offset, rec.key, rec.value)
        made = [d for d in (_decode(codec, m.value) for m in produced if m.topic == events_topic) if d is not None]
        decisions += made
        pending_records += is_pending
        (pending_ids if is_pending else settled_ids).update(d.event_id for d in made)
        event = _decode(codec, rec.value)
        if event is not None and not is_pending:
            # Only reports the log can be held to: a report past the committed offsets may answer a decision
            # (a grant) that was made after the log was read.
            reports.append(event)
    jobs = _states(stores)
    log = [d for d in (_decode(codec, r.value) for r in recorded or []) if d is not None]
    if until_ms is not None:
        log = [d for d in log if getattr(d, "at_ms", 0) <= until_ms]
    checked = log if recorded is not None else decisions
    settled_jobs = _states({**stores, **settled_stores}) if recorded is not None else jobs
    violations = check_invariants(checked, reports, settled_jobs)
    replayed_ids = settled_ids | pending_ids
    logged_ids = {d.event_id for d in log}
    pending = pending_ids - settled_ids - logged_ids
    missing = sorted(settled_ids - logged_ids) if recorded is not None else []
    extra = sorted(logged_ids - replayed_ids) if recorded is not None else []
    return ReplayResult(jobs, decisions, violations, missing, extra, count, pending_records, len(pending))


def _decode(codec: Codec, value: bytes | None) -> Any | None:
    if value is None:
        return None
    try:
        return codec.decode(value)
    except CodecError:
        return None


def _states(stores: dict[int, MemoryStore]) -> dict[str, JobState]:
    return {rec.state.job_id: rec.state for store in stores.values() for rec in JobStore().scan(store)}


def check_invariants(decisions: list[Any], reports: list[Any], jobs: dict[str, JobState]) -> list[Violation]:
    return [*_occurrences_once(decisions, jobs), *_one_grant_per_attempt(decisions),
            *_one_success_per_task(decisions, reports), *_no_run_without_grant(decisions, reports)]


def _distinct(decisions: Iterable[Any], cls: type) -> list[Any]:
    seen: dict[str, Any] = {}
    for d in decisions:
        if isinstance(d, cls):
            seen.setdefault(getattr(d, "event_id"), d)  # noqa: B009 - every decision class has one
    return list(seen.values())


def _occurrences_once(decisions: list[Any], jobs: dict[str, JobState]) -> Iterator[Violation]:
    decided: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for cls in (RunTriggered, OccurrenceMissed, OccurrenceSkipped):
        d: Any
        for d in _distinct(decisions, cls):
            if isinstance(d, RunTriggered) and d.trigger not in (Trigger.CRON, Trigger.CATCHUP):
                continue
            decided[(d.job_id, d.scheduled_for_ms)].append(d.event_id)
    for (job, t), ids in sorted(decided.items()):
        if len(ids) > 1:
            yield Violation("occurrence decided once", f"{job} at {t} was decided {len(ids)} times", ids)
    accepted: dict[str, list[JobAccepted]] = collections.defaultdict(list)
    for d in _distinct(decisions, JobAccepted):
        accepted[d.job_id].append(d)
    for job_id, state in jobs.items():
        if not accepted.get(job_id) or not state.spec.schedule.cron or state.cursor_ms is None:
            continue
        first = min(accepted[job_id], key=lambda a: a.at_ms)
        expected: list[int] = []
        for t in fire_times(first.job.schedule, job_id, first.at_ms):
            if t > state.cursor_ms or len(expected) > 100_000:
                break
            expected.append(t)
        missing = [t for t in expected if (job_id, t) not in decided]
        if missing and first.job.schedule == state.spec.schedule:
            yield Violation("every due occurrence fired or recorded missed", f"{job_id}: {len(missing)} due "
                            f"occurrences have no decision (first {missing[0]})", [])


def _one_grant_per_attempt(decisions: list[Any]) -> Iterator[Violation]:
    grants: dict[tuple[str, int], set[tuple[str, int]]] = collections.defaultdict(set)
    ids: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for d in decisions:
        if isinstance(d, ClaimGranted):
            grants[(d.task_id, d.attempt)].add((d.claim_id, d.fencing_token))
            ids[(d.task_id, d.attempt)].append(d.event_id)
    for key, claims in sorted(grants.items()):
        if len(claims) > 1:
            yield Violation("each attempt claimed at most once", f"{key[0]} attempt {key[1]} granted to "
                            f"{len(claims)} claims", sorted(set(ids[key])))


def _one_success_per_task(decisions: list[Any], reports: list[Any]) -> Iterator[Violation]:
    reruns = collections.Counter(r.run_id for r in reports if isinstance(r, RerunTasks))
    successes: dict[str, list[str]] = collections.defaultdict(list)
    for d in decisions:
        if (isinstance(d, AttemptEnded) and d.outcome == Outcome.SUCCEEDED
                and d.event_id not in successes[d.task_id]):
            successes[d.task_id].append(d.event_id)
    for task, ids in sorted(successes.items()):
        allowed = 1 + reruns[task.rsplit("/", 1)[0]]
        if len(ids) > allowed:
            yield Violation("at most one success per task", f"{task} succeeded {len(ids)} times", ids)


def _no_run_without_grant(decisions: list[Any], reports: list[Any]) -> Iterator[Violation]:
    granted = {(d.task_id, d.attempt, d.fencing_token) for d in decisions if isinstance(d, ClaimGranted)}
    for r in reports:
        if isinstance(r, TaskStarted) and (r.task_id, r.attempt, r.fencing_token) not in granted:
            yield Violation("no run without a claim", f"{r.task_id} attempt {r.attempt} started with fencing token "
                            f"{r.fencing_token}, which was never granted", [f"TaskStarted {r.task_id}#{r.attempt}"])
