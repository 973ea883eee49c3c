"""Settings, read once from the environment (`KSCHED_*`) and passed explicitly from then on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ksched.errors import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:39092"


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a ksched process needs to find its broker, topics and stores."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    #: Prefix of every topic and consumer group, so several installations (or tests) share a cluster.
    prefix: str = "ksched"
    #: Partitions of the inbox, the decision log, the state topics and Faust's changelog (all co-partitioned).
    partitions: int = 6
    #: Partitions of each per-priority ready topic.
    ready_partitions: int = 6
    #: Partitions of the executor control topic (grants, rejections, cancel requests).
    control_partitions: int = 3
    replication_factor: int = 1
    #: Retention of the audit history (inbox and decision log); -1 keeps it forever.
    history_retention_ms: int = -1
    home: Path = field(default_factory=lambda: Path(".ksched").resolve())
    #: `file:///path` (local content-addressed directory) or `s3://bucket/prefix`.
    artifact_url: str = ""
    s3_endpoint_url: str = ""
    #: Seconds between ticks the leader produces into every inbox partition (0: no ticker, for tests that
    #: produce their own ticks).
    tick_interval_s: float = 1.0
    #: At most this many ticks the streams workers have not consumed yet per inbox partition (0: no limit); past
    #: it the ticker holds that partition's ticks, and the next one jumps the clock (`streams.ticker`).
    tick_backlog: int = 3
    #: Seconds a granted attempt may go without a heartbeat before it is retried.
    lease_s: float = 10.0
    heartbeat_s: float = 2.0
    #: Faust's commit interval in seconds.
    commit_interval_s: float = 0.5
    #: Seconds before their instant that occurrences of `overlap: allow` jobs fire, so executors can claim
    #: and stage them and start them on time (0: fire at the instant).
    lookahead_s: float = 10.0
    #: Seconds after which a silent streams worker leaves its consumer group (executors: at least 6). Brokers
    #: refuse less than their `group.min.session.timeout.ms` (Kafka's default 6 s; ksched's dev broker 1 s): a
    #: streams worker raises it to that floor (`streams.worker.session_within_floor`).
    session_timeout_s: float = 3.0
    #: Copies of each partition's table that other streams workers keep warm (Faust standby replicas), so a
    #: survivor takes over a dead worker's partitions without rebuilding them from the changelog (20,000 jobs, one
    #: of two workers killed: firing gap 1.0 s with one, 4.0 s without; docs/ARCHITECTURE.md "Faults"). Each
    #: worker then also writes the partitions it stands by for. A lone worker has nobody to keep a copy.
    standby_replicas: int = 1
    #: Finished runs per job whose views the `runs` and `tasks` topics keep; older ones get tombstones (the inbox
    #: and decision log keep everything). A decision parameter: replay needs the workers' value.
    keep_run_views: int = 50
    #: A streams worker's HTTP API (`http://host:port`): the CLI's status, runs and wait ask it (it forwards to
    #: the job's owner, who answers from its table) instead of reading the views topics.
    api_url: str = ""
    #: Client security settings (librdkafka names: security.protocol, sasl.mechanism, sasl.username,
    #: sasl.password, ssl.ca.location, ...) from KSCHED_KAFKA_CONFIG and KSCHED_KAFKA_* (see `kafka_security`).
    kafka: tuple[tuple[str, str], ...] = ()
    #: Bearer tokens of the HTTP API: when either is set, every /api and /metrics request needs one. The admin
    #: token is for the operations that change things (none are served over HTTP yet); both may read.
    api_token: str = ""
    api_admin_token: str = ""

    def kafka_config(self) -> dict[str, str]:
        return dict(self.kafka)

    @property
    def artifacts(self) -> str:
        return self.artifact_url or (self.home / "artifacts").as_uri()

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"


#: The client settings ksched takes from its configuration: how to reach a secured cluster, nothing that would
#: change how ksched's clients behave (partitioner, acks, isolation) and so break its guarantees.
SECURITY_PREFIXES = ("security.protocol", "sasl.", "ssl.")
_ENV_KEYS = {
    "KSCHED_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KSCHED_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KSCHED_KAFKA_SASL_USERNAME": "sasl.username",
    "KSCHED_KAFKA_SASL_PASSWORD": "sasl.password",
    "KSCHED_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}


def kafka_security(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Client security settings: a Java-style properties file named by KSCHED_KAFKA_CONFIG (`key=value` lines,
    `#` comments), then KSCHED_KAFKA_* variables over it. Keys other than security.protocol, sasl.* and ssl.*
    are refused with the line that has them."""
    conf: dict[str, str] = {}
    path = env.get("KSCHED_KAFKA_CONFIG")
    if path:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"KSCHED_KAFKA_CONFIG: cannot read {path}: {exc.strerror}") from None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith(("#", "!")):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"KSCHED_KAFKA_CONFIG: {path}:{n}: expected key=value")
            conf[key.strip()] = value.strip()
    for var, key in _ENV_KEYS.items():
        if env.get(var):
            conf[key] = env[var]
    if "sasl.mechanisms" in conf:  # librdkafka's older spelling
        conf.setdefault("sasl.mechanism", conf.pop("sasl.mechanisms"))
    for key in conf:
        if not key.startswith(SECURITY_PREFIXES):
            raise ConfigError(f"KSCHED_KAFKA_CONFIG: {key}: only security.protocol, sasl.* and ssl.* settings "
                              "are taken (ksched sets the others itself)")
    return tuple(sorted(conf.items()))


