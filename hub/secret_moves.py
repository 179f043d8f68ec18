"""Move registry passwords stored in clear before the secret store into it, at hub start.

Hub migration 22 lists the release and target rows that still hold one
(``hub.store.sqlite_secret_moves``). At start the hub, which has the secret keys, seals
each value under the name a release create would give it today
(``secret_refs.moved_name``; when that name already holds another value, the target's
device and revision are appended), rewrites the row with the name only and writes an
audit row ``secret.move`` naming the secret — one transaction per row. A stored target
is signed: it is signed again, same revision, with the hub's key; its device gets the
values at delivery like every target (``secret_refs.deliverable``), and only when its
agent reports the ``secrets`` feature (else the target is held from it, as for any
target naming a secret).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from aiohttp import web

from edge_agent.models import Release
from edge_agent.protocol import SignedTarget
from edge_agent.signing import key_id
from hub.context import HUB, HubContext
from hub.errors import HubError
from hub.release_api import canonical
from hub.secret_refs import SECRET_BOX, moved_name
from hub.secrets import SecretBox
from hub.store import AuditRecord, SealedSecret
from hub.store.sqlite_secret_moves import RELEASE

log = logging.getLogger(__name__)
ACTOR = "hub"


async def on_startup(app: web.Application) -> None:
    """Move what migration 22 listed (after the store opened); log how many rows."""
    moved = await move_clear_passwords(app[HUB], app[SECRET_BOX])
    if moved:
        log.info("moved the clear registry passwords of %d stored rows to secrets", moved)


async def move_clear_passwords(hub: HubContext, box: SecretBox) -> int:
    """Move every listed row's clear passwords into the secret store; return the rows."""
    done = 0
    for kind, key, document, source in await hub.store.pending_secret_moves():
        try:
            await _move(hub, box, kind, key, document, source)
        except (HubError, ValueError, KeyError) as exc:  # left listed: tried at next start
            log.error("could not move the clear password of %s %s: %s", kind, key, exc)
            continue
        done += 1
    return done


async def _move(
    hub: HubContext, box: SecretBox, kind: str, key: str, document: str, source: str
) -> None:
    if kind == RELEASE:
        release = Release.model_validate_json(document)
        names = await _names(hub, box, release, key, None)
        new_doc = _named(release, names).model_dump_json()
        new_source = canonical(_named(Release.model_validate_json(source), names))
        where = f"release {release.ref}"
    else:
        signed = SignedTarget.model_validate_json(document)
        payload = json.loads(base64.b64decode(signed.payload))
        release = Release.model_validate(payload["release"])
        names = await _names(hub, box, release, key, payload.get("revision"))
        payload["release"]["registry_auth"] = _named_auths(payload["release"], names)
        new_doc, new_source = _sign(hub, payload).model_dump_json(), ""
        where = f"target {key}"
    values = {names[i]: a.password for i, a in enumerate(release.registry_auth) if a.password}
    sealed = [SealedSecret(n, box.seal(n, v), box.current) for n, v in values.items()]
    audits = [_audit(hub, s, where) for s in sealed]
    await hub.store.move_secrets(kind, key, new_doc, new_source, sealed, audits)


async def _names(
    hub: HubContext, box: SecretBox, release: Release, key: str, revision: Any
) -> dict[int, str]:
    """Return the secret name for each clear password (index -> name)."""
    out: dict[int, str] = {}
    for i, auth in enumerate(release.registry_auth):
        if auth.password is None:
            continue
        name = moved_name(release, i)
        held = (await hub.store.sealed_secrets([name])).get(name)
        if held is not None and box.open(name, held.sealed) != auth.password:
            name = f"{name}.{key.replace(' ', '.')}"  # another value holds the name
        out[i] = name[:128]  # the longest secret name
    return out


def _named(release: Release, names: dict[int, str]) -> Release:
    doc = release.model_dump(mode="json")
    doc["registry_auth"] = _named_auths(doc, names)
    return Release.model_validate(doc)


def _named_auths(release_doc: dict[str, Any], names: dict[int, str]) -> list[dict[str, Any]]:
    auths = [dict(a) for a in release_doc.get("registry_auth") or []]
    for i, name in names.items():
        auths[i].update(password=None, password_secret=name)
    return auths


def _sign(hub: HubContext, payload: dict[str, Any]) -> SignedTarget:
    """Sign a target payload again, as it is (same revision), with the hub's key."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    private = hub.pki.signing_key
    return SignedTarget(
        payload=base64.b64encode(raw).decode(),
        signature=base64.b64encode(private.sign(raw)).decode(),
        key_id=key_id(private.public_key()),
    )


def _audit(hub: HubContext, sealed: SealedSecret, where: str) -> AuditRecord:
    return AuditRecord(
        ACTOR,
        "secret.move",
        sealed.name,
        "ok",
        hub.now(),
        {"key_id": sealed.key_id, "moved_from": where, "migration": 22},
    )
