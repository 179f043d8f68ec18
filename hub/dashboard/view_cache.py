"""The API's device views the dashboard's fleet pages share, built once per device change.

``hub.operator_api.device_view`` of 5,000 devices on every page request cost 60-200 ms.
The store hands back the same (frozen) record for a device row unchanged since its
previous listing (``SqliteStore.list_devices``), so a view is rebuilt here only for a
record not seen before, i.e. after a write to that device. Connectivity is the one field
that changes with time alone: it is computed for every request. The cache holds one view
per device listed in the last call (bounded by the fleet); every viewer shares it and
filters the views to its own scope afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiohttp import web

from hub.context import HubContext
from hub.fleet import connectivity
from hub.operator_api import device_view
from hub.store.records import DeviceRecord


class ViewCache:
    """Device id -> (the record a view was built from, that view)."""

    def __init__(self) -> None:
        self._views: dict[str, tuple[DeviceRecord, dict[str, Any]]] = {}
        self.built = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._views)

    def views(
        self, hub: HubContext, records: Iterable[DeviceRecord], now: datetime
    ) -> list[dict[str, Any]]:
        """Return the views of ``records`` (every listed device: the cache forgets others)."""
        fleet = hub.config.fleet
        fresh: dict[str, tuple[DeviceRecord, dict[str, Any]]] = {}
        out: list[dict[str, Any]] = []
        for d in records:
            hit = self._views.get(d.id)
            if hit is not None and hit[0] is d:
                view = hit[1]
                self.reused += 1
            else:
                view = device_view(hub, d, now)
                self.built += 1
            fresh[d.id] = (d, view)
            state = connectivity(d.last_contact, now, fleet.online_after_s, fleet.stale_after_s)
            out.append({**view, "connectivity": state.value})
        self._views = fresh
        return out


VIEWS = web.AppKey("dashboard_views", ViewCache)
