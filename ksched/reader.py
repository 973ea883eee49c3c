"""Reading state back for the CLI: from the job's owner through a streams worker's API (`KSCHED_API_URL`), which
answers from its table, or from the state topics of one job's partition, folded to latest."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KMessage

from ksched import kafka
from ksched.config import Settings
from ksched.errors import CodecError, KschedError
from ksched.partitioning import partition_for
from ksched.schemas.codec import HEADER_LEN, Codec, default_codec
from ksched.schemas.events import ClaimTasks, JobDefinition, JobSpec, RunView, SubmitJobs, TaskView, schema_name
from ksched.schemas.records import from_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One record of a topic as it was stored: where it was, and its bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


#: Errors that say a partition's leadership is moving, not that the request is wrong.
_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
           KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
           KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
           KafkaError.COORDINATOR_LOAD_IN_PROGRESS}


def _watermarks(c: Any, tp: TopicPartition, timeout_s: float) -> Any:
    """The partition's offsets, asking again while the cluster answers with a retriable error (a leader that
    just moved, a node that is restarting) until `timeout_s`."""
    return _asking_again(lambda left: c.get_watermark_offsets(tp, timeout=left), timeout_s)


def _committed(c: Any, tps: list[TopicPartition], timeout_s: float) -> Any:
    """A group's committed offsets, asking again while its coordinator moves (a node restarting)."""
    return _asking_again(lambda left: c.committed(tps, timeout=left), timeout_s)


