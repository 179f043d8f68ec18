"""The rollout engine: a background task of the hub that walks every active rollout.

Every ``rollouts.tick_s`` (or when woken) it loads the active rollouts, builds each
member's ``DeviceObservation`` from the device rows, asks the pure planner
(``hub.rollouts.plan_rollout``) for a ``Decision`` and applies it:

1. each ``TargetIssue`` becomes the device's next signed target (the release document
   from the releases store, the device's resolved overrides) through
   ``hub.operator_api.issue_target``: one store transaction per device, audited as
   ``target.set`` with the rollout named;
2. the issued revisions are recorded on the state (``record_revisions``);
3. the new state and one audit row per event are saved in ONE transaction, over the state
   the decision was planned from (compare-and-set: an operator's action in between wins,
   the engine replans on its next tick).

A crash between 1 and 3 leaves targets issued that the state does not record; the next
tick plans the same devices again (the order is deterministic) and issues them once more
(a newer revision of the same release). Operator actions and the engine take ``lock``,
so inside one hub process they never interleave.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from edge_agent.models import MaintenanceWindow, Release
from edge_agent.protocol import StatusSnapshot
from hub.background import BackgroundTask
from hub.context import HubContext
from hub.errors import HubError, NotFound, PolicyRefused
from hub.fleet import STATUS_FIELDS, connectivity, merge_status
from hub.metric_gate import point
from hub.operator_api import TargetOptions, issue_target
from hub.rollout_models import (
    ACTIVE_STATUSES,
    Decision,
    DeviceObservation,
    RolloutSpec,
    RolloutState,
    ServiceObservation,
    TargetIssue,
)
from hub.rollouts import plan_rollout, record_revisions
from hub.store import AuditRecord, DeviceRecord, RolloutRecord

log = logging.getLogger(__name__)
ENGINE_ACTOR = "rollout-engine"
HEALTH = {"healthy": True, "unhealthy": False}
POLICY_REFUSED = "rollout.policy_refused"  # a member's device policy refuses the release


@dataclass(frozen=True)
class Loaded:
    """A stored rollout, parsed."""

    record: RolloutRecord
    spec: RolloutSpec
    state: RolloutState


def load(record: RolloutRecord) -> Loaded:
    """Parse a stored rollout's spec and state."""
    return Loaded(
        record,
        RolloutSpec.model_validate_json(record.spec),
        RolloutState.model_validate_json(record.state),
    )


def to_record(loaded: Loaded, state: RolloutState) -> RolloutRecord:
    """Return the stored form of the rollout with ``state``."""
    r = loaded.record
    return RolloutRecord(
        r.id,
        r.release,
        r.spec,
        state.model_dump_json(),
        state.status.value,
        r.created_at,
        r.created_by,
        state.updated_at,
    )


def event_audits(
    rollout_id: str, decision: Decision, actor: str, now: datetime
) -> list[AuditRecord]:
    """Return one audit row per event of the decision."""
    return [
        AuditRecord(
            actor,
            f"rollout.{e.kind}",
            rollout_id,
            "ok",
            now,
            {"stage": e.stage, "detail": e.detail},
        )
        for e in decision.events
    ]


# ---- observations ---------------------------------------------------------------------

# What the gate reads of a device's reported status (``observe_device``).
GATE_FIELDS = ("release", "running_revision", "applying_revision", "rollout_state")


def _services(reports: list[dict[str, Any]] | None) -> tuple[ServiceObservation, ...]:
    return tuple(
        ServiceObservation(
            name=str(s.get("name", "")),
            running=s.get("state") == "running",
            healthy=HEALTH.get(str(s.get("health", "none"))),
            restarts=int(s.get("restarts") or 0),
            crash_loop=bool(s.get("crash_loop")),
        )
        for s in reports or []
    )


def observe_device(
    hub: HubContext, d: DeviceRecord, target_release: str | None, now: datetime
) -> DeviceObservation:
    """Return what the hub knows of the device now, as the gate reads it."""
    fleet = hub.config.fleet
    online = connectivity(d.last_contact, now, fleet.online_after_s, fleet.stale_after_s)
    about = d.applying_revision if d.applying_revision is not None else d.running_revision
    return DeviceObservation(
        device_id=d.id,
        online=online.value == "online",
        last_contact=d.last_contact,
        reported_at=d.status_at,
        target_release=target_release,
        release=d.release,
        revision=d.running_revision,
        rollout_revision=about,
        rollout_state=d.rollout_state,
        services=_services(d.services),
    )


