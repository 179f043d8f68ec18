"""Building blocks of the sync tests: an enrolled device with its store, gate and syncer;
and SIMULATED devices (real enrollment and protocol, no Docker) for fleet-scale tests."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from hubproc import HubProcess

from edge_agent.enroll import Identity, ca_fingerprint, enroll, load_identity
from edge_agent.models import Target
from edge_agent.protocol import SignedTarget, StatusSnapshot
from edge_agent.store import Store, StoreLimits
from edge_agent.sync import HubClient, Syncer, SyncLimits
from edge_agent.target_gate import TargetGate
from hub.testing import RunningHub, client_ssl_context, make_key_and_csr

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


# ---- SIMULATED devices at fleet scale -------------------------------------------------


def _sim_services(release: str | None) -> list[dict[str, Any]]:
    return [{"name": "web", "state": "running", "health": "none", "restarts": 0}] if release else []


@dataclass(eq=False)
class SimulatedRelease:
    """What a SIMULATED device runs: it takes a target's release at once and reports it
    good, or, when ``bad(release)``, failed on the device and rolled back to what it ran
    (as the agent reports an on-device rollback)."""

    bad: Callable[[str], bool] = lambda ref: False
    revision: int = 0
    release: str | None = None
    running_revision: int = 0
    applying_revision: int | None = None
    rollout_state: str | None = None
    received: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """Return the full status snapshot the device reports."""
        return {
            "full": True,
            "agent_version": "simulated",
            "target_revision": self.revision,
            "applied_revision": self.running_revision,
            "release": self.release,
            "state": "converged",
            "services": _sim_services(self.release),
            "running_revision": self.running_revision,
            "applying_revision": self.applying_revision,
            "rollout_state": self.rollout_state,
        }

    def take(self, signed: dict[str, Any]) -> bool:
        """Apply a signed target (good, or rolled back on the device); False if not newer."""
        target = json.loads(base64.b64decode(signed["payload"]))
        if int(target["revision"]) <= self.revision:
            return False
        ref = f"{target['release']['name']}@{target['release']['version']}"
        self.revision = int(target["revision"])
        self.received.append(ref)
        if self.bad(ref):
            self.applying_revision, self.rollout_state = self.revision, "rolled_back"
        else:
            self.release, self.running_revision = ref, self.revision
            self.applying_revision, self.rollout_state = None, "good"
        return True


@dataclass(eq=False, kw_only=True)
class SimulatedDevice(SimulatedRelease):
    """A SIMULATED device for fleet-scale tests and benchmarks: no Docker, no agent.

    Enrolled for real (its own key and client certificate) and speaking the real
    protocol over one kept-alive mTLS session: a long-poll (``GET /v1/target``) for its
    targets and a sync (``POST /v1/sync``, gzip) reporting each; what it runs is its
    ``SimulatedRelease`` state.
    """

    device_id: str
    session: aiohttp.ClientSession
    url: str
    # release -> perf_counter() when the hub answered the sync reporting it running
    reported: dict[str, float] = field(default_factory=dict)
    errors: int = 0

    async def sync(self) -> None:
        """Report the status; take a target the answer carries and report that too."""
        for _ in range(3):  # a target in the answer is applied, then reported at once
            body = {
                "protocol": 3,
                "epoch": "sim",
                "entries": [],
                "known_target_revision": self.revision,
                "status": self.status(),
            }
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            raw = gzip.compress(json.dumps(body).encode())
            async with self.session.post(f"{self.url}/v1/sync", data=raw, headers=headers) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{self.device_id}: sync answered {r.status}: {answer}")
            if self.release is not None:
                self.reported.setdefault(self.release, time.perf_counter())
            if not (answer.get("target") and self.take(answer["target"])):
                return

    async def poll(self, wait_s: float) -> None:
        """Hold one long-poll for a newer target; apply and report one that comes."""
        params = {"after": str(self.revision), "wait": str(wait_s)}
        async with self.session.get(f"{self.url}/v1/target", params=params) as r:
            if r.status == 204:
                return
            signed = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{self.device_id}: long-poll answered {r.status}: {signed}")
        if self.take(signed):
            await self.sync()

    async def run(self, wait_s: float = 30.0) -> None:
        """Long-poll for targets until cancelled (an error is counted, then retried)."""
        while True:
            try:
                await self.poll(wait_s)
            except (aiohttp.ClientError, TimeoutError, RuntimeError):
                self.errors += 1
                await asyncio.sleep(0.2)


async def enroll_simulated(
    hub: RunningHub,
    n: int,
    directory: Path,
    tags: dict[str, str],
    *,
    parallel: int = 16,
    bad: Callable[[str], bool] = lambda ref: False,
) -> list[SimulatedDevice]:
    """Enroll ``n`` SIMULATED devices with one token, each with its own mTLS session."""
    token = await hub.create_token(uses=n, expires_in_s=3600, tags=tags)
    gate = asyncio.Semaphore(parallel)
    connector = aiohttp.TCPConnector(ssl=hub.ssl_context(), limit=parallel)
    async with aiohttp.ClientSession(connector=connector) as enrolling:

        async def one(i: int) -> SimulatedDevice:
            async with gate:
                key_pem, csr_pem = make_key_and_csr()
                body = {"token": token, "csr_pem": csr_pem, "hostname": f"sim-{i:05d}"}
                async with enrolling.post(f"{hub.url}/v1/enroll", json=body) as r:
                    doc = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"enroll {i}: {r.status} {doc}")
            home = directory / f"sim-{i:05d}"
            home.mkdir(parents=True)
            (home / "device.key").write_bytes(key_pem)
            (home / "device.pem").write_text(doc["certificate_pem"])
            ssl_ctx = client_ssl_context(hub.ca_path, home / "device.pem", home / "device.key")
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=2),
                timeout=aiohttp.ClientTimeout(total=120),
            )
            return SimulatedDevice(
                device_id=doc["device_id"], session=session, url=hub.url, bad=bad
            )

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def close_simulated(devices: list[SimulatedDevice]) -> None:
    """Close every simulated device's session."""
    await asyncio.gather(*(d.session.close() for d in devices))
