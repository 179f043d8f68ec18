"""Encryption of the hub's secrets at rest: AES-256-GCM under keys kept in the data dir.

    <data_dir>/secret-keys/<key_id>.key   32 random bytes each, mode 0600
    <data_dir>/secret-keys/current        the key id new values are sealed with

A sealed value is ``key_id:base64(nonce || ciphertext+tag)``; the secret's name is the
associated data, so a value copied to another name's row does not open. The key id in
each value lets ``edge-hub secrets rotate-key`` add a new current key and re-seal the
values under it while values under older keys still open. The value never leaves this
module in anything but the one call that needs it (``open``).
"""

from __future__ import annotations

import base64
import os
import secrets as pyrandom
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import SecretKeyError
from hub.store.records import AuditRecord, SealedSecret

if TYPE_CHECKING:
    from hub.store import HubStore

KEY_DIR = "secret-keys"
CURRENT = "current"
NONCE_BYTES = 12


class SecretBox:
    """Seal and open secret values with the hub's secret keys."""

    def __init__(self, keys: dict[str, bytes], current: str, data_dir: Path | None = None) -> None:
        if current not in keys:
            raise SecretKeyError(f"current secret key {current!r} is missing")
        self._keys = keys
        self.current = current
        self._data_dir = data_dir  # where a rotated key appears while the hub runs

    @classmethod
    def ensure(cls, data_dir: Path) -> SecretBox:
        """Load the keys from ``data_dir``; create the first one (0600) when there is none."""
        folder = data_dir / KEY_DIR
        if not (folder / CURRENT).exists():
            add_key(data_dir)
        return cls.load(data_dir)

    @classmethod
    def load(cls, data_dir: Path) -> SecretBox:
        """Load every key in ``data_dir`` and the current key's id."""
        folder = data_dir / KEY_DIR
        try:
            current = (folder / CURRENT).read_text().strip()
            keys = {p.stem: p.read_bytes() for p in folder.glob("*.key")}
        except OSError as exc:
            raise SecretKeyError(f"cannot read the secret keys in {folder}: {exc}") from exc
        bad = sorted(k for k, v in keys.items() if len(v) != 32)
        if bad:
            raise SecretKeyError(f"secret key(s) {', '.join(bad)} in {folder} are not 32 bytes")
        return cls(keys, current, data_dir)

    def seal(self, name: str, value: str) -> str:
        """Return ``value`` encrypted under the current key, bound to ``name``."""
        self._refresh()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._keys[self.current]).encrypt(nonce, value.encode(), name.encode())
        return f"{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, name: str, sealed: str) -> str:
        """Return the value sealed for ``name``; SecretKeyError if it does not open."""
        key_id, _, blob = sealed.partition(":")
        if key_id not in self._keys and self._data_dir is not None:
            self._reload()  # ``edge-hub secrets rotate-key`` ran beside this hub
        key = self._keys.get(key_id)
        if key is None:
            raise SecretKeyError(f"secret {name!r} is sealed under unknown key {key_id!r}")
        try:
            raw = base64.b64decode(blob, validate=True)
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode())
        except (ValueError, InvalidTag) as exc:
            raise SecretKeyError(f"secret {name!r} does not open with key {key_id!r}") from exc
        return plain.decode()

    def _refresh(self) -> None:
        if self._data_dir is not None and self._current_on_disk() != self.current:
            self._reload()  # rotated beside this hub: seal under the new key at once

    def _current_on_disk(self) -> str:
        assert self._data_dir is not None
        try:
            return (self._data_dir / KEY_DIR / CURRENT).read_text().strip()
        except OSError:
            return self.current

    def _reload(self) -> None:
        assert self._data_dir is not None
        fresh = SecretBox.load(self._data_dir)
        self._keys, self.current = fresh._keys, fresh.current

    def reseal(self, name: str, sealed: str) -> str:
        """Return the value re-sealed under the current key (as given if it is already)."""
        self._refresh()
        if self.key_of(sealed) == self.current:
            return sealed
        return self.seal(name, self.open(name, sealed))

    @staticmethod
    def key_of(sealed: str) -> str:
        """Return the id of the key a value is sealed under."""
        return sealed.partition(":")[0]


def add_key(data_dir: Path) -> str:
    """Create a new random key (0600) in ``data_dir`` and make it current; return its id."""
    folder = data_dir / KEY_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_id = pyrandom.token_hex(8)
    fd = os.open(folder / f"{key_id}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(AESGCM.generate_key(bit_length=256))
        f.flush()
        os.fsync(f.fileno())
    tmp = folder / f"{CURRENT}.tmp"
    tmp.write_text(key_id + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(folder / CURRENT)
    return key_id


async def rotate_key(data_dir: Path, store: HubStore) -> tuple[str, int]:
    """Add a new current key and re-seal every value under it; return (key id, count).

    Old keys stay (a running hub opens with them until it reloads); the store re-seals
    in one transaction with its audit row.
    """
    key_id = add_key(data_dir)
    box = SecretBox.load(data_dir)

    def reseal(s: SealedSecret) -> SealedSecret:
        return SealedSecret(s.name, box.reseal(s.name, s.sealed), box.current)

    audit = AuditRecord("edge-hub", "secret.rotate_key", key_id, "ok", datetime.now(UTC))
    count = await store.reseal_secrets(reseal, audit)
    return key_id, count
