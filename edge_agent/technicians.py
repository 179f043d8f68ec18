"""Who may use the local API with a hub-issued technician token, judged offline.

The agent keeps what it needs across restarts and without the hub: the pinned hub
signing key (``hub-signing.pub``, from enrollment), the device's tags (meta
``device_tags``: from enrollment, then from every sync answer that carries them) and the
revoked token ids (table ``revoked_technicians``, store migration 6; each kept until
the token expires). Verification itself is ``edge_agent.techtoken``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import TechnicianRefused
from edge_agent.protocol import TechnicianUpdate
from edge_agent.store import Store
from edge_agent.techtoken import Claims, check_claims, verify_signature

log = logging.getLogger(__name__)
TAGS_META = "device_tags"


@dataclass
class TechnicianGate:
    """The pinned key and the enrollment's tags; ``authorize`` judges a token.

    Tags and revocations are read from the store at each call (two indexed reads): the
    sync client writes them there (``save_update``) and nothing else needs telling.
    """

    store: Store
    public_key: Any = None  # Ed25519PublicKey; None: not enrolled, no hub token is valid
    skew_s: float = 60.0
    enrolled_tags: dict[str, str] = field(default_factory=dict)

    async def authorize(self, token: str, *, write: bool, now: float | None = None) -> Claims:
        """Return the claims of a valid token for this request; raise TechnicianRefused."""
        if self.public_key is None:
            raise TechnicianRefused(
                "not_enrolled", "this device has no pinned hub key to verify technician tokens"
            )
        claims = verify_signature(token, self.public_key)
        raw = await self.store.get_meta(TAGS_META)
        async with self.store.db.execute(
            "SELECT 1 FROM revoked_technicians WHERE id = ?", (claims.id,)
        ) as cur:
            revoked = {claims.id} if await cur.fetchone() else set()
        try:
            check_claims(
                claims,
                now=time.time() if now is None else now,
                skew_s=self.skew_s,
                tags=json.loads(raw) if raw else self.enrolled_tags,
                revoked=revoked,
                write=write,
            )
        except TechnicianRefused as exc:
            exc.actor = f"technician:{claims.name}@{claims.id}"  # signed: the name is true
            raise
        return claims


async def save_update(store: Store, update: TechnicianUpdate, *, keep_s: float = 3600.0) -> None:
    """Store what a sync answer says: the revoked ids (durably) and the device's tags.

    The hub lists every revoked token until it expires; ids are kept here until
    ``keep_s`` after their expiry (beyond any clock-skew allowance), then forgotten.
    """
    floor = int(time.time() - keep_s)
    async with store.transaction() as db:
        await db.execute("DELETE FROM revoked_technicians WHERE expires_at < ?", (floor,))
        await db.executemany(
            "INSERT INTO revoked_technicians (id, expires_at) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET expires_at = excluded.expires_at",
            [(r.id, r.expires_at) for r in update.revoked],
        )
        if update.tags is not None:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (TAGS_META, json.dumps(update.tags, sort_keys=True)),
            )
