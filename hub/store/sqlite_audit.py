"""SqliteStore's part for the audit query over hub and device records (migration 10).

One listing, one cursor: hub rows in id order, and each device record placed after the
hub row that was last when it arrived (``device_audit.feed_after``). Both tables are
append-only, so the order (position, source, id) never inserts before a cursor already
handed out: paging by ``AuditCursor`` returns every matching record exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from hub import device_audit
from hub.device_audit import pending_text
from hub.store.records import AuditCursor, AuditEntry, AuditQuery, DeviceAuditChain, iso_utc

if TYPE_CHECKING:
    from hub.store.writer import GroupCommitWriter

HUB_SELECT = (
    "SELECT id AS pos, 0 AS rank, id, 'hub' AS source, '' AS device_id, 0 AS record_id, at, "
    "'' AS received_at, actor, action, target, outcome, detail, source_addr, hash, "
    "NULL AS broken, 0 AS held FROM audit"
)
DEVICE_SELECT = (
    "SELECT feed_after AS pos, 1 AS rank, id, 'device' AS source, device_id, record_id, at, "
    "received_at, actor, action, object AS target, outcome, detail, '' AS source_addr, hash, "
    "broken, held FROM device_audit"
)


def _filters(q: AuditQuery, device_column: str) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if q.actor is not None:
        where.append("actor = ?")
        args.append(q.actor)
    if q.action is not None:
        if q.action.endswith("*"):
            where.append("substr(action, 1, ?) = ?")
            args += [len(q.action) - 1, q.action[:-1]]
        else:
            where.append("action = ?")
            args.append(q.action)
    if q.devices is not None:
        where.append(f"{device_column} IN (SELECT value FROM json_each(?))")
        args.append(json.dumps(sorted(q.devices)))
    if q.since is not None:
        where.append("at >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("at < ?")
        args.append(q.until)
    return where, args


def _scope(q: AuditQuery, hub_rows: bool) -> tuple[list[str], list[Any]]:
    """Return the conditions of a scoped caller's view (``AuditScope``)."""
    if q.scope is None:
        return [], []
    if not hub_rows:
        return ["device_id IN (SELECT value FROM json_each(?))"], [
            json.dumps(sorted(q.scope.devices))
        ]
    cond = "(actor = ? OR target IN (SELECT value FROM json_each(?)))"
    return [cond], [q.scope.actor, json.dumps(sorted(q.scope.targets))]


def query_sql(q: AuditQuery) -> tuple[str, list[Any]]:
    """Return the SQL and parameters of one page of the query."""
    c = q.cursor
    parts: list[str] = []
    args: list[Any] = []
    if q.source in ("all", "hub"):
        where, wargs = _filters(q, "target")
        swhere, sargs = _scope(q, hub_rows=True)
        where, wargs = where + swhere, wargs + sargs
        where.insert(0, "id > ?")
        parts.append(f"{HUB_SELECT} WHERE {' AND '.join(where)}")
        args += [c.pos, *wargs]
    if q.source in ("all", "device"):
        where, wargs = _filters(q, "device_id")
        swhere, sargs = _scope(q, hub_rows=False)
        where, wargs = where + swhere, wargs + sargs
        where.insert(0, "(feed_after > ? OR (feed_after = ? AND (? = 0 OR id > ?)))")
        parts.append(f"{DEVICE_SELECT} WHERE {' AND '.join(where)}")
        args += [c.pos, c.pos, c.rank, c.id, *wargs]
    sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY pos, rank, id LIMIT ?"
    return sql, [*args, q.limit]


def entry(row: tuple[Any, ...]) -> AuditEntry:
    """Return an AuditEntry from a row of the query."""
    pos, rank, id_, source, device_id, record_id, at, received_at, *rest = row
    actor, action, target, outcome, detail, source_addr, hash_, broken, held = rest
    return AuditEntry(
        cursor=AuditCursor(pos, rank, id_),
        source=source,
        id=id_,
        device_id=device_id,
        record_id=record_id,
        at=at,
        received_at=received_at,
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        detail=json.loads(detail),
        source_addr=source_addr,
        hash=hash_,
        chain_broken=broken,
        held=bool(held),
    )


# Devices whose oldest held record waited past a cutoff (partial index of migration 25).
EXPIRED_SELECT = (
    "SELECT device_id FROM device_audit_chain WHERE held_since IS NOT NULL "
    "AND held_since <= ? ORDER BY held_since"
)


def cutoff(now: datetime, grace_s: float) -> str:
    """Return the ``held_since`` at or before which a gap expired by ``now``."""
    return iso_utc(now - timedelta(seconds=grace_s))


CHAIN_SELECT = (
    "SELECT last_id, verified, unverifiable, breaks, broken_id, broken_at, broken_reason, "
    "held_since, held_overflows, "
    "(SELECT COUNT(*) FROM device_audit WHERE device_id = c.device_id AND held = 1), "
    "(SELECT MIN(record_id) FROM device_audit WHERE device_id = c.device_id AND held = 1) "
    "FROM device_audit_chain AS c WHERE device_id = ?"
)


def chain(row: tuple[Any, ...] | None) -> DeviceAuditChain:
    """Return a device's chain verdict from a row of CHAIN_SELECT (none yet: empty);
    records held ahead of a gap are shown as pending, not as a break."""
    if row is None:
        return DeviceAuditChain(0, 0, 0, 0, None, None, None)
    *verdict, held_since, overflows, held, lowest = row
    return DeviceAuditChain(
        *verdict,
        held=held,
        held_since=held_since if held else None,
        pending=pending_text(verdict[0], lowest, held_since) if held else None,
        held_overflows=overflows,
    )


class AuditMixin:
    """The audit query and device chain reads of SqliteStore."""

    if TYPE_CHECKING:
        _w: GroupCommitWriter

    async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError  # provided by SqliteStore

    async def query_audit(self, q: AuditQuery) -> list[AuditEntry]:
        """Return one page of hub and device audit records matching ``q``, in feed order."""
        sql, args = query_sql(q)
        return [entry(r) for r in await self._read(sql, tuple(args))]

    async def device_audit_chain(self, device_id: str) -> DeviceAuditChain:
        """Return how the device's audit chain verified at the hub so far."""
        found = await self._read(CHAIN_SELECT, (device_id,))
        return chain(found[0] if found else None)

    async def settle_audit_gaps(self, now: datetime, grace_s: float) -> int:
        """Declare the gap of every device whose records held ahead of it waited
        ``grace_s`` by ``now``; return how many gaps were declared (one write per device)."""
        stamp = iso_utc(now)
        declared = 0
        for (device_id,) in await self._read(EXPIRED_SELECT, (cutoff(now, grace_s),)):

            def job(db: sqlite3.Connection, device_id: str = device_id) -> bool:
                return device_audit.settle(db, device_id, stamp, grace_s)

            declared += await self._w.submit(job)
        return declared
