"""What every handler needs, bundled once per application."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from hub.auth import OperatorAuth
from hub.config import HubConfig
from hub.notify import TargetNotifier
from hub.offload import SyncDecoder
from hub.pki import HubPKI
from hub.store import HubStore
from hub.sync_decode import SyncBounds


@dataclass
class HubContext:
    """The hub's configuration, keys, store and wake-ups."""

    config: HubConfig
    pki: HubPKI
    store: HubStore
    operators: OperatorAuth
    notifier: TargetNotifier = field(default_factory=TargetNotifier)
    sync_decoder: SyncDecoder = field(init=False)

    def __post_init__(self) -> None:
        limits = self.config.limits
        bounds = SyncBounds(
            limits.max_decompressed_bytes, limits.max_entries_per_batch, limits.max_error_fields
        )
        self.sync_decoder = SyncDecoder(
            bounds, inline_bytes=limits.inline_body_bytes, workers=limits.parse_workers
        )

    @staticmethod
    def now() -> datetime:
        """Return the current time (UTC)."""
        return datetime.now(UTC)


HUB = web.AppKey("hub", HubContext)


def ctx(request: web.Request) -> HubContext:
    """Return the hub context of a request."""
    return request.app[HUB]
