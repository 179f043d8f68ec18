"""The agent's link to its hub: enrollment at first start, certificate renewal, sync loops.

Everything here is outbound: the device opens every connection and listens on nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.actions import ActionRunner
from edge_agent.config import AgentConfig
from edge_agent.enroll import Identity, enroll, load_identity, maintain_certificate
from edge_agent.errors import AgentError, ConfigError, HubRefused
from edge_agent.models import Target
from edge_agent.protocol import ServiceReport, SignedTarget, StatusSnapshot
from edge_agent.sync import HubClient, Reachability, Syncer, SyncLimits
from edge_agent.target_gate import TargetGate

if TYPE_CHECKING:
    from edge_agent.store import Store

log = logging.getLogger(__name__)


async def ensure_identity(config: AgentConfig) -> Identity:
    """Return this device's identity, enrolling first (retrying while the hub is away)."""
    ident = load_identity(config.data_dir)
    if ident is not None:
        return ident
    hub = config.hub
    if not hub.url or not hub.enrollment_token:
        raise ConfigError("hub.url is set but the device is not enrolled: set hub.enrollment_token")
    failures = 0
    while True:
        try:
            return await enroll(
                hub.url,
                hub.enrollment_token,
                config.data_dir,
                ca_file=hub.ca_file,
                ca_sha256=hub.ca_sha256,
                timeout_s=hub.request_timeout_s,
            )
        except HubRefused as exc:
            if not exc.retryable:
                raise ConfigError(f"the hub refused enrollment: {exc.message}") from exc
            err: AgentError = exc
        except AgentError as exc:
            if isinstance(exc, ConfigError) or not exc.retryable:
                raise
            err = exc
        failures += 1
        if failures == 1:
            log.warning("cannot enroll yet (will keep trying): %s", err.message)
        await asyncio.sleep(min(hub.backoff_cap_s, hub.backoff_base_s * 2 ** min(failures, 10)))


class LinkedAgent(Protocol):
    """What the hub link needs of the agent: its config and store, targets in, status out."""

    config: AgentConfig
    store: Store

    async def accept_target(self, target: Target, *, source: str, actor: str) -> Any:
        """Accept a verified hub target (serialized with rollbacks)."""
        ...

    async def status(self, *, counters: bool = True) -> dict[str, Any]:
        """Return the agent's status."""
        ...


class _BeatingReachability(Reachability):
    """Reachability that also reports each sync / long-poll round as a heartbeat."""

    def __init__(self, beat: Callable[[str], None]) -> None:
        super().__init__()
        self._beat = beat

    def failed(self, exc: BaseException) -> None:
        """Count a failed call and beat: a loop that keeps retrying is alive."""
        super().failed(exc)
        self._beat_current()

    def succeeded(self) -> None:
        """Note a successful call and beat."""
        super().succeeded()
        self._beat_current()

    def _beat_current(self) -> None:
        task = asyncio.current_task()
        if task is not None:  # the supervised task is named after its loop
            self._beat(task.get_name())


class HubLink:
    """Runs the sync loop, the target long-poll and certificate renewal for one agent."""

    def __init__(
        self, agent: LinkedAgent, identity: Identity, *, beat: Callable[[str], None] | None = None
    ) -> None:
        self.agent = agent
        self.identity = identity
        hub = agent.config.hub
        self.client = HubClient(
            identity.hub_url, identity.ssl_context, request_timeout_s=hub.request_timeout_s
        )
        self.gate = TargetGate(
            agent.store, identity.signing_public_key(), identity.device_id, self._on_target
        )
        self.syncer = Syncer(
            agent.store,
            self.client,
            self.gate,
            status=self._status,
            limits=SyncLimits(
                batch_max_entries=hub.batch_max_entries,
                batch_max_bytes=hub.batch_max_bytes,
                sync_interval_s=hub.sync_interval_s,
                backoff_base_s=hub.backoff_base_s,
                backoff_cap_s=hub.backoff_cap_s,
                request_timeout_s=hub.request_timeout_s,
                long_poll_s=hub.long_poll_s,
            ),
            reachability=_BeatingReachability(beat or (lambda _name: None)),
        )
        agent.store.on_append = self.syncer.notify
        self.actions = ActionRunner(
            agent,  # type: ignore[arg-type]  # the Agent: restart_service, runtime, status
            identity.signing_public_key(),
            identity.device_id,
        )
        self.syncer.on_actions = self.actions.receive

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]], float | None]]:
        """Return the background loops: name, factory, expected beat interval (None: none)."""
        hub = self.agent.config.hub
        # A round ends within its timeouts, or fails and waits at most the backoff cap.
        sync_round_s = hub.sync_interval_s + hub.backoff_cap_s + 2 * hub.request_timeout_s
        poll_round_s = hub.long_poll_s + hub.backoff_cap_s + 2 * hub.request_timeout_s
        return [
            ("sync", self.syncer.run, sync_round_s),
            ("long-poll", self.syncer.run_long_poll, poll_round_s),
            ("renew", lambda: maintain_certificate(self.identity, self.client.reload_tls), None),
            ("actions", self.actions.run, None),
        ]

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.client.close()

    async def _on_target(self, target: Target, signed: SignedTarget) -> None:
        await self.agent.accept_target(target, source="hub", actor="hub")

    async def _status(self) -> StatusSnapshot:
        st = await self.agent.status(counters=True)
        return StatusSnapshot(
            full=True,
            agent_version=st["agent_version"],
            target_revision=st["target_revision"],
            applied_revision=st["applied_revision"],
            release=st["release"],
            state=st["state"],
            services=[
                ServiceReport(
                    name=s["name"],
                    state=s["state"],
                    health=s["health"],
                    image=s["image"],
                    image_id=s["image_id"],
                    restarts=s["restarts"],
                    crash_loop=s["crash_loop"],
                    last_exit_code=s["last_exit_code"],
                )
                for s in st["services"]
            ],
            counters=st["counters"],
            last_error=st["last_error"],
            running_revision=st.get("running_revision"),
            running_local_seq=st.get("running_local_seq"),
            applying_revision=st.get("applying_revision"),
            applying_local_seq=st.get("applying_local_seq"),
            rollout_state=st.get("rollout_state"),
            host_containers=st.get("host_containers"),
            host_containers_total=st.get("host_containers_total"),
            window_opens_at=st.get("window_opens_at"),
            release_trust_stale=release_trust_stale(st),
        )


def release_trust_stale(status: dict[str, Any]) -> bool | None:
    """Return the stale-manifest flag of the local status for the hub (None: no pin)."""
    trust = status.get("release_trust")
    return bool(trust["stale"]) if isinstance(trust, dict) and "stale" in trust else None
