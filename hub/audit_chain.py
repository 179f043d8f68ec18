"""The hub's audit hash chain: record hashes, secret redaction, and offline verification.

Every hub audit row carries ``prev_hash`` (the hash of the row before it, "" for the
first) and ``hash``: SHA-256 over the canonical JSON array of the row's stored fields
(id, prev_hash, at, actor, action, target, outcome, detail text, source address). The
store's single writer computes it inside the transaction that inserts the row (the SQL
function ``audit_hash``, registered by ``register``), so the chain is total. Ids are
consecutive (AUTOINCREMENT, and ``INSERT_AUDIT`` takes the next one explicitly): a gap
is a deleted record. The hash is unkeyed: it proves the rows were not changed by anyone
who did not also rewrite every later hash; ``audit verify`` prints the head hash so an
operator can anchor it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDACTED = "[redacted]"
# Keys whose values are secrets wherever they appear in an audit row's parameters.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "apikey",
        "authorization",
        "private_key",
        "client_secret",
        "credentials",
    }
)
CHAIN_COLUMNS = "id, at, actor, action, target, outcome, detail, source_addr, prev_hash, hash"


def is_secret_key(key: str) -> bool:
    """Return whether a parameter of this name holds a secret."""
    k = key.lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(("_password", "_secret", "_token"))


def redact(value: Any) -> Any:
    """Return ``value`` with every secret-named key's value replaced, at any depth."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def record_hash(
    id_: int,
    prev_hash: str,
    at: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: str,
    source_addr: str,
) -> str:
    """Return the chain hash of one row from its stored (text) fields."""
    fields = [id_, prev_hash, at, actor, action, target, outcome, detail, source_addr]
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def register(db: sqlite3.Connection) -> None:
    """Make ``audit_hash(...)`` available to SQL on this connection (the writer's)."""
    db.create_function("audit_hash", 9, record_hash, deterministic=True)


def backfill(db: sqlite3.Connection) -> None:
    """Chain the rows written before the chain existed, in id order (migration 10)."""
    prev = ""
    rows = db.execute(f"SELECT {CHAIN_COLUMNS} FROM audit ORDER BY id").fetchall()
    for row in rows:
        digest = record_hash(row[0], prev, *row[1:8])
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row[0]))
        prev = digest


@dataclass(frozen=True)
class Verdict:
    """The outcome of walking a chain: how many records held, and the first broken one."""

    count: int
    head: str
    broken_id: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Return whether the whole chain held."""
        return self.broken_id is None


def verify(rows: Iterable[tuple[Any, ...]], locate: Callable[[str], int | None]) -> Verdict:
    """Walk rows of CHAIN_COLUMNS in id order; stop at the first that breaks the chain.

    ``locate(hash)`` returns the id of the record with that hash (None if there is none);
    it tells a reordered record from a deleted or altered one.
    """
    last_id, last_hash, count = 0, "", 0
    for row in rows:
        id_, prev_hash, digest = row[0], row[8], row[9]
        reason = _link_break(id_, prev_hash, last_id, last_hash, locate)
        if reason is None and record_hash(id_, prev_hash, *row[1:8]) != digest:
            reason = "altered: its fields do not match its hash"
        if reason is not None:
            return Verdict(count, last_hash, id_, reason)
        last_id, last_hash, count = id_, digest, count + 1
    return Verdict(count, last_hash)


def _link_break(
    id_: int, prev_hash: str, last_id: int, last_hash: str, locate: Callable[[str], int | None]
) -> str | None:
    if id_ != last_id + 1:
        missing = f"{last_id + 1}" if id_ == last_id + 2 else f"{last_id + 1}..{id_ - 1}"
        return f"deleted: record(s) {missing} before it are missing (gap in ids)"
    if prev_hash == last_hash:
        return None
    where = locate(prev_hash) if prev_hash else None
    if where is not None and where != last_id:
        return f"reordered: the record it follows is record {where}, not record {last_id}"
    return (
        f"broken link: its prev_hash does not match record {last_id}'s hash "
        "(a record deleted and the rest renumbered, or prev_hash altered)"
    )


def verify_file(path: Path) -> Verdict:
    """Verify the audit chain of a hub SQLite file, opened read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:

        def locate(h: str) -> int | None:
            found = db.execute("SELECT id FROM audit WHERE hash = ? LIMIT 1", (h,)).fetchone()
            return int(found[0]) if found else None

        cursor = db.execute(f"SELECT {CHAIN_COLUMNS} FROM audit ORDER BY id")
        return verify(cursor, locate)
    finally:
        db.close()


async def verify_on_postgres(conn: Any, batch: int = 5000) -> Verdict:
    """Verify the audit chain of a hub PostgreSQL database on the asyncpg connection ``conn``
    (in the caller's transaction; rows read in pages of ``batch``: the walk runs in a thread
    that asks this event loop for each page)."""
    import asyncio

    loop = asyncio.get_running_loop()

    def ask(sql: str, *args: Any) -> list[Any]:
        return asyncio.run_coroutine_threadsafe(conn.fetch(sql, *args), loop).result()

    def rows() -> Iterable[tuple[Any, ...]]:
        after = 0
        while page := ask(
            f"SELECT {CHAIN_COLUMNS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2", after, batch
        ):
            yield from (tuple(r) for r in page)
            after = page[-1][0]

    def locate(h: str) -> int | None:
        found = ask("SELECT id FROM audit WHERE hash = $1 LIMIT 1", h)
        return int(found[0][0]) if found else None

    return await asyncio.to_thread(verify, rows(), locate)