def _asking_again(call: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call(max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in _MOVING) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def read_partition(settings: Settings, topic: str, partition: int, timeout_s: float = 15.0,
                   start: int = OFFSET_BEGINNING, until: int | None = None) -> Iterator[KMessage]:
    """Every record of one partition, from `start` up to the end it had when the read began (or `until`, if
    that is earlier)."""
    c = kafka.consumer(settings, group=f"{settings.prefix}-reader-{uuid.uuid4().hex[:8]}")
    try:
        marks = _watermarks(c, TopicPartition(topic, partition), timeout_s)
        low, high = (int(marks[0] or 0), int(marks[1] or 0)) if marks else (0, 0)
        if until is not None:
            high = min(high, until)
        if high <= (low if start == OFFSET_BEGINNING else max(low, start)):
            return
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                pos = int(c.position([TopicPartition(topic, partition)])[0].offset or 0)
                if pos >= high:
                    return
                continue
            if m.error() is not None:
                continue
            yield m
            if int(m.offset() or 0) >= high - 1:
                return
        raise KschedError(f"timed out reading {topic}[{partition}]")
    finally:
        c.close()


@dataclass
class JobStatus:
    job_id: str
    definition: JobDefinition | None = None
    deleted: bool = False
    runs: dict[str, RunView] = field(default_factory=dict)
    tasks: dict[str, dict[str, TaskView]] = field(default_factory=dict)
    #: Read from the owner's table: finished runs older than those it holds exist (in the views).
    older_runs: bool = False

    @property
    def known(self) -> bool:
        return self.definition is not None or self.deleted or bool(self.runs)

    def ordered_runs(self) -> list[RunView]:
        return sorted(self.runs.values(), key=lambda r: (r.scheduled_for_ms, r.created_at_ms, r.run_id))


def _decode(codec: Codec, m: KMessage) -> object | None:
    if m.value() is None:
        return None
    try:
        decoded: object = codec.decode(m.value())
        return decoded
    except CodecError:
        return None


def job_status(settings: Settings, job_id: str, codec: Codec | None = None) -> JobStatus:
    codec = codec or default_codec()
    p = partition_for(job_id, settings.partitions)
    status = JobStatus(job_id)
    key = job_id.encode()
    for m in read_partition(settings, settings.topic("jobs"), p):
        if m.key() != key:
            continue
        rec = _decode(codec, m)
        status.definition = rec if isinstance(rec, JobDefinition) else None
        status.deleted = m.value() is None
    prefix = job_id.encode() + b"@"
    for m in read_partition(settings, settings.topic("runs"), p):
        rec = _decode(codec, m)
        if isinstance(rec, RunView) and rec.job_id == job_id:
            status.runs[rec.run_id] = rec
        elif m.value() is None and (m.key() or b"").startswith(prefix):  # a retired run's tombstone
            status.runs.pop((m.key() or b"").decode(errors="replace"), None)
    for m in read_partition(settings, settings.topic("tasks"), p):
        rec = _decode(codec, m)
        if isinstance(rec, TaskView) and rec.job_id == job_id:
            status.tasks.setdefault(rec.run_id, {})[rec.name] = rec
        elif m.value() is None and (m.key() or b"").startswith(prefix):
            run_id, _, name = (m.key() or b"").decode(errors="replace").rpartition("/")
            status.tasks.get(run_id, {}).pop(name, None)
    status.tasks = {r: t for r, t in status.tasks.items() if t}
    return status


def find_run(settings: Settings, run_id: str) -> tuple[RunView | None, dict[str, TaskView]]:
    job_id = run_id.split("@", 1)[0]
    if settings.api_url:
        try:
            found = api_get(settings, f"/api/runs/{urllib.parse.quote(run_id, safe='@')}")
        except ApiUnavailable as exc:
            log.warning("%s; reading the views instead", exc)
        else:
            if found is None:
                return None, {}
            run, tasks = _run_from_api(found)
            return run, {t.name: t for t in tasks}
    st = job_status(settings, job_id)
    return st.runs.get(run_id), st.tasks.get(run_id, {})


class ApiUnavailable(KschedError):
    """No streams worker answered at KSCHED_API_URL (or the job's owner did not, for now)."""


def api_get(settings: Settings, path: str, timeout_s: float = 10.0) -> Any:
    """GET a path of the streams workers' API: its JSON, or None for a 404. A 503 (partitions moving) is asked
    again until `timeout_s`."""
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(settings.api_url + path, headers=headers)
            with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code != 503 or time.monotonic() >= deadline:
                raise ApiUnavailable(f"{settings.api_url}{path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiUnavailable(f"no streams worker answers at {settings.api_url} ({exc})") from None
        time.sleep(0.2)


def _run_from_api(data: dict[str, Any]) -> tuple[RunView, list[TaskView]]:
    fields = {k: v for k, v in data.items() if k not in ("tasks", "served_by", "dependencies")}
    return from_data(RunView, fields), [from_data(TaskView, t) for t in data.get("tasks", [])]


def api_job_status(settings: Settings, job_id: str) -> JobStatus:
    """The job as its owner's table holds it (its active runs and latest finished ones), through the API: a
    cost that does not grow with the job's history. `older_runs` says whether older runs have views."""
    data = api_get(settings, f"/api/jobs/{urllib.parse.quote(job_id)}")
    status = JobStatus(job_id)
    if data is None:
        return status
    status.deleted = bool(data["deleted"])
    if not status.deleted:
        status.definition = JobDefinition(job_id, data["revision"], from_data(JobSpec, data["definition"]),
                                          data["paused"], data.get("updated_at_ms", 0))
    for r in data.get("runs", []):
        run, tasks = _run_from_api(r)
        status.runs[run.run_id] = run
        status.tasks[run.run_id] = {t.name: t for t in tasks}
    status.older_runs = bool(data.get("older_runs"))
    return status


def current_status(settings: Settings, job_id: str) -> JobStatus:
    """`ksched status`: from the owner's table through the API when KSCHED_API_URL is set (falling back to the
    views if no worker answers there), else from the views."""
    if settings.api_url:
        try:
            return api_job_status(settings, job_id)
        except ApiUnavailable as exc:
            log.warning("%s; reading the views instead", exc)
    return job_status(settings, job_id)


def topic_records(settings: Settings, topic: str, timeout_s: float = 60.0,
                  until: dict[int, int] | None = None) -> Iterator[Record]:
    """Every record of every partition of `topic` (up to the end each had when read, or the offset `until`
    gives it), as replay records."""
    c = kafka.consumer(settings, group=f"{settings.prefix}-reader-{uuid.uuid4().hex[:8]}")
    try:
        md = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
        partitions = sorted(md.partitions) if md is not None and md.error is None else []
    finally:
        c.close()
    for p in partitions:
        for m in read_partition(settings, topic, p, timeout_s=timeout_s,
                                until=None if until is None else until.get(p, 0)):
            yield Record(topic, p, int(m.offset() or 0), int(m.timestamp()[1]), m.key(), m.value())


def end_offsets(settings: Settings, topic: str, timeout_s: float = 15.0) -> dict[int, int]:
    """Per partition of `topic`: the offset the next record will have (as a read_committed reader sees it)."""
    return {p: end for p, (_, end) in group_progress(settings, topic, f"{settings.prefix}-reader",
                                                       timeout_s).items()}


def group_progress(settings: Settings, topic: str, group: str,
                   timeout_s: float = 15.0) -> dict[int, tuple[int, int]]:
    """Per partition of `topic`: (the offset `group` has committed, 0 if none; the partition's end offset).

    Reads with OffsetFetch and ListOffsets only: the reader never joins the group, so its members are not disturbed.
    """
    c = kafka.consumer(settings, group=group)
    try:
        md = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
        partitions = sorted(md.partitions) if md is not None and md.error is None else []
        if not partitions:
            return {}
        found = _committed(c, [TopicPartition(topic, p) for p in partitions], timeout_s)
        return {tp.partition: (max(int(tp.offset), 0),
                               int(_watermarks(c, TopicPartition(topic, tp.partition), timeout_s)[1]))
                for tp in found}
    finally:
        c.close()


@dataclass
class HistoryPage:
    """Records of one job's history in time order, and where the next page starts (None: this was the last)."""

    records: list[tuple[int, str, Any]]
    next_since_ms: int | None = None


def offset_for_time(settings: Settings, topic: str, partition: int, at_ms: int, timeout_s: float = 15.0) -> int:
    """The first offset of a partition whose record timestamp is `at_ms` or later (its end if none)."""
    c = kafka.consumer(settings, group=f"{settings.prefix}-reader-{uuid.uuid4().hex[:8]}")
    try:
        (found,) = c.offsets_for_times([TopicPartition(topic, partition, at_ms)], timeout=timeout_s)
        if found.offset >= 0:
            return int(found.offset)
        return int(_watermarks(c, TopicPartition(topic, partition), timeout_s)[1])
    finally:
        c.close()


def job_history(settings: Settings, job_id: str, codec: Codec | None = None, since_ms: int | None = None,
                until_ms: int | None = None, limit: int = 0, ticks: bool = False) -> HistoryPage:
    """The job's inbox records and decisions, as (timestamp, topic, event), in time order (the records'
    timestamps). With `since_ms`, reading starts at that time (Kafka's time index: the cost follows the page,
    not the history before it); with `limit`, a page holds at most that many (more only when more share one
    millisecond) and says where the next begins. `ticks`: include the partition's ticks."""
    codec = codec or default_codec()
    p = partition_for(job_id, settings.partitions)
    key = job_id.encode()
    # Batch records hold other jobs' submissions and claims too.
    bulk_fps = {codec.prefix(schema_name(cls))[2:] for cls in (SubmitJobs, ClaimTasks)}
    out: list[tuple[int, str, Any]] = []
    for topic in (settings.topic("inbox"), settings.topic("events")):
        start = OFFSET_BEGINNING if since_ms is None else offset_for_time(settings, topic, p, since_ms)
        taken = 0
        for m in read_partition(settings, topic, p, start=start):
            at = int(m.timestamp()[1])
            if until_ms is not None and at > until_ms:
                break
            value = m.value()
            if value is None or (since_ms is not None and at < since_ms):
                continue
            bulk = value[2:HEADER_LEN] in bulk_fps
            if m.key() != key and not (ticks and m.key() is None) and not bulk:
                continue
            rec = _decode(codec, m)
            # A batch is keyed by its first job: the job's own submissions and claims, if any.
            recs: Sequence[object]
            if isinstance(rec, SubmitJobs):
                recs = [c for c in rec.submissions if c.job.job_id == job_id][:1]
            elif isinstance(rec, ClaimTasks):
                recs = [c for c in rec.claims if c.job_id == job_id]
            else:
                recs = [rec] if rec is not None else []
            if not recs or (m.key() is None and type(rec).__name__ != "Tick"):
                continue
            out += [(at, topic, r) for r in recs]
            taken += 1
            if limit and taken > limit:  # this topic's next page starts after here: enough for the merge
                break
    out.sort(key=lambda r: (r[0], r[1]))
    if not limit or len(out) <= limit:
        return HistoryPage(out)
    boundary = out[limit][0]
    page = [r for r in out if r[0] < boundary] or [r for r in out if r[0] == boundary]
    rest = [r[0] for r in out if r[0] > page[-1][0]]
    return HistoryPage(page, rest[0] if rest else None)
