"""Image references by Docker's naming rules, registry auth challenges, transport choice.

Pure: no I/O. ``nginx`` means ``docker.io/library/nginx:latest``, served by
``registry-1.docker.io``; the first path component is a registry host only when it has
a ``.`` or ``:`` or is ``localhost`` (as the Docker CLI decides).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from hub.errors import InvalidReference

__all__ = [
    "Challenge",
    "ImageRef",
    "InvalidReference",
    "api_host",
    "auth_host",
    "parse_challenge",
    "parse_reference",
    "uses_plain_http",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API}
MAX_NAME = 255
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::(\d{1,5}))?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(?:,|$)')


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: registry (``docker.io`` for Docker Hub), repository, tag/digest."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """Return what to ask the registry's manifests endpoint for (digest wins)."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """Return ``registry/repository@digest``: what a device pulls."""
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self) -> str:
        if self.digest:
            return self.pinned(self.digest)
        return f"{self.registry}/{self.repository}:{self.tag}"


def parse_reference(text: str) -> ImageRef:
    """Parse ``[registry/]repository[:tag][@digest]``; raise InvalidReference naming the part."""
    if not text:
        raise InvalidReference("image reference is empty")
    if len(text) > MAX_NAME + 72 + 129:
        raise InvalidReference(f"image reference is longer than {MAX_NAME} characters")
    name, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidReference(f"{text!r}: digest must be sha256: and 64 lower-case hex digits")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(f"{text!r}: tag must match {_TAG.pattern}")
    registry, repository = _split_registry(text, name)
    if len(f"{registry}/{repository}") > MAX_NAME:
        raise InvalidReference(f"{text!r}: name is longer than {MAX_NAME} characters")
    if tag is None and not digest:
        tag = "latest"
    return ImageRef(registry, repository, tag, digest or None)


def _split_registry(text: str, name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost"
    is_host = bool(sep) and (looks_like_host or first != first.lower())
    if is_host:
        match = _DOMAIN.match(first)
        if not match or (match.group(1) and int(match.group(1)) > 65535):
            raise InvalidReference(f"{text!r}: registry {first!r} is no valid host[:port]")
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    parts = repository.split("/")
    if not all(_PATH_COMPONENT.match(p) for p in parts):
        raise InvalidReference(
            f"{text!r}: repository must be lower-case path components matching "
            + _PATH_COMPONENT.pattern
        )
    return registry, repository


def api_host(registry: str) -> str:
    """Return the host[:port] serving the registry API (Docker Hub: registry-1.docker.io)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def auth_host(server: str) -> str:
    """Return the registry a ``registry_auth`` server names (scheme and path dropped)."""
    host = re.sub(r"^[a-z]+://", "", server.strip()).split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _host_only(registry: str) -> str:
    if registry.startswith("["):
        return registry[1 : registry.index("]")]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def uses_plain_http(registry: str, insecure: Iterable[str]) -> bool:
    """Return whether to speak plain HTTP: loopback, or listed (host[:port] or CIDR)."""
    host = _host_only(registry)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host == "localhost" or (address is not None and address.is_loopback):
        return True
    for entry in insecure:
        if entry == registry:
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` challenge: scheme (lower-case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    """Parse a Basic or Bearer challenge; None if absent, unknown or missing a Bearer realm."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        pos = match.end()
    if scheme == "bearer" and "realm" not in params:
        return None
    return Challenge(scheme, params)