def load(env: dict[str, str] | None = None) -> Settings:
    """Settings from `KSCHED_*` environment variables, defaults elsewhere."""
    e = dict(os.environ if env is None else env)
    home = Path(e.get("KSCHED_HOME") or ".ksched").expanduser().resolve()
    s = Settings(
        bootstrap_servers=e.get("KSCHED_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP,
        prefix=e.get("KSCHED_PREFIX") or "ksched",
        partitions=_int(e, "KSCHED_PARTITIONS", 6),
        ready_partitions=_int(e, "KSCHED_READY_PARTITIONS", 6),
        control_partitions=_int(e, "KSCHED_CONTROL_PARTITIONS", 3),
        replication_factor=_int(e, "KSCHED_REPLICATION_FACTOR", 1),
        history_retention_ms=_int(e, "KSCHED_HISTORY_RETENTION_MS", -1),
        home=home,
        artifact_url=e.get("KSCHED_ARTIFACTS", ""),
        s3_endpoint_url=e.get("KSCHED_S3_ENDPOINT_URL", ""),
        tick_interval_s=_float(e, "KSCHED_TICK_INTERVAL_S", 1.0),
        tick_backlog=_int(e, "KSCHED_TICK_BACKLOG", 3),
        lease_s=_float(e, "KSCHED_LEASE_S", 10.0),
        heartbeat_s=_float(e, "KSCHED_HEARTBEAT_S", 2.0),
        commit_interval_s=_float(e, "KSCHED_COMMIT_INTERVAL_S", 0.5),
        session_timeout_s=_float(e, "KSCHED_SESSION_TIMEOUT_S", 3.0),
        standby_replicas=_int(e, "KSCHED_STANDBY_REPLICAS", 1),
        keep_run_views=_int(e, "KSCHED_KEEP_RUN_VIEWS", 50),
        api_url=e.get("KSCHED_API_URL", "").rstrip("/"),
        lookahead_s=_float(e, "KSCHED_LOOKAHEAD_S", 10.0),
        kafka=kafka_security(e),
        api_token=e.get("KSCHED_API_TOKEN", ""),
        api_admin_token=e.get("KSCHED_API_ADMIN_TOKEN", ""),
    )
    if s.keep_run_views < 5:
        raise ConfigError("KSCHED_KEEP_RUN_VIEWS: at least 5 (the finished runs the scheduler's state holds)")
    if s.partitions < 1 or s.ready_partitions < 1 or s.control_partitions < 1:
        raise ConfigError("KSCHED_*PARTITIONS: partition counts must be at least 1")
    if not s.prefix.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"KSCHED_PREFIX: only letters, digits, '-' and '_' are allowed, got {s.prefix!r}")
    return s
