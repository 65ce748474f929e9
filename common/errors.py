"""Typed exceptions shared by every role.

Each carries enough context (file, key, sender, field) that the message alone tells the user what to fix.
Long-running roles catch these at their message loop, count them in a metric, log once and keep going.
"""

from __future__ import annotations


class RlefError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(RlefError):
    """A config file or override is invalid. The message names the file and the dotted key."""


class MessageError(RlefError):
    """A received message is malformed, oversized or of an unknown schema version.

    ``sender`` is the transport-level identity or endpoint of the peer when known; ``field`` the dotted path
    of the offending field when known.
    """

    def __init__(self, reason: str, *, sender: str | None = None, field: str | None = None, kind: str | None = None):
        self.reason = reason
        self.sender = sender
        self.field = field
        self.kind = kind
        parts = [reason]
        if kind:
            parts.append(f"kind={kind}")
        if field:
            parts.append(f"field={field}")
        if sender:
            parts.append(f"sender={sender}")
        super().__init__("; ".join(parts))

    def with_sender(self, sender: str) -> "MessageError":
        return MessageError(self.reason, sender=sender, field=self.field, kind=self.kind)


class DataError(RlefError):
    """A dataset is missing or malformed. The message names the path (and the record when known)."""


class SandboxError(RlefError):
    """The sandbox itself failed (our fault, never the program's): nsjail missing, setup failure, ..."""


class TransportError(RlefError):
    """A ZeroMQ peer did not answer in time or a socket could not be set up."""


class PeerRefused(RlefError):
    """The hub refused this peer's registration (its shared config differs); the message names the keys.

    Not a TransportError: retrying cannot help, the peer must be started with the hub's config."""


class WeightsError(RlefError):
    """A weight version arrived incomplete, with a bad checksum, or does not fit the model."""


class InfrastructureError(RlefError):
    """An execution kept failing on our side (executor timeout, dead jail, refused job) after its retries.

    The episode it belongs to is dropped and counted, never scored or shown to the model. ``reason`` is
    ``"refused"`` or ``"sandbox_error"``; ``job_id`` the last attempt's id; ``error`` the executor's error text.
    """

    def __init__(self, reason: str, *, job_id: str, error: str, attempts: int):
        self.reason = reason
        self.job_id = job_id
        self.error = error
        self.attempts = attempts
        super().__init__(f"job {job_id}: {reason} after {attempts} attempt(s): {error[:300]}")
