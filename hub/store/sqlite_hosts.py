"""SqliteStore's part for host container reports (migration 8).

The latest report per device replaces the one before; ``host_sightings`` keeps, per
image digest and per managed release the device shows, when the hub first saw it in an
unbroken run of reports (a key missing from a report is deleted). Both are bounded by
the protocol's HOST_CONTAINERS_MAX per device.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge_agent.protocol import HostContainerReport, StatusSnapshot
from hub.drift import sighting_keys
from hub.store import sqlite_rows as rows
from hub.store.records import HostReport

if TYPE_CHECKING:
    from collections.abc import Iterable


def save_host_report(
    db: sqlite3.Connection, device_id: str, status: StatusSnapshot, received: str
) -> None:
    """Replace the device's host report and update its sightings (inside a sync's job)."""
    containers = status.host_containers
    if containers is None:
        return
    total = max(status.host_containers_total or 0, len(containers))
    db.execute(
        "INSERT OR REPLACE INTO host_reports (device_id, containers, total, reported_at) "
        "VALUES (?,?,?,?)",
        (device_id, rows.dumps([c.model_dump() for c in containers]), total, received),
    )
    release = db.execute("SELECT release FROM devices WHERE id = ?", (device_id,)).fetchone()[0]
    keys = sighting_keys(containers, release)
    held = {
        k for (k,) in db.execute("SELECT key FROM host_sightings WHERE device_id = ?", (device_id,))
    }
    db.executemany(
        "DELETE FROM host_sightings WHERE device_id = ? AND key = ?",
        [(device_id, k) for k in held - keys],
    )
    db.executemany(
        "INSERT INTO host_sightings (device_id, key, first_seen) VALUES (?,?,?)",
        [(device_id, k, received) for k in sorted(keys - held)],
    )


def host_reports(
    reports: Iterable[tuple[Any, ...]], sightings: Iterable[tuple[Any, ...]]
) -> dict[str, HostReport]:
    """Return the stored rows as a report per device id."""
    seen: dict[str, dict[str, datetime]] = {}
    for device_id, key, first_seen in sightings:
        seen.setdefault(device_id, {})[key] = datetime.fromisoformat(first_seen)
    return {
        device_id: HostReport(
            [HostContainerReport.model_validate(c) for c in rows.loads(containers)],
            total,
            datetime.fromisoformat(reported_at),
            seen.get(device_id, {}),
        )
        for device_id, containers, total, reported_at in reports
    }


class HostsMixin:
    """Host container reports on SQLite."""

    if TYPE_CHECKING:

        async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]: ...

    async def list_host_reports(self) -> dict[str, HostReport]:
        """Return the latest host report of every device that sent one."""
        reports = await self._read(
            "SELECT device_id, containers, total, reported_at FROM host_reports"
        )
        sightings = await self._read("SELECT device_id, key, first_seen FROM host_sightings")
        return host_reports(reports, sightings)
