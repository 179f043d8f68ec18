"""PostgresStore's part for the audit query over hub and device records (pg migration 5).

The listing of ``hub.store.sqlite_audit``, on PostgreSQL: hub rows in id order, each
device record after the hub row that was last when it arrived (``device_audit.feed_after``,
taken under the audit lock by ``pg_ingest_side``), so paging by ``AuditCursor`` returns
every matching record exactly once also with several hub processes writing. Rows are
turned into entries by SQLite's own codecs (``sqlite_audit.entry``, ``chain``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.store import sqlite_audit
from hub.store.pg_ingest_side import settle_audit_gap
from hub.store.records import AuditEntry, AuditQuery, DeviceAuditChain, iso_utc
from hub.store.sqlite_audit import DEVICE_SELECT, HUB_SELECT, chain, cutoff, entry

if TYPE_CHECKING:
    import asyncpg

CHAIN_SELECT = sqlite_audit.CHAIN_SELECT.replace("?", "$1")
EXPIRED_SELECT = sqlite_audit.EXPIRED_SELECT.replace("?", "$1")


class _Args:
    """Query parameters numbered as they are added ($1, $2, ...)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _filters(q: AuditQuery, device_column: str, a: _Args) -> list[str]:
    where: list[str] = []
    if q.actor is not None:
        where.append(f"actor = {a(q.actor)}")
    if q.action is not None:
        if q.action.endswith("*"):
            where.append(f"substr(action, 1, {a(len(q.action) - 1)}) = {a(q.action[:-1])}")
        else:
            where.append(f"action = {a(q.action)}")
    if q.devices is not None:
        where.append(f"{device_column} = ANY({a(sorted(q.devices))}::text[])")
    if q.since is not None:
        where.append(f"at >= {a(q.since)}")
    if q.until is not None:
        where.append(f"at < {a(q.until)}")
    return where


def _scope(q: AuditQuery, hub_rows: bool, a: _Args) -> list[str]:
    """Return the conditions of a scoped caller's view (``AuditScope``)."""
    if q.scope is None:
        return []
    if not hub_rows:
        return [f"device_id = ANY({a(sorted(q.scope.devices))}::text[])"]
    return [f"(actor = {a(q.scope.actor)} OR target = ANY({a(sorted(q.scope.targets))}::text[]))"]


def query_sql(q: AuditQuery) -> tuple[str, list[Any]]:
    """Return the SQL and parameters of one page of the query (sqlite_audit.query_sql's twin)."""
    c = q.cursor
    a = _Args()
    parts: list[str] = []
    if q.source in ("all", "hub"):
        where = [f"id > {a(c.pos)}", *_filters(q, "target", a), *_scope(q, True, a)]
        parts.append(f"{HUB_SELECT} WHERE {' AND '.join(where)}")
    if q.source in ("all", "device"):
        pos, rank, id_ = a(c.pos), a(c.rank), a(c.id)
        where = [f"(feed_after > {pos} OR (feed_after = {pos} AND ({rank} = 0 OR id > {id_})))"]
        where += [*_filters(q, "device_id", a), *_scope(q, False, a)]
        parts.append(f"{DEVICE_SELECT} WHERE {' AND '.join(where)}")
    sql = (
        f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS feed "
        f"ORDER BY pos, rank, id LIMIT {a(q.limit)}"
    )
    return sql, a.values


class PgAuditMixin:
    """The audit query and device chain reads on PostgreSQL."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

        async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def query_audit(self, q: AuditQuery) -> list[AuditEntry]:
        """Return one page of hub and device audit records matching ``q``, in feed order."""
        sql, args = query_sql(q)
        return [entry(tuple(r)) for r in await self._read(sql, *args)]

    async def device_audit_chain(self, device_id: str) -> DeviceAuditChain:
        """Return how the device's audit chain verified at the hub so far."""
        found = await self._read(CHAIN_SELECT, device_id)
        return chain(tuple(found[0]) if found else None)

    async def settle_audit_gaps(self, now: datetime, grace_s: float) -> int:
        """Declare the gap of every device whose records held ahead of it waited
        ``grace_s`` by ``now``; return how many gaps were declared (one transaction per
        device, its row locked as a sync's is)."""
        stamp = iso_utc(now)
        declared = 0
        for (device_id,) in await self._read(EXPIRED_SELECT, cutoff(now, grace_s)):
            async with self._tx() as conn:
                declared += await settle_audit_gap(conn, device_id, stamp, grace_s)
        return declared
