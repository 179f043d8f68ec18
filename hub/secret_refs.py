"""Secrets named by releases: checked and moved out on create, put in on delivery.

A release names a secret in two places (feature "secrets"):

    services[i].secret_env: {VAR: secret-name}      the variable's value is the secret
    registry_auth[i].password_secret: secret-name   the registry password is the secret

On create (``prepare``) a registry password given in clear is sealed into the secret
store under ``registry.<release>.<version>.<i>`` and the release keeps only that name, so
no value sits in the releases table; every other name must exist (``UnknownSecret``, 422,
naming each field). The hub's stored target names secrets only; ``deliverable`` puts the
values into the copy it signs and sends to that one device (``Target.secrets``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edge_agent.models import RegistryAuth, Release, Target, secret_names, strip_unknown
from edge_agent.protocol import SignedTarget
from edge_agent.signing import sign_target
from hub.context import HubContext
from hub.errors import SecretKeyError, UnknownSecret
from hub.secrets import SecretBox
from hub.store import AuditRecord, HubStore, SealedSecret

log = logging.getLogger(__name__)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
_UNSAFE = re.compile(r"[^a-z0-9_.-]")


@dataclass(frozen=True)
class Prepared:
    """A release ready to store: names only; the moved values; credentials for pinning."""

    release: Release
    moved: list[SealedSecret]
    moved_values: dict[str, str]
    auths: list[RegistryAuth]  # with passwords, for resolving the images' digests


def moved_name(release: Release, index: int) -> str:
    """Return the secret name a clear registry password of ``release`` is moved to."""
    safe = _UNSAFE.sub("_", release.version.lower())
    if safe != release.version:  # keep distinct versions distinct
        safe += "." + hashlib.sha256(release.version.encode()).hexdigest()[:8]
    return f"registry.{release.name}.{safe[:80]}.{index}"


async def prepare(box: SecretBox, store: HubStore, release: Release) -> Prepared:
    """Move clear registry passwords out of ``release`` and check every named secret exists."""
    moved: dict[str, str] = {}
    auths = []
    for i, auth in enumerate(release.registry_auth):
        if auth.password is not None:
            name = moved_name(release, i)
            moved[name] = auth.password
            auth = auth.model_copy(update={"password": None, "password_secret": name})
        auths.append(auth)
    doc = release.model_dump(mode="json")
    doc["registry_auth"] = [a.model_dump(mode="json") for a in auths]
    named = Release.model_validate(doc)
    wanted = sorted(secret_names(named) - set(moved))
    found = await store.sealed_secrets(wanted)
    _refuse_unknown(named, sorted(set(wanted) - set(found)))
    clear = [a.model_copy(update={"password": _password(box, a, moved, found)}) for a in auths]
    sealed = [SealedSecret(n, box.seal(n, v), box.current) for n, v in moved.items()]
    return Prepared(named, sealed, moved, clear)


def _password(
    box: SecretBox, auth: RegistryAuth, moved: dict[str, str], found: dict[str, SealedSecret]
) -> str:
    """Return a registry password for pinning (only these values are opened on create)."""
    name = auth.password_secret or ""
    return moved[name] if name in moved else box.open(name, found[name].sealed)


def _refuse_unknown(release: Release, unknown: list[str]) -> None:
    """Raise UnknownSecret naming every field that names one of ``unknown``."""
    if not unknown:
        return
    fields: list[dict[str, Any]] = []
    for i, s in enumerate(release.services):
        for var, name in sorted(s.secret_env.items()):
            if name in unknown:
                fields.append(_field(f"release.services.{i}.secret_env.{var}", name))
    for i, a in enumerate(release.registry_auth):
        if a.password_secret in unknown:
            fields.append(_field(f"release.registry_auth.{i}.password_secret", a.password_secret))
    raise UnknownSecret(
        f"release names unknown secret(s) {', '.join(unknown)}: set them first "
        "(edgectl secret set NAME)",
        fields=fields,
    )


def _field(path: str, name: str) -> dict[str, Any]:
    return {"field": path, "message": f"no secret {name!r}"}


def moved_rows(
    prepared: Prepared, actor: str, source: str
) -> list[tuple[SealedSecret, AuditRecord]]:
    """Return the registry passwords a release gave in clear, each with its audit row."""
    return [
        (
            sealed,
            AuditRecord(
                actor,
                "secret.set",
                sealed.name,
                "ok",
                datetime.now(UTC),
                {"key_id": sealed.key_id, "moved_from": prepared.release.ref},
                source_addr=source,
            ),
        )
        for sealed in prepared.moved
    ]


async def moved_differ(box: SecretBox, store: HubStore, prepared: Prepared) -> list[str]:
    """Return the moved secrets whose stored value differs from the one given now."""
    stored = await store.sealed_secrets(list(prepared.moved_values))
    return sorted(
        n
        for n, v in prepared.moved_values.items()
        if n not in stored or box.open(n, stored[n].sealed) != v
    )


async def deliverable(hub: HubContext, box: SecretBox, signed: SignedTarget) -> SignedTarget | None:
    """Return the target as its device gets it: with the values of the secrets it names.

    A target naming no secret is returned as stored. The values go only into this copy,
    signed for this device; the hub's stored target keeps the names alone. None (held,
    logged by name) when a value cannot be opened: never a target without its values.
    """
    try:
        return await _with_values(hub, box, signed)
    except SecretKeyError as exc:
        log.error("target held from its device: %s", exc.message)
        return None


async def _with_values(hub: HubContext, box: SecretBox, signed: SignedTarget) -> SignedTarget:
    try:
        doc, _ = strip_unknown(Target, json.loads(base64.b64decode(signed.payload)))
        target = Target.model_validate(doc)
    except ValueError:
        return signed  # the hub signed it; the agent judges it
    names = sorted(target.secret_names())
    if not names:
        return signed
    found = await hub.store.sealed_secrets(names)
    missing = sorted(set(names) - set(found))
    if missing:  # deletes are refused while a release names a secret: a broken store
        raise SecretKeyError(f"target revision {target.revision} names missing secret(s)")
    values = {n: box.open(n, s.sealed) for n, s in found.items()}
    return sign_target(target.model_copy(update={"secrets": values}), hub.pki.signing_key)
