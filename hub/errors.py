"""Errors raised by the hub; each knows its HTTP status and wire code.

The tree::

    HubError                      base; ``status`` is the HTTP status, ``code`` the wire code
    ├── ConfigError               bad configuration file or environment (exit, not HTTP)
    ├── InvalidRequest            400/422: malformed body or a field failed validation
    │   ├── InvalidSelector       422: a tag selector does not parse (position and token)
    │   ├── OverrideConflict      409: two matching groups set one variable differently
    │   ├── ComposeError          422: a compose file uses what the agent cannot honour
    │   ├── UnknownSecret         422: a release names a secret the hub does not hold
    │   └── PolicyRefused         422: a release does what a device's policy refuses
    ├── PayloadTooLarge           413: body, decompressed body or batch over a limit
    ├── Unauthenticated           401: no or unknown operator token / client certificate
    ├── Forbidden                 403: authenticated but not allowed (disabled device, ...)
    │   └── CertificateExpired    403: expired longer ago than the renewal grace
    ├── EnrollmentRefused         the enrollment token cannot be used; nothing was created
    │   ├── UnknownToken          401: no such token
    │   ├── TokenExpired          410: past its expiry
    │   └── TokenUsedUp           410: every use consumed
    ├── BadCSR                    400: the CSR does not parse, verify or use a known key type
    ├── NotFound                  404
    ├── Conflict                  409: the request clashes with the current state
    ├── InvalidReference          422: an image reference breaks Docker's naming rules
    ├── RegistryRefusal           a registry gave no digest; ``fields`` carry its answer
    │   ├── ImageNotResolved      422: it refused (404 MANIFEST_UNKNOWN, 401, 403, ...)
    │   └── RegistryUnavailable   502: unreachable, 5xx, or over a size bound (retryable)
    ├── StoreError                500: the database failed (retryable)
    └── SecretKeyError            500: a secret key is missing or a value does not open

The middleware in ``hub.app`` turns every HubError into an ``ErrorBody`` JSON response.
Third-party exceptions (sqlite3, cryptography) are translated where they are raised,
with ``raise X from exc``.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Base of every error the hub raises on purpose."""

    status: int = 500
    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []

    def to_body(self) -> dict[str, Any]:
        """Return the JSON error body (``edge_agent.protocol.ErrorBody``)."""
        return {"error": self.code, "message": self.message, "fields": self.fields}


class ConfigError(HubError):
    """The configuration file or environment is invalid."""

    code = "config"


class InvalidRequest(HubError):
    """The request body or a parameter is invalid; ``fields`` names each bad field."""

    status = 422
    code = "invalid_request"

    def __init__(
        self, message: str, *, fields: list[dict[str, Any]] | None = None, status: int = 422
    ) -> None:
        super().__init__(message, fields=fields)
        self.status = status


class InvalidSelector(InvalidRequest):
    """A tag selector does not parse; ``position`` (1-based) and ``token`` say where."""

    code = "invalid_selector"

    def __init__(self, message: str, *, position: int, token: str) -> None:
        super().__init__(message, fields=[{"field": "selector", "message": message}])
        self.position, self.token = position, token


class OverrideConflict(InvalidRequest):
    """Two groups a device is in set one service variable to different values."""

    code = "override_conflict"

    def __init__(self, message: str) -> None:
        super().__init__(message, fields=[{"field": "overrides", "message": message}], status=409)


class PayloadTooLarge(HubError):
    """The request is over a configured bound; the client should split it."""

    status = 413
    code = "payload_too_large"
    retryable = True


class Unauthenticated(HubError):
    """No valid credentials were presented."""

    status = 401
    code = "unauthenticated"


class Forbidden(HubError):
    """The caller is known but not allowed."""

    status = 403
    code = "forbidden"


class CertificateExpired(Forbidden):
    """A device certificate expired longer ago than ``pki.renew_grace_days``."""

    code = "certificate_expired"


class EnrollmentRefused(HubError):
    """The enrollment token cannot be used."""

    status = 403
    code = "enrollment_refused"


class UnknownToken(EnrollmentRefused):
    """No enrollment token matches."""

    status = 401
    code = "unknown_token"


class TokenExpired(EnrollmentRefused):
    """The enrollment token is past its expiry."""

    status = 410
    code = "token_expired"


class TokenUsedUp(EnrollmentRefused):
    """Every use of the enrollment token has been consumed."""

    status = 410
    code = "token_used_up"


class BadCSR(HubError):
    """The certificate signing request is unusable."""

    status = 400
    code = "bad_csr"


class NotFound(HubError):
    """The resource does not exist."""

    status = 404
    code = "not_found"


class Conflict(HubError):
    """The request clashes with the resource's current state."""

    status = 409
    code = "conflict"


class InvalidReference(HubError):
    """An image reference breaks Docker's naming rules."""

    status = 422
    code = "invalid_reference"


class RegistryRefusal(HubError):
    """A registry did not give an image's digest; ``fields`` carry its answer per image."""

    code = "registry"


class ImageNotResolved(RegistryRefusal):
    """The registry answered that it will not resolve the image (unknown, unauthorized)."""

    status = 422
    code = "image_not_resolved"


class RegistryUnavailable(RegistryRefusal):
    """The registry could not be reached or answered unusably; trying later may work."""

    status = 502
    code = "registry_unavailable"
    retryable = True


class StoreError(HubError):
    """The database failed."""

    status = 500
    code = "store"
    retryable = True


class PolicyRefused(InvalidRequest):
    """A release does what the device policy of a device it would reach refuses (422).

    ``fields`` names each refusal: device, groups deciding the policy, service, option and
    the refusing policy field.
    """

    code = "policy_refused"


class ComposeError(InvalidRequest):
    """A compose file cannot be imported (an InvalidRequest, 422).

    ``fields`` names every refused key (``services.web.build``), not only the first.
    """

    code = "compose_refused"


class UnknownSecret(InvalidRequest):
    """A release names a secret the hub does not hold (422; the fields name each)."""

    code = "unknown_secret"


class SecretKeyError(HubError):
    """A secret key is missing or unreadable, or a sealed value does not open with it."""

    code = "secret_key"
