"""Resolve image references to manifest digests through the registry HTTP API v2.

``repo:tag`` becomes the digest the registry serves for it; ``repo@sha256:...`` is checked
to exist. A multi-architecture index resolves to the digest of the INDEX, so devices of
every architecture share one release. Requests are anonymous until the registry
challenges (401 + ``WWW-Authenticate``): Basic is answered with the release's
``registry_auth`` for that host, Bearer by asking the challenge's token endpoint
(with those credentials when there are some) and retrying once with the token.
Loopback registries and those in ``registries.insecure`` are spoken to over plain HTTP,
as Docker does; every other one over verified HTTPS. Every request has a deadline and
every body read a size bound. Errors name the image and carry the registry's answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import aiohttp

from edge_agent.models import RegistryAuth
from hub.config import RegistriesConfig
from hub.errors import (
    HubError,
    ImageNotResolved,
    InvalidReference,
    RegistryRefusal,
    RegistryUnavailable,
)
from hub.imageref import (
    ImageRef,
    api_host,
    auth_host,
    parse_challenge,
    parse_reference,
    uses_plain_http,
)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
MAX_REGISTRY_ERRORS = 5
log = logging.getLogger("hub.registry")
_E = TypeVar("_E", bound=RegistryRefusal)


@dataclass(frozen=True)
class Resolved:
    """One image and the digest it resolved to."""

    requested: str
    ref: ImageRef
    digest: str
    media_type: str

    @property
    def pinned(self) -> str:
        """Return what a device pulls: ``registry/repository@digest``."""
        return self.ref.pinned(self.digest)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Any
    body: bytes


class RegistryClient:
    """Ask registries for digests over one aiohttp session (the caller owns it)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: RegistriesConfig,
        auths: Iterable[RegistryAuth] = (),
    ) -> None:
        self._session = session
        self._config = config
        self._auths = {auth_host(a.server): a for a in auths}

    async def resolve(self, image: str) -> Resolved:
        """Return the digest the registry serves for ``image`` (raises RegistryRefusal)."""
        ref = parse_reference(image)
        url = f"{self._base(ref.registry)}/v2/{ref.repository}/manifests/{ref.reference}"
        answer = await self._call(image, ref, "HEAD", url, self._config.max_manifest_bytes)
        digest = answer.headers.get("Docker-Content-Digest", "")
        if answer.status != 200 or not digest:
            answer = await self._call(image, ref, "GET", url, self._config.max_manifest_bytes)
        if answer.status != 200:
            raise _refusal(image, ref, answer)
        media_type = answer.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            raise _refused(image, ref, answer.status, f"served media type {media_type!r}")
        digest = _digest_of(image, ref, answer)
        if ref.digest and digest != ref.digest:
            raise _refused(image, ref, answer.status, f"served digest {digest}")
        return Resolved(image, ref, digest, media_type)

    def _base(self, host: str) -> str:
        scheme = "http" if uses_plain_http(host, self._config.insecure) else "https"
        return f"{scheme}://{api_host(host)}"

    async def _call(self, image: str, ref: ImageRef, method: str, url: str, limit: int) -> _Answer:
        """Send one request, answering one auth challenge (Basic or Bearer) if one comes."""
        answer = await self._send(image, ref, method, url, {"Accept": ACCEPT}, limit)
        if answer.status != 401:
            return answer
        authorization = await self._authorize(image, ref, answer)
        if authorization is None:
            return answer
        headers = {"Accept": ACCEPT, "Authorization": authorization}
        return await self._send(image, ref, method, url, headers, limit)

    async def _authorize(self, image: str, ref: ImageRef, answer: _Answer) -> str | None:
        challenge = parse_challenge(answer.headers.get("WWW-Authenticate", ""))
        creds = self._auths.get(ref.registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return _basic(creds) if creds else None
        params = {"service": challenge.params.get("service", "")}
        params["scope"] = challenge.params.get("scope") or f"repository:{ref.repository}:pull"
        realm = challenge.params["realm"]
        realm_host = urlsplit(realm).netloc
        if urlsplit(realm).scheme != "https" and not uses_plain_http(
            realm_host, self._config.insecure
        ):
            raise _refused(image, ref, 401, f"token realm {realm!r} is not HTTPS")
        headers = {}
        if creds:
            headers["Authorization"] = _basic(creds)
        query = urlencode({k: v for k, v in params.items() if v})
        url = f"{realm}{'&' if '?' in realm else '?'}{query}"
        token = await self._send(image, ref, "GET", url, headers, self._config.max_answer_bytes)
        if token.status != 200:
            raise _refusal(image, ref, token, what=f"token endpoint {realm}")
        return f"Bearer {_token_of(image, ref, token.body)}"

    async def _send(
        self, image: str, ref: ImageRef, method: str, url: str, headers: dict[str, str], limit: int
    ) -> _Answer:
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        try:
            async with self._session.request(
                method, url, headers=headers, timeout=timeout, max_redirects=3
            ) as resp:
                if resp.status != 200:
                    limit = min(limit, self._config.max_answer_bytes)
                body = b"" if method == "HEAD" else await _read_bounded(resp, limit)
                return _Answer(resp.status, resp.headers, body)
        except _TooLarge as exc:
            log.warning(
                "registry %s: answer for %s over the %s-byte bound", ref.registry, image, exc
            )
            raise _unavailable(image, ref, f"answered more than {exc} bytes") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise _unavailable(image, ref, f"could not be reached: {what or 'timeout'}") from exc


def _basic(creds: RegistryAuth) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class _TooLarge(Exception):
    pass


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge(limit)
    body = await resp.content.read(limit + 1)
    while len(body) <= limit:
        more = await resp.content.read(limit + 1 - len(body))
        if not more:
            return body
        body += more
    raise _TooLarge(limit)


def _digest_of(image: str, ref: ImageRef, answer: _Answer) -> str:
    header = answer.headers.get("Docker-Content-Digest", "")
    if not answer.body:
        if not header.startswith("sha256:"):
            raise _unavailable(image, ref, "gave no sha256 Docker-Content-Digest")
        return str(header)
    computed = "sha256:" + hashlib.sha256(answer.body).hexdigest()
    if header and header != computed:
        raise _unavailable(image, ref, f"sent digest {header} for a manifest whose is {computed}")
    return computed


def _token_of(image: str, ref: ImageRef, body: bytes) -> str:
    try:
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise _unavailable(image, ref, "token endpoint answered no token")
    return token


def _registry_errors(body: bytes) -> list[dict[str, str]]:
    try:
        errors = json.loads(body).get("errors") or []
        return [
            {"code": str(e.get("code", "")), "message": str(e.get("message", ""))[:200]}
            for e in errors[:MAX_REGISTRY_ERRORS]
            if isinstance(e, dict)
        ]
    except (ValueError, AttributeError, TypeError):
        return []


def _refusal(image: str, ref: ImageRef, answer: _Answer, what: str = "") -> RegistryRefusal:
    """Return the error for a non-200 answer: 4xx refused (422), 429/5xx unavailable (502)."""
    errors = _registry_errors(answer.body)
    said = "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    text = f"answered {answer.status}" + (f" {said}" if said else "")
    if what:
        text = f"{what} {text}"
    cls = ImageNotResolved if 400 <= answer.status < 500 and answer.status != 429 else None
    return _error(cls or RegistryUnavailable, image, ref, text, answer.status, errors)


def _refused(image: str, ref: ImageRef, status: int, text: str) -> ImageNotResolved:
    return _error(ImageNotResolved, image, ref, text, status, [])


def _unavailable(image: str, ref: ImageRef, text: str) -> RegistryUnavailable:
    return _error(RegistryUnavailable, image, ref, text, None, [])


def _error(
    cls: type[_E], image: str, ref: ImageRef, text: str, status: int | None, errors: list[Any]
) -> _E:
    message = f"image {image!r}: registry {ref.registry} {text}"
    field = {
        "image": image,
        "message": message,
        "registry_status": status,
        "registry_errors": errors,
    }
    return cls(message, fields=[field])


async def resolve_images(
    images: Iterable[str], config: RegistriesConfig, auths: Iterable[RegistryAuth] = ()
) -> dict[str, Resolved]:
    """Resolve each distinct image (at most ``max_parallel`` at once).

    Every failure is collected: one ImageNotResolved naming every refused image, or,
    when a registry was unavailable, RegistryUnavailable (retrying may help).
    """
    distinct = list(dict.fromkeys(images))
    _check_references(distinct)
    gate = asyncio.Semaphore(config.max_parallel)
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, config, auths)

        async def one(image: str) -> Resolved:
            async with gate:
                return await client.resolve(image)

        results = await asyncio.gather(*(one(i) for i in distinct), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if not isinstance(failure, HubError):
            raise failure
    if failures:
        raise _merged([f for f in failures if isinstance(f, HubError)])
    return {r.requested: r for r in results if isinstance(r, Resolved)}


def _check_references(images: list[str]) -> None:
    """Raise one InvalidReference naming every malformed image, before any request."""
    bad = []
    for image in images:
        try:
            parse_reference(image)
        except InvalidReference as exc:
            bad.append({"image": image, "message": exc.message})
    if bad:
        raise InvalidReference("; ".join(b["message"] for b in bad), fields=bad)


def _merged(failures: list[HubError]) -> HubError:
    if len(failures) == 1:
        return failures[0]
    unavailable = any(isinstance(f, RegistryUnavailable) for f in failures)
    cls = RegistryUnavailable if unavailable else ImageNotResolved
    fields = [field for f in failures for field in f.fields]
    return cls(
        f"{len(failures)} images not resolved: " + "; ".join(f.message for f in failures),
        fields=fields,
    )