def has_news(device: DeviceRecord, status: StatusSnapshot | None) -> bool:
    """Return whether a sync's status changes what the gate observes of the device.

    ``device`` is the row before the sync; the snapshot is merged as the store merges it
    (a delta changes only what it carries). Counters, errors, image ids: no news.
    """
    if status is None:
        return False
    before = {name: getattr(device, name) for name in STATUS_FIELDS}
    after = merge_status(before, status)
    if any(before[name] != after[name] for name in GATE_FIELDS):
        return True
    return _services(before["services"]) != _services(after["services"])


async def target_release(hub: HubContext, device_id: str) -> str | None:
    """Return the release (NAME@VERSION) of the device's newest target, if any."""
    record = await hub.store.get_target(device_id)
    if record is None:
        return None
    document = json.loads(base64.b64decode(record.signed.payload))
    release = document.get("release") or {}
    return f"{release.get('name')}@{release.get('version')}"


# device id -> (its target revision, that target's release): read once per new target.
TargetReleases = dict[str, tuple[int, str | None]]


async def observe(
    hub: HubContext,
    loaded: Loaded,
    now: datetime,
    *,
    devices: Sequence[DeviceRecord] | None = None,
    known: TargetReleases | None = None,
) -> dict[str, DeviceObservation]:
    """Return the observations of the rollout's members (the unassigned ones only while
    the rollout may still add devices: their current target release is read then, or
    taken from ``known`` while the device's target revision is unchanged)."""
    members = set(loaded.state.members)
    fleet = await hub.store.list_devices() if devices is None else devices
    known = {} if known is None else known
    adding = loaded.state.status.value == "running"
    out: dict[str, DeviceObservation] = {}
    for d in (d for d in fleet if d.id in members):
        previous = None
        if adding and d.id not in loaded.state.assignments:
            cached = known.get(d.id)
            if cached is None or cached[0] != d.target_revision:
                cached = known[d.id] = (d.target_revision, await target_release(hub, d.id))
            previous = cached[1]
        out[d.id] = observe_device(hub, d, previous, now)
    if loaded.spec.gate.has_metric_bounds:
        await _with_metrics(hub, loaded, out)
    return out


MAX_GATE_SAMPLES = 1000  # metrics samples of one device the gate reads per evaluation


async def _with_metrics(hub: HubContext, loaded: Loaded, out: dict[str, DeviceObservation]) -> None:
    """Add the samples taken since its soak started to each soaking member's observation."""
    for device_id, a in loaded.state.assignments.items():
        if device_id not in out or a.soak_started_at is None or a.healthy_at is not None:
            continue
        history = await hub.store.list_metrics(device_id, a.soak_started_at, MAX_GATE_SAMPLES)
        points = tuple(point(s.at, s.sample) for s in history.samples)
        out[device_id] = out[device_id].model_copy(update={"metrics": points})


# ---- applying a decision --------------------------------------------------------------


async def _release_document(hub: HubContext, ref: str) -> Release:
    name, _, version = ref.partition("@")
    record = await hub.store.get_release(name, version)
    if record is None:
        raise NotFound(f"no release {ref}")
    return Release.model_validate_json(record.document)


# How far back a rollback looks in a device's own targets for a release the hub does not
# hold (one set with ``edgectl target set FILE``, never created as a hub release).
TARGET_HISTORY = 50


async def _release_sent_to(hub: HubContext, device_id: str, ref: str) -> Release | None:
    """Return release ``ref`` as the hub last sent it to the device, if among its targets."""
    for record in await hub.store.list_targets(device_id, TARGET_HISTORY):
        document = json.loads(base64.b64decode(record.signed.payload))
        release = document.get("release") or {}
        if f"{release.get('name')}@{release.get('version')}" == ref:
            return Release.model_validate(release)
    return None


