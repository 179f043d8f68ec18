"""The overrides a device's next target carries: its groups', its own, then the request's."""

from __future__ import annotations

from edge_agent.models import Release
from hub.errors import NotFound
from hub.overrides import GroupOverrides, Overrides, for_release, merge_explicit, resolve_overrides
from hub.selector import parse
from hub.store import HubStore


async def overrides_for_target(
    store: HubStore, device_id: str, release: Release, explicit: Overrides
) -> Overrides:
    """Return the device's resolved overrides for ``release``, ``explicit`` on top.

    NotFound if the device is unknown; OverrideConflict (409) if two of its groups set
    one variable differently and the device does not settle it.
    """
    device = await store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    groups = [
        GroupOverrides(g.name, parse(g.selector), g.overrides) for g in await store.list_groups()
    ]
    own = await store.get_device_overrides(device_id)
    resolved = resolve_overrides(device.tags, own, groups)
    return merge_explicit(for_release(resolved, (s.name for s in release.services)), explicit)
