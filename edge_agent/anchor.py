"""Anti-rollback state kept beside the device identity, so a store wipe cannot reset it.

``anchor.json`` in the data directory (0600, written atomically and fsynced with its
directory) holds the highest target revision accepted from the hub and the id of the
hub's signing key it was accepted under (the pin), for one device id (a new enrollment
starts over), and the pinned release root with the newest release manifest version seen
(``release_trust``, edge_agent/release_pin.py). It is raised durably before a hub
target is activated; the lifecycle refuses any hub target not newer than it, even
when ``agent.db`` has been deleted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from edge_agent.enroll import _fsync_dir, _write_private
from edge_agent.errors import ConfigError

ANCHOR_FILE = "anchor.json"


class RevisionAnchor:
    """The highest accepted hub revision and the pinned key id, in one small file."""

    def __init__(self, data_dir: Path, device_id: str = "") -> None:
        self.path = data_dir / ANCHOR_FILE
        self.device_id = device_id
        self.revision = 0
        self.key_id = ""
        self.release_trust: dict[str, Any] | None = None

    def load(self) -> RevisionAnchor:
        """Read the file (a missing file is revision 0); raise ConfigError if unreadable.

        An anchor written for another device id belongs to an earlier enrollment: a new
        enrollment starts from revision 0 with the newly pinned key.
        """
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("device_id", "") != self.device_id:
                return self
            self.revision = int(doc.get("hub_revision", 0))
            self.key_id = str(doc.get("key_id", ""))
            self.release_trust = doc.get("release_trust")
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path}: unreadable anti-rollback anchor: {exc}") from exc
        return self

    def check_key(self, key_id: str) -> None:
        """Raise ConfigError if the pinned key is not the one the anchor was written under."""
        if self.key_id and key_id and self.key_id != key_id:
            raise ConfigError(
                f"{self.path}: hub signing key changed ({self.key_id} -> {key_id});"
                " re-enroll the device to trust a new hub key"
            )

    async def raise_to(self, revision: int, key_id: str) -> None:
        """Record ``revision`` durably if it is higher than the one recorded."""
        if revision <= self.revision and (key_id == self.key_id or not key_id):
            return
        new_revision = max(revision, self.revision)
        await self._save(new_revision, key_id or self.key_id, self.release_trust)
        self.revision, self.key_id = new_revision, key_id or self.key_id

    async def pin_release_trust(self, pinned: dict[str, Any]) -> None:
        """Record the pinned release root and manifest version durably."""
        if pinned == self.release_trust:
            return
        await self._save(self.revision, self.key_id, pinned)
        self.release_trust = pinned

    async def _save(self, revision: int, key_id: str, trust: dict[str, Any] | None) -> None:
        doc: dict[str, Any] = {"device_id": self.device_id, "hub_revision": revision}
        doc["key_id"] = key_id
        if trust is not None:
            doc["release_trust"] = trust
        await asyncio.to_thread(self._write, json.dumps(doc).encode())

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.path, data)
        _fsync_dir(self.path.parent)
