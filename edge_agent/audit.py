"""Hash-chained audit records: each record's hash covers its fields and the previous hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


def chain_hash(prev: str, *fields: str) -> str:
    """Return the SHA-256 of the previous hash and this record's fields."""
    h = hashlib.sha256(prev.encode())
    for f in fields:
        h.update(b"\x1f")
        h.update(f.encode())
    return h.hexdigest()


def verify_chain(records: Iterable[Mapping[str, Any]]) -> int | None:
    """Return the id of the first record that breaks the chain (oldest first), or None."""
    prev = None
    for r in records:
        if prev is not None and r["prev_hash"] != prev:
            return int(r["id"])
        expected = chain_hash(
            r["prev_hash"], r["at"], r["actor"], r["action"], r["object"], r["outcome"], r["detail"]
        )
        if expected != r["hash"]:
            return int(r["id"])
        prev = r["hash"]
    return None
