"""The Kafka Connect sink configuration that lands the analytics topics in a SQL database (docs/ANALYTICS.md).

The Debezium JDBC sink (`io.debezium:debezium-connector-jdbc`, Maven Central): it reads Connect's JSON with
embedded schemas, creates each table from the record schema (`schema.evolution=basic`), and upserts by the
record key (`primary.key.mode=record_key`), so delivering a row twice changes nothing. Connect's own
`RegexRouter` names the tables `<installation>_runs`, `_tasks`, `_attempts` and `_decisions`.
"""

from __future__ import annotations

import re

from ksched.config import Settings
from ksched.topics import analytics_topic

from .rows import TABLES

JSON = "org.apache.kafka.connect.json.JsonConverter"


def table_prefix(settings: Settings) -> str:
    return re.sub(r"[^a-z0-9_]", "_", settings.prefix.lower())


def table_name(settings: Settings, table: str) -> str:
    return f"{table_prefix(settings)}_{table}"


def jdbc_sink(settings: Settings, jdbc_url: str, user: str, password: str, name: str = "") -> dict[str, str]:
    """The sink connector's configuration (Connect's REST API takes it as {"name": ..., "config": ...})."""
    topic = re.escape(settings.topic("analytics."))
    return {
        "name": name or f"{settings.prefix}-analytics-jdbc",
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": ",".join(analytics_topic(settings, t.name) for t in TABLES),
        "connection.url": jdbc_url,
        "connection.username": user,
        "connection.password": password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "false",
        "schema.evolution": "basic",
        "use.time.zone": "UTC",
        "key.converter": JSON,
        "key.converter.schemas.enable": "true",
        "value.converter": JSON,
        "value.converter.schemas.enable": "true",
        "transforms": "table",
        "transforms.table.type": "org.apache.kafka.connect.transforms.RegexRouter",
        "transforms.table.regex": f"{topic}(.*)",
        "transforms.table.replacement": f"{table_prefix(settings)}_$1",
    }