def target_options(spec: RolloutSpec, *, rollback: bool) -> TargetOptions:
    """Return how a rollout's target is applied: inside its window; a rollback at once.

    The window travels inside the signed target, so the agent honours it offline too.
    Without a window every target applies at once and none needs the "window" feature.
    """
    if spec.window is None or spec.tz is None:
        return TargetOptions()
    if rollback:
        return TargetOptions(immediate=True)
    start, _, end = spec.window.partition("-")
    return TargetOptions(window=MaintenanceWindow(start=start.strip(), end=end.strip(), tz=spec.tz))


async def issue(
    hub: HubContext, loaded: Loaded, issues: Sequence[TargetIssue], actor: str, now: datetime
) -> tuple[dict[str, int], list[AuditRecord]]:
    """Issue each target; return the revisions issued and audit rows of those not issued.

    Up to ``rollouts.issue_parallel`` at once (each its own transaction, so the store's
    group commit shares the fsyncs); the audit rows keep the order of ``issues``.
    """
    documents: dict[str, Release | HubError] = {}
    for ref in dict.fromkeys(i.release for i in issues if i.release is not None):
        try:
            documents[ref] = await _release_document(hub, ref)
        except HubError as exc:
            documents[ref] = exc
    gate = asyncio.Semaphore(hub.config.rollouts.issue_parallel)

    async def one(item: TargetIssue) -> int | AuditRecord:
        if item.release is None:
            return kept_audit(loaded, item, actor, now)
        async with gate:
            document = documents[item.release]
            if isinstance(document, NotFound) and item.rollback:
                # The device's previous release was never a hub release: send it back
                # as the hub sent it before.
                document = await _release_sent_to(hub, item.device_id, item.release) or document
            return await _issue_one(hub, loaded, item, document, actor, now)

    outcomes = await asyncio.gather(*(one(item) for item in issues))
    revisions: dict[str, int] = {}
    failures: list[AuditRecord] = []
    for item, outcome in zip(issues, outcomes, strict=True):
        if isinstance(outcome, AuditRecord):
            failures.append(outcome)
        else:
            revisions[item.device_id] = outcome
    return revisions, failures


async def _issue_one(
    hub: HubContext,
    loaded: Loaded,
    item: TargetIssue,
    document: Release | HubError,
    actor: str,
    now: datetime,
) -> int | AuditRecord:
    """Issue one target; return its revision, or the audit row saying why it was not."""
    detail: dict[str, Any] = {
        "rollout": loaded.record.id,
        "release": item.release,
        "rollback": item.rollback,
    }
    try:
        if isinstance(document, HubError):
            raise document
        audit = AuditRecord(actor, "target.set", item.device_id, "ok", now, detail)
        options = target_options(loaded.spec, rollback=item.rollback)
        record = await issue_target(hub, item.device_id, document, {}, options, audit)
        return record.revision
    except HubError as exc:
        reason = {**detail, "reason": exc.message}
        # A device whose policy refuses the release (its groups changed since the start).
        action = POLICY_REFUSED if isinstance(exc, PolicyRefused) else "rollout.issue_failed"
        return AuditRecord(actor, action, item.device_id, "error", now, reason)


def kept_audit(loaded: Loaded, item: TargetIssue, actor: str, now: datetime) -> AuditRecord:
    """Return the audit row of a rollback not sent: the device ran no release before.

    A target always names a release (of at least one service), so "no target" cannot be
    sent back; the device keeps the rollout's release and the gate says whether it runs it.
    """
    reason = (
        f"it ran no release before the rollout: nothing to send back, it keeps "
        f"{loaded.spec.release} unless it failed it on the device"
    )
    detail = {"rollout": loaded.record.id, "keeps": loaded.spec.release, "reason": reason}
    return AuditRecord(actor, "rollout.rollback_kept", item.device_id, "ok", now, detail)


async def apply(
    hub: HubContext,
    loaded: Loaded,
    decision: Decision,
    actor: str,
    now: datetime,
    extra: Sequence[AuditRecord] = (),
    counts: Counter[str] | None = None,
) -> RolloutState:
    """Issue the decision's targets, then save its state and audit rows in one transaction.

    ``counts`` (if given) counts the targets not issued, by audit action.
    """
    revisions, failures = await issue(hub, loaded, decision.issue, actor, now)
    if counts is not None:
        counts.update(f.action for f in failures)
    state = decision.state
    if revisions:
        state = record_revisions(state, revisions)
    audits = [*extra, *event_audits(loaded.record.id, decision, actor, now), *failures]
    await hub.store.save_rollout(to_record(loaded, state), loaded.record.updated_at, audits)
    return state


