"""Building blocks of the sync tests: an enrolled device with its store, gate and syncer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from hubproc import HubProcess

from edge_agent.enroll import Identity, ca_fingerprint, enroll, load_identity
from edge_agent.models import Target
from edge_agent.protocol import SignedTarget, StatusSnapshot
from edge_agent.store import Store, StoreLimits
from edge_agent.sync import HubClient, Syncer, SyncLimits
from edge_agent.target_gate import TargetGate

FAST = SyncLimits(
    batch_max_entries=500,
    sync_interval_s=0.5,
    debounce_s=0.02,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    request_timeout_s=3.0,
    long_poll_s=5.0,
)


async def enroll_device(hub: HubProcess, data_dir: Path) -> Identity:
    """Enroll a new device, trusting the hub by its CA fingerprint."""
    fp = ca_fingerprint(hub.ca_path.read_text())
    return await enroll(hub.url, hub.create_token(), data_dir, ca_sha256=fp, hostname="t")


class Device:
    """An enrolled device's store, target gate and syncer, talking to ``url``."""

    def __init__(self, identity: Identity, store: Store, syncer: Syncer) -> None:
        self.identity = identity
        self.store = store
        self.syncer = syncer
        self.targets: list[Target] = []

    async def on_target(self, target: Target, signed: SignedTarget) -> None:
        """Store an accepted target, as the agent does."""
        await self.store.save_target(target.revision, signed.model_dump_json(), source="hub")
        self.targets.append(target)

    async def close(self) -> None:
        """Close the HTTP session and the store."""
        await self.syncer.client.close()
        await self.store.close()


async def open_device(
    data_dir: Path,
    url: str | None = None,
    *,
    limits: SyncLimits = FAST,
    store_limits: StoreLimits | None = None,
    status: Callable[[], Awaitable[StatusSnapshot]] | None = None,
) -> Device:
    """Open an enrolled device's store and build its syncer (optionally via a proxy URL)."""
    identity = load_identity(data_dir)
    assert identity is not None, f"{data_dir} is not enrolled"
    store = await Store(data_dir / "agent.db", limits=store_limits or unbounded()).open()
    client = HubClient(
        url or identity.hub_url, identity.ssl_context, request_timeout_s=limits.request_timeout_s
    )
    device = Device(identity, store, None)  # type: ignore[arg-type]
    gate = TargetGate(store, identity.signing_public_key(), identity.device_id, device.on_target)
    device.syncer = Syncer(store, client, gate, status=status, limits=limits)
    store.on_append = device.syncer.notify
    return device


def unbounded() -> StoreLimits:
    """Return store limits with no quotas and no disk reserve."""
    return StoreLimits(quotas={}, log_disk_reserve_bytes=0)


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> float:
    """Poll ``predicate`` every 10 ms until true; return the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(int(timeout_s * 100)):
        if await predicate():
            return loop.time() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout_s}s")
