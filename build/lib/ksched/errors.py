"""The error tree. One base per concern; user-facing messages name the thing at fault in one line."""

from __future__ import annotations


class KschedError(Exception):
    """Base of every error ksched raises on purpose."""


class ConfigError(KschedError):
    """A setting is missing or malformed."""


class JobSpecError(KschedError):
    """A job file or job definition is invalid. `field` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class CodecError(KschedError):
    """Bytes could not be turned into an event (bad framing, unknown schema, invalid body)."""


class UnknownSchemaError(CodecError):
    """The single-object fingerprint names no schema this version knows."""


class ArtifactError(KschedError):
    """An artifact could not be stored, found or verified."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class SecretError(KschedError):
    """A secret a task references could not be resolved by the executor (`reason`: SECRET_MISSING)."""

    def __init__(self, message: str) -> None:
        self.reason = "SECRET_MISSING"
        super().__init__(message)


class BrokerError(KschedError):
    """The local development broker could not be assembled, started or reached."""