def _unchanged(old: RolloutState, decision: Decision) -> bool:
    if decision.issue or decision.events:
        return False
    return decision.state.model_copy(update={"updated_at": old.updated_at}) == old


# ---- the task ------------------------------------------------------------------------


class RolloutEngine:
    """Plans and applies every active rollout, every ``tick_s`` or when woken."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self._known: TargetReleases = {}  # the active rollouts' members only
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task = BackgroundTask("hub-rollout-engine", self._run)
        self._urgent = False  # woken by an operator: no coalescing wait
        self._members: frozenset[str] = frozenset()  # of the active rollouts, at the last tick
        self.ticks = 0
        self.reports = 0  # members' reports with news, each a wake-up (coalesced)
        self.failures = 0
        self.last_error: str | None = None
        self.not_issued: Counter[str] = Counter()  # targets not issued, by audit action
        self.relay: Callable[[], None] | None = None  # wakes the leader's engine (hub.leader)

    def stats(self) -> dict[str, Any]:
        """Return the engine's counters (shown on /healthz)."""
        return {
            "ticks": self.ticks,
            "reports": self.reports,
            "failures": self.failures,
            "last_error": self.last_error,
            "not_issued": dict(self.not_issued),
        }

    def wake(self) -> None:
        """Plan now rather than at the next tick (in the leader process, on PostgreSQL)."""
        self.wake_local()
        if self.relay is not None:
            self.relay()

    def wake_local(self) -> None:
        """Plan now, if this process runs the engine (another process asked)."""
        self._urgent = True
        self._wake.set()

    def on_report(self, device: DeviceRecord, status: StatusSnapshot | None) -> None:
        """Wake (coalesced) when a stored sync changed what the gate sees of a member.

        ``device`` is its row from before the sync. Called after the sync's commit.
        """
        if device.id in self._members and has_news(device, status):
            self.reports += 1
            self._wake.set()

    def start(self) -> None:
        """Start the background task."""
        self._task.start()

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        await self._task.stop()

    async def _run(self) -> None:
        config = self.hub.config.rollouts
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), config.tick_s)
            if self._wake.is_set() and not self._urgent and config.wake_coalesce_s > 0:
                await asyncio.sleep(config.wake_coalesce_s)  # the rest of the burst joins
            self._wake.clear()
            self._urgent = False
            async with self.lock:
                await self.tick()

    async def tick(self) -> None:
        """Step every active rollout once; a failing rollout is counted and logged, the
        others still step (the loop never dies of one)."""
        self.ticks += 1
        statuses = [s.value for s in ACTIVE_STATUSES]
        active = await self._active(statuses)
        members: set[str] = set()
        try:
            devices = await self.hub.store.list_devices() if active else []
        except Exception as exc:  # the store is away: counted, tried again next tick
            self._failed("devices", exc)
            return
        for record in active:
            try:
                loaded = load(record)
                members.update(loaded.state.members)
                await self.step(loaded, devices)
            except Exception as exc:  # counted, visible on /healthz, retried next tick
                self._failed(record.id, exc)
        for device_id in [d for d in self._known if d not in members]:
            del self._known[device_id]  # only the active rollouts' members are kept
        self._members = frozenset(members)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.error("rollouts: %s failed: %s", what, self.last_error, exc_info=exc)

    async def _active(self, statuses: list[str]) -> list[RolloutRecord]:
        try:
            return await self.hub.store.list_rollouts(statuses)
        except Exception as exc:
            self._failed("list", exc)
            return []

    async def step(self, loaded: Loaded, devices: Sequence[DeviceRecord] | None = None) -> None:
        """Plan the rollout against the fleet now and apply the decision."""
        now = self.hub.now()
        observations = await observe(self.hub, loaded, now, devices=devices, known=self._known)
        decision = plan_rollout(loaded.spec, loaded.state, observations, now)
        if _unchanged(loaded.state, decision):
            return
        await apply(self.hub, loaded, decision, ENGINE_ACTOR, now, counts=self.not_issued)


ENGINE = web.AppKey("rollout_engine", RolloutEngine)
