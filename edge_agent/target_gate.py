"""The gate every target from the hub passes: verify, then hand over or audit the refusal.

A target is accepted only if it is signed by the pinned hub key, addressed to this
device, newer than the newest target this device has accepted (so a replay of an older
one — or of the same one after a restart — is refused), and not expired. A refused
target is an audit record and is never handed to the agent. A target is read
tolerantly once its signature verifies: fields this agent does not know are ignored,
counted (``target_unknown_fields``) and named in an ``unknown_fields`` event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import TargetRejected
from edge_agent.models import Target
from edge_agent.protocol import SignedTarget
from edge_agent.signing import read_target
from edge_agent.store import AuditRow, Store

log = logging.getLogger(__name__)

TargetHandler = Callable[[Target, SignedTarget], Awaitable[None]]
SEEN_MAX = 64
MAX_NAMED_FIELDS = 50  # unknown fields named in one event (the count says how many)


class TargetGate:
    """Verify targets; pass good ones to ``on_target``, audit and drop the others."""

    def __init__(
        self,
        store: Store,
        public_key: Ed25519PublicKey,
        device_id: str,
        on_target: TargetHandler,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.public_key = public_key
        self.device_id = device_id
        self.on_target = on_target
        self.clock = clock
        self.known_revision = 0  # newest accepted target; anything <= it is a replay
        self.applied_revision = 0  # newest target that converged healthy (reported)
        self.poll_after = 0  # long-poll cursor: also past verified-but-refused (expired)
        self._loaded = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unknown_seen: set[str] = set()  # field sets already reported as an event
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the known and applied revisions from the store (known only once)."""
        if not self._loaded:
            latest = await self.store.latest_target()
            self.known_revision = max(self.known_revision, latest.revision if latest else 0)
            self.poll_after = max(self.poll_after, self.known_revision)
            self._loaded = True
        good = await self.store.last_good_target()
        self.applied_revision = good.revision if good else 0

    async def deliver(self, signed: SignedTarget, *, source: str) -> int | None:
        """Verify and hand over one target; return its revision, or None if not accepted."""
        async with self._lock:
            digest = hashlib.sha256(f"{signed.payload}.{signed.signature}".encode()).hexdigest()
            if digest in self._seen:
                return None  # the same message again (sync reply and long-poll race)
            self._remember(digest)
            try:
                target, unknown = read_target(
                    signed,
                    self.public_key,
                    device_id=self.device_id,
                    applied_revision=self.known_revision,
                    now=self.clock(),
                )
            except TargetRejected as exc:
                await self._refuse(signed, exc, source)
                return None
            try:
                await self.on_target(target, signed)
            except TargetRejected as exc:  # the agent's own checks refused it
                await self._refuse(signed, exc, source)
                return None
            except BaseException:
                self._seen.pop(digest, None)  # not taken: let it be delivered again
                raise
            self.known_revision = max(self.known_revision, target.revision)
            self.poll_after = max(self.poll_after, target.revision)
            if unknown:
                await self._note_unknown(target.revision, unknown)
            return target.revision

    async def _note_unknown(self, revision: int, fields: list[str]) -> None:
        """Count a target carrying fields this agent does not know; an event once per set."""
        await self.store.bump("target_unknown_fields")
        key = ",".join(sorted(fields))
        if key in self._unknown_seen:
            return
        self._unknown_seen.add(key)
        log.warning("target revision %d carries fields this agent ignores: %s", revision, key)
        await self.store.append(
            "event",
            {
                "type": "unknown_fields",
                "document": "target",
                "revision": revision,
                "fields": sorted(fields)[:MAX_NAMED_FIELDS],
                "count": len(fields),
            },
        )

    def _remember(self, digest: str) -> None:
        self._seen[digest] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)

    async def _refuse(self, signed: SignedTarget, exc: TargetRejected, source: str) -> None:
        revision = self._trusted_revision(signed)
        if revision is not None:
            # Ours and genuinely signed (e.g. expired): do not ask for it again.
            self.poll_after = max(self.poll_after, revision)
        claimed = revision if revision is not None else _claimed_revision(signed)
        log.warning("refused target from %s: %s", source, exc.message)
        await self.store.append_audit(
            AuditRow(
                actor="hub",
                action="target.reject",
                object=f"target:{claimed if claimed is not None else '?'}",
                outcome="refused",
                detail={"reason": exc.message, "source": source, "key_id": signed.key_id},
            )
        )
        await self.store.bump("targets_refused")

    def _trusted_revision(self, signed: SignedTarget) -> int | None:
        """Return the revision of a target that is signed by our hub and addressed to us."""
        try:
            payload = base64.b64decode(signed.payload, validate=True)
            self.public_key.verify(base64.b64decode(signed.signature, validate=True), payload)
            doc = json.loads(payload)
        except (ValueError, InvalidSignature):
            return None
        if not isinstance(doc, dict) or doc.get("device_id") != self.device_id:
            return None
        revision = doc.get("revision")
        return revision if isinstance(revision, int) else None


def _claimed_revision(signed: SignedTarget) -> int | None:
    try:
        revision = json.loads(base64.b64decode(signed.payload)).get("revision")
    except (ValueError, AttributeError):
        return None
    return revision if isinstance(revision, int) else None
