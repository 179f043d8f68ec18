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
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import SecretKeyError

KEY_DIR = "secret-keys"
CURRENT = "current"
NONCE_BYTES = 12


class SecretBox:
    """Seal and open secret values with the hub's secret keys."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise SecretKeyError(f"current secret key {current!r} is missing")
        self._keys = keys
        self.current = current

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
        return cls(keys, current)

    def seal(self, name: str, value: str) -> str:
        """Return ``value`` encrypted under the current key, bound to ``name``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._keys[self.current]).encrypt(nonce, value.encode(), name.encode())
        return f"{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, name: str, sealed: str) -> str:
        """Return the value sealed for ``name``; SecretKeyError if it does not open."""
        key_id, _, blob = sealed.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise SecretKeyError(f"secret {name!r} is sealed under unknown key {key_id!r}")
        try:
            raw = base64.b64decode(blob, validate=True)
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode())
        except (ValueError, InvalidTag) as exc:
            raise SecretKeyError(f"secret {name!r} does not open with key {key_id!r}") from exc
        return plain.decode()

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
