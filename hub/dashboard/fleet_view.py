"""The fleet as the dashboard shows it: health, counts, filtering, sorting, paging. Pure.

Works on the API's device views (``hub.operator_api.device_view``), so a count on a page
is the count of the same field the API answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.fleet import Connectivity, Drift
from hub.selector import Selector, matches

HEALTH = ("healthy", "unhealthy", "unknown")
SORTS = ("id", "hostname", "last_contact", "connectivity", "drift", "release", "health")
ORDERS = ("asc", "desc")


def health(view: dict[str, Any]) -> str:
    """Return a device's health from its reported services.

    unknown: no full status yet; unhealthy: a service not running, unhealthy, or in a
    crash loop, or the last report carried an error; healthy: everything else.
    """
    services = view.get("services")
    if services is None:
        return "unknown"
    bad = any(
        s.get("state") != "running" or s.get("health") == "unhealthy" or s.get("crash_loop")
        for s in services
    )
    return "unhealthy" if bad or view.get("last_error") else "healthy"


@dataclass(frozen=True)
class FleetCounts:
    """How many devices are in each connectivity, drift and health state."""

    total: int
    connectivity: dict[str, int]
    drift: dict[str, int]
    health: dict[str, int]


def counts(views: Sequence[dict[str, Any]]) -> FleetCounts:
    """Return the counts of ``views`` (every state listed, zero when none)."""
    conn = Counter(v["connectivity"] for v in views)
    dr = Counter(v["drift"] for v in views)
    he = Counter(health(v) for v in views)
    return FleetCounts(
        len(views),
        {c.value: conn[c.value] for c in Connectivity},
        {d.value: dr[d.value] for d in Drift},
        {h: he[h] for h in HEALTH},
    )


@dataclass(frozen=True)
class DeviceFilter:
    """What the devices table shows ("" / None: no filter on that field)."""

    selectors: tuple[Selector, ...] = ()  # a tag selector and/or a group's: all must match
    connectivity: str = ""
    drift: str = ""
    health: str = ""
    release: str = ""
    text: str = ""
    sort: str = "id"
    order: str = "asc"

    def keeps(self, view: dict[str, Any]) -> bool:
        """Return whether the device passes every filter."""
        return (
            all(matches(s, view["tags"]) for s in self.selectors)
            and (not self.connectivity or view["connectivity"] == self.connectivity)
            and (not self.drift or view["drift"] == self.drift)
            and (not self.health or health(view) == self.health)
            and (not self.release or (view.get("release") or "") == self.release)
            and (not self.text or self.text.lower() in _haystack(view))
        )


def _haystack(view: dict[str, Any]) -> str:
    tags = " ".join(f"{k}={v}" for k, v in view["tags"].items())
    return f"{view['id']} {view['hostname']} {view.get('release') or ''} {tags}".lower()


def _key(sort: str) -> Any:
    if sort == "health":
        return lambda v: (health(v), v["id"])
    return lambda v: (v.get(sort) is None, str(v.get(sort) or ""), v["id"])


@dataclass(frozen=True)
class DevicePage:
    """One page of the filtered, sorted devices table."""

    rows: list[dict[str, Any]]
    matched: int
    page: int
    pages: int


def select(
    views: Sequence[dict[str, Any]], f: DeviceFilter, page: int, page_size: int
) -> DevicePage:
    """Return page ``page`` (from 1; past the end: the last) of the devices ``f`` keeps."""
    kept = sorted((v for v in views if f.keeps(v)), key=_key(f.sort), reverse=f.order == "desc")
    pages = max(1, -(-len(kept) // page_size))
    page = min(page, pages)
    start = (page - 1) * page_size
    return DevicePage(kept[start : start + page_size], len(kept), page, pages)
