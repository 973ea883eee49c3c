"""The roles of a ksched installation as Kafka ACLs: what each principal may do, enforced by the broker.

- streams (the workers): everything on the installation's topics, groups and transactional ids: they own its
  state and create its topics.
- executor: read the ready topics (and create a pool's), read the control topic, write claims and reports to
  the inbox and garbage to the dead-letter topic, in transactions of its own id prefix.
- submitter (CLI, any producer): write the commands topic; read the decision log, views, inbox (history) and
  dead letters. Not write the inbox (no forged reports), not read the control topic (no grants).
- analytics (`ksched analytics`, the projector): read the decision log and the run and task views, write (and
  create) the analytics topics that a Kafka Connect sink reads.

Anything else, an anonymous client included, is refused: the broker is started with no ACL meaning deny.
"""

from __future__ import annotations

from dataclasses import dataclass

from ksched.config import Settings

ROLES = ("streams", "executor", "submitter", "analytics")


@dataclass(frozen=True)
class Grant:
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID
    name: str
    pattern: str  # LITERAL or PREFIXED
    operations: tuple[str, ...]


def grants(settings: Settings, role: str) -> list[Grant]:
    """What `role` may do in the installation of `settings` (its topic and group prefix)."""
    p = settings.prefix
    t = settings.topic
    if role == "streams":
        return [Grant("TOPIC", p, "PREFIXED", ("ALL",)), Grant("GROUP", p, "PREFIXED", ("ALL",)),
                Grant("TRANSACTIONAL_ID", p, "PREFIXED", ("ALL",))]
    if role == "executor":
        return [
            Grant("TOPIC", t("ready."), "PREFIXED", ("READ", "CREATE")),
            Grant("TOPIC", t("control"), "LITERAL", ("READ",)),
            Grant("TOPIC", t("inbox"), "LITERAL", ("WRITE",)),
            Grant("TOPIC", t("dlq"), "LITERAL", ("WRITE",)),
            Grant("GROUP", f"{p}-executor", "PREFIXED", ("READ",)),
            Grant("GROUP", f"{p}-control-", "PREFIXED", ("READ",)),
            Grant("TRANSACTIONAL_ID", f"{p}-executor-", "PREFIXED", ("WRITE", "DESCRIBE")),
        ]
    if role == "submitter":
        return [
            Grant("TOPIC", t("commands"), "LITERAL", ("WRITE",)),
            *[Grant("TOPIC", t(name), "LITERAL", ("READ",)) for name in ("events", "jobs", "runs", "tasks",
                                                                          "inbox", "dlq")],
            Grant("GROUP", f"{p}-reader", "PREFIXED", ("READ",)),
            Grant("GROUP", f"{p}-cli", "PREFIXED", ("READ",)),
        ]
    if role == "analytics":
        return [
            *[Grant("TOPIC", t(name), "LITERAL", ("READ",)) for name in ("events", "runs", "tasks")],
            Grant("TOPIC", t("analytics."), "PREFIXED", ("WRITE", "CREATE", "DESCRIBE")),
            Grant("GROUP", f"{p}-analytics", "PREFIXED", ("READ",)),
        ]
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def apply(admin_settings: Settings, installation: Settings, principals: dict[str, str]) -> int:
    """Create the ACLs of every role in `principals` (role -> user name) with an admin's client settings.
    Returns how many bindings were created (creating one that exists is a no-op)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from ksched import kafka

    bindings = [
        AclBinding(ResourceType[g.resource], g.name, ResourcePatternType[g.pattern], f"User:{user}", "*", op,
                   AclPermissionType.ALLOW)
        for role, user in principals.items() for g in grants(installation, role) for op in g.operations
    ]
    client = kafka.admin(admin_settings)  # kept until the futures resolve: a collected client cancels them
    futures = client.create_acls(bindings, request_timeout=30)
    for fut in futures.values():
        fut.result()
    return len(bindings)
