"""Every topic ksched uses: its key, partitions and cleanup policy, created idempotently at start-up.

The history that audit replay needs (the inbox and the decision log) is never compacted: it has
time-based retention, infinite by default. State topics are compacted and keyed by entity id.
The inbox, the decision log, the state topics and the streams app's changelog share one partition
count, so one partition owns everything about a job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ksched.config import Settings
from ksched.errors import ConfigError
from ksched.kafka import client_config
from ksched.schemas.events import POOL_LABEL as POOL_LABEL  # the label that routes a task to a pool

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: The largest job record (state and outbox) the changelog takes; a 2,000-task DAG run fits, compressed.
MAX_STATE_BYTES = 16 * 1024 * 1024
#: The largest inbox record ksched takes (the inbox topic's `max.message.bytes`, so the broker refuses a larger
#: one at produce time). A larger record that reaches the agent anyway (a topic created with other settings)
#: is dead-lettered, not decided.
MAX_RECORD_BYTES = 1024 * 1024
#: The largest record ksched itself writes to the decision log, views, ready and dead-letter topics: a decision
#: or view holds at most one inbox record's content (a job's spec) with a little more around it, and a dead
#: letter one original record.
MAX_OUTPUT_BYTES = 4 * MAX_RECORD_BYTES


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    doc: str
    config: dict[str, str] = field(default_factory=dict)
    #: Co-partitioned with the inbox: its partition count must equal the inbox's.
    copartitioned: bool = False




def ready_topic(settings: Settings, priority: str, pool: str = "") -> str:
    """The ready topic of a priority: `<prefix>.ready.<priority>`, or `<prefix>.ready.<pool>.<priority>`."""
    return settings.topic(f"ready.{pool}.{priority}" if pool else f"ready.{priority}")


def pool_topic_specs(s: Settings, pool: str) -> list[TopicSpec]:
    where = f" in executor pool {pool}" if pool else ""
    return [TopicSpec(ready_topic(s, prio, pool), s.ready_partitions, "task id",
                      f"attempts ready to run at priority {prio}{where}",
                      {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
                       "max.message.bytes": str(MAX_OUTPUT_BYTES)})
            for prio in ("high", "normal", "low")]


def submit_topic(settings: Settings) -> str:
    """Where clients write commands: the commands topic on a secured cluster (so ACLs can tell submitters from
    executors, whose reports go to the inbox), the inbox itself on an open one (one hop less)."""
    return settings.topic("commands") if settings.kafka else settings.topic("inbox")


def pools_in(settings: Settings, topic_names: Iterable[str]) -> set[str]:
    """The executor pools that have ready topics among `topic_names` ("" is the default pool, always in)."""
    prefix = settings.topic("ready.")
    return {""} | {name[len(prefix):].rsplit(".", 1)[0] for name in topic_names
                   if name.startswith(prefix) and name.count(".") > prefix.count(".")}


def app_id(settings: Settings) -> str:
    return f"{settings.prefix}-streams"


def leader_topic(settings: Settings) -> str:
    """Faust's assignor topic: the worker assigned its one partition is the leader, the one that ticks."""
    return f"{app_id(settings)}-__assignor-__leader"


def changelog_topic(settings: Settings) -> str:
    return f"{app_id(settings)}-jobstate-changelog"


def topic_specs(s: Settings) -> list[TopicSpec]:
    big = {"max.message.bytes": str(MAX_OUTPUT_BYTES)}
    history = {"cleanup.policy": "delete", "retention.ms": str(s.history_retention_ms), **big}
    inbox = {**history, "max.message.bytes": str(MAX_RECORD_BYTES)}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", **big}
    # Views are trimmed (tombstones for runs past KSCHED_KEEP_RUN_VIEWS): let the cleaner reach them within the
    # hour, so a partition holds about what is kept, not everything since the last weekly segment roll.
    views = {**compact, "segment.ms": str(HOUR_MS), "min.cleanable.dirty.ratio": "0.2"}
    specs = [
        TopicSpec(s.topic("inbox"), s.partitions, "job id (ticks: none, explicit partition)",
                  "every input the scheduler decides on: submissions and lifecycle commands from any client, "
                  "ticks, executor claims and reports; the audit history", inbox, True),
        TopicSpec(s.topic("commands"), s.partitions, "job id",
                  "submissions and lifecycle commands from clients (CLI, any producer); the streams workers forward "
                  "each into the inbox, so ACLs can let clients write commands and not reports",
                  {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
                   "max.message.bytes": str(MAX_RECORD_BYTES)}),
        TopicSpec(s.topic("events"), s.partitions, "job id",
                  "the decision log: everything the scheduler concluded, with derived event ids", history, True),
        TopicSpec(s.topic("jobs"), s.partitions, "job id", "job catalog (tombstone on delete)", compact, True),
        TopicSpec(s.topic("runs"), s.partitions, "run id (partition: the job's)",
                  "run views (the last KSCHED_KEEP_RUN_VIEWS finished runs per job, and active ones)", views, True),
        TopicSpec(s.topic("tasks"), s.partitions, "task id (partition: the job's)",
                  "task views with attempts (of the runs kept in the run views)", views, True),
        TopicSpec(changelog_topic(s), s.partitions, "job id; 0x01-prefixed partition records",
                  "the streams app's table of job states (Faust changelog)",
                  {"cleanup.policy": "compact", "max.message.bytes": str(MAX_STATE_BYTES)}, True),
        # Created here, with every other topic's replication: Faust would create it at a worker's start with that
        # worker's KSCHED_REPLICATION_FACTOR (1 unless set): one copy, on one node (seen in the three-node tests).
        TopicSpec(leader_topic(s), 1, "none (nothing is written to it)",
                  "the streams workers' leader election: the worker assigned its partition sends the ticks",
                  {"cleanup.policy": "delete"}),
        TopicSpec(s.topic("control"), s.control_partitions, "executor id",
                  "claim grants, rejections and cancel requests for executors",
                  {"cleanup.policy": "delete", "retention.ms": str(DAY_MS)}),
        TopicSpec(s.topic("dlq"), s.partitions, "the original record's key",
                  "records that could not be decoded or were invalid, with the reason and the original bytes",
                  {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS), **big}),
    ]
    return specs + pool_topic_specs(s, "")


