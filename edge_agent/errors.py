"""Errors raised by the agent.

The tree::

    AgentError                    base; ``retryable`` says whether trying again may help
    ├── ConfigError               bad configuration file or environment (not retryable)
    ├── InvalidDocument           a release/target failed validation; ``errors`` names fields
    ├── TargetRejected            signature, device, revision or expiry check failed
    │   └── ReleaseUntrusted      too few valid operator signatures for the release
    ├── TechnicianRefused         a technician token is forged, expired, revoked, out of
    │                             scope or of the wrong role; ``status`` is 401 or 403
    ├── ActionRefused             a queued action is forged, for another device, expired,
    │                             a replay or invalid; ``reason`` is a short code
    ├── InvalidLogQuery           a read of the kept container logs has a bad argument
    ├── StoreError                the local SQLite store failed
    │   └── StoreFull             the disk is full; nothing was written
    ├── RuntimeAdapterError       the Docker engine refused or failed a call
    │   ├── EngineUnavailable     the engine cannot be reached (retryable)
    │   ├── ImageNotFound         the image or digest does not exist (not retryable)
    │   ├── RegistryAuthError     the registry refused the credentials (not retryable)
    │   ├── DiskReserveError      pulling would eat into the free-disk reserve (retryable)
    │   └── NotManaged            refused to touch an object without this device's label
    ├── ApplyFailed               a plan step failed; carries the step and the cause
    └── SyncError                 talking to the hub failed
        ├── HubUnreachable        network-level failure (retryable)
        └── HubRefused            the hub answered 4xx (not retryable unless 408/413/429)
    TaskFailed                    (under AgentError) a background task failed, or kept failing
    ImageInUse                    (under RuntimeAdapterError) image GC: a container uses it
    HoldRefused                   (under AgentError) a pause/pin request is out of bounds

Third-party exceptions (aiodocker, aiohttp, sqlite3) are translated at the module
that talks to them, with ``raise X from exc``.
"""

from __future__ import annotations

import re
from typing import Any


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    @property
    def code(self) -> str:
        """Return the wire code: the class name in snake case (``invalid_document``)."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def field_list(self) -> list[dict[str, Any]]:
        """Return the fields this error is about (each ``{"field", "message"}``)."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """Return the error body, the hub's shape: ``{"error", "message", "fields"}``."""
        return {"error": self.code, "message": self.message, "fields": self.field_list()}


class ConfigError(AgentError):
    """The configuration file or environment is invalid."""


class InvalidDocument(AgentError):
    """A document failed validation; ``errors`` lists each bad field."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, retryable=False)
        self.errors = errors or []

    def field_list(self) -> list[dict[str, Any]]:
        """Return every bad field."""
        return self.errors


class TargetRejected(AgentError):
    """A target failed a signature, addressee, revision or expiry check."""


class ReleaseUntrusted(TargetRejected):
    """A release lacks enough valid operator signatures (edge_agent/release_trust.py)."""


class TechnicianRefused(AgentError):
    """A technician's token does not let them do this; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str, *, status: int = 401) -> None:
        super().__init__(message, retryable=False)
        self.reason = reason
        self.status = status
        self.actor = "anonymous"  # the technician, once the signature verified

    @property
    def code(self) -> str:
        """Return the short reason (``wrong_role``, ``expired``, ...) as the wire code."""
        return self.reason


class ActionRefused(AgentError):
    """A hub action this agent will not run; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, retryable=False)
        self.reason = reason


class InvalidLogQuery(AgentError):
    """A read of the kept container logs has a bad argument (named in the message)."""


class StoreError(AgentError):
    """The local store failed."""


class StoreFull(StoreError):
    """The disk is full; the write was rolled back."""

    retryable = True


class RuntimeAdapterError(AgentError):
    """The container engine refused or failed a call."""

    def __init__(
        self, message: str, *, retryable: bool | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


class EngineUnavailable(RuntimeAdapterError):
    """The container engine cannot be reached."""

    retryable = True


class ImageNotFound(RuntimeAdapterError):
    """The image reference or digest does not exist."""


class RegistryAuthError(RuntimeAdapterError):
    """The registry refused the credentials."""


class DiskReserveError(RuntimeAdapterError):
    """Free disk space is below the configured reserve."""

    retryable = True


class NotManaged(RuntimeAdapterError):
    """The object lacks this device's management label."""


class ApplyFailed(AgentError):
    """A reconcile step failed."""

    def __init__(self, message: str, *, step: Any = None, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)
        self.step = step


class SyncError(AgentError):
    """Talking to the hub failed."""


class HubUnreachable(SyncError):
    """The hub could not be reached (network-level failure), or asked to be left alone.

    ``retry_after_s``: the delay the hub asked for (a Retry-After header), if any.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HubRefused(SyncError):
    """The hub answered with a client error."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, retryable=status in (408, 413, 429))
        self.status = status


class TaskFailed(AgentError):
    """A supervised background task ended unexpectedly or kept failing."""


class ImageInUse(RuntimeAdapterError):
    """An image cannot be removed: a container (of any device) uses it."""


class HoldRefused(AgentError):
    """A technician's pause or pin request is invalid or over its bound (HTTP 400)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field

    def field_list(self) -> list[dict[str, Any]]:
        """Return the field that is invalid or over its bound."""
        return [{"field": self.field, "message": self.message}]


class NotFound(AgentError):
    """The named object does not exist (local API: 404)."""


class Conflict(AgentError):
    """The request conflicts with the agent's state (local API: 409)."""