def analytics_topic(settings: Settings, table: str) -> str:
    return settings.topic(f"analytics.{table}")


def analytics_topic_specs(s: Settings) -> list[TopicSpec]:
    """The topics `ksched analytics` writes for a Kafka Connect sink (docs/ANALYTICS.md): the current rows of
    runs, tasks and attempts (compacted, keyed by the row's primary key) and the decision log's rows (kept as
    long as the decision log)."""
    rows = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "max.message.bytes": str(MAX_OUTPUT_BYTES)}
    audit = {"cleanup.policy": "delete", "retention.ms": str(s.history_retention_ms),
             "max.message.bytes": str(MAX_OUTPUT_BYTES)}
    return [TopicSpec(analytics_topic(s, "runs"), s.partitions, "run id (JSON struct)", "run rows", rows),
            TopicSpec(analytics_topic(s, "tasks"), s.partitions, "task id (JSON struct)", "task rows", rows),
            TopicSpec(analytics_topic(s, "attempts"), s.partitions, "attempt id (JSON struct)", "attempt rows", rows),
            TopicSpec(analytics_topic(s, "decisions"), s.partitions, "event id (JSON struct)",
                      "decision-log rows (append-only audit)", audit)]


def ensure_topics(settings: Settings, timeout_s: float = 30.0, pools: tuple[str, ...] = (),
                  extra: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics (and those of executor `pools`, and `extra`); check co-partitioned counts.
    Returns those created."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({**client_config(settings), "log_level": 3})
    existing = admin.list_topics(timeout=timeout_s).topics
    specs = topic_specs(settings) + [sp for pool in pools for sp in pool_topic_specs(settings, pool)] + (extra or [])
    for spec in specs:
        md = existing.get(spec.name)
        if md is not None and md.error is None and spec.copartitioned and len(md.partitions) != spec.partitions:
            raise ConfigError(
                f"topic {spec.name} has {len(md.partitions)} partitions but KSCHED_PARTITIONS is {spec.partitions}; "
                "co-partitioned topics must match (scale by creating a new installation prefix)"
            )
    missing = [sp for sp in specs if sp.name not in existing or existing[sp.name].error is not None]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(sp.name, sp.partitions, settings.replication_factor, config=sp.config) for sp in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
            if "AUTHORIZATION_FAILED" in str(exc):
                # On a secured cluster a client sees only the topics its ACLs name, and creates none of the
                # others: the streams workers' principal does.
                continue
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
    refused = {name for name, fut in futures.items() if name not in created and "AUTHORIZATION_FAILED" in
               str(fut.exception())}
    _wait_until_served(settings, {sp.name: sp.partitions for sp in missing if sp.name not in refused}, timeout_s)
    return created


def _wait_until_served(settings: Settings, partitions: dict[str, int], timeout_s: float) -> None:
    """Creation returns before every partition's leader serves it; clients that start at once would see
    NOT_LEADER errors. Wait until each partition answers an offsets request."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({**client_config(settings), "group.id": f"{settings.prefix}-admin", "log_level": 3})
    try:
        pending = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            still = []
            for tp in pending:
                try:
                    c.get_watermark_offsets(tp, timeout=2)
                except KafkaException:
                    still.append(tp)
            pending = still
            if pending:
                time.sleep(0.05)
        if pending:
            raise ConfigError(f"{len(pending)} new topic partitions not served after {timeout_s:.0f}s")
    finally:
        c.close()
