"""The target lifecycle: the pure decision table, and the serialized executor on a real store.

The executor runs against a real SQLite store; the only fakes are our own: a store whose
rollback write can be held (to widen the race window), and a converger that records
what it was asked to converge to.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.anchor import RevisionAnchor
from edge_agent.errors import ConfigError, TargetRejected
from edge_agent.lifecycle import Lifecycle, LifecyclePolicy, local_target
from edge_agent.models import ContainerStatus, CurrentService, Release, Service, Target
from edge_agent.rollout import (
    Accepted,
    Activate,
    ImagesReady,
    Judged,
    LifeState,
    MarkGood,
    Phase,
    Recheck,
    RetryDue,
    RollBack,
    ScheduleRetry,
    StartDeadline,
    decide,
    retry_delay_s,
)
from edge_agent.store import Store
from edge_agent.supervisor import RolloutVerdict

PENDING = RolloutVerdict("pending", "web: no container")
GOOD = RolloutVerdict("good")
BAD = RolloutVerdict("failed", "crash loop: web")
NO_PULL = RolloutVerdict("failed", "pull failed: images not present", kind="pull")

APPLYING = LifeState(1, Phase.APPLYING)
SETTLING = LifeState(1, Phase.SETTLING)


@pytest.mark.parametrize(
    ("state", "event", "next_state", "actions"),
    [
        (LifeState(), Accepted(1), APPLYING, [Activate(1)]),
        # a newer target replaces whatever is rolled out, in any phase
        (SETTLING, Accepted(2), LifeState(2, Phase.APPLYING), [Activate(2)]),
        (LifeState(1, Phase.ROLLED_BACK), Accepted(2), LifeState(2, Phase.APPLYING), [Activate(2)]),
        # the apply deadline starts when the images are present, once
        (APPLYING, ImagesReady(1), SETTLING, [StartDeadline(1)]),
        (SETTLING, ImagesReady(1), SETTLING, []),
        (APPLYING, Judged(1, PENDING), APPLYING, [Recheck()]),
        (SETTLING, Judged(1, GOOD), LifeState(1, Phase.GOOD), [MarkGood(1)]),
        (
            SETTLING,
            Judged(1, BAD),
            LifeState(1, Phase.ROLLED_BACK),
            [RollBack(1, "crash loop: web", pull=False)],
        ),
        (
            APPLYING,
            Judged(1, NO_PULL),
            LifeState(1, Phase.ROLLED_BACK, pull_failed=True),
            [RollBack(1, NO_PULL.reason, pull=True), ScheduleRetry(1)],
        ),
        # stale: about a target that is no longer rolled out (the item-5 race)
        (LifeState(2, Phase.APPLYING), Judged(1, BAD), LifeState(2, Phase.APPLYING), []),
        (LifeState(2, Phase.APPLYING), ImagesReady(1), LifeState(2, Phase.APPLYING), []),
        (LifeState(1, Phase.GOOD), Judged(1, BAD), LifeState(1, Phase.GOOD), []),
        # a pull failure is retried; a release failure or a superseded target is not
        (
            LifeState(1, Phase.ROLLED_BACK, pull_failed=True),
            RetryDue(1),
            APPLYING,
            [Activate(1)],
        ),
        (
            LifeState(1, Phase.FAILED, pull_failed=True),
            RetryDue(1),
            APPLYING,
            [Activate(1)],
        ),
        (LifeState(1, Phase.ROLLED_BACK), RetryDue(1), LifeState(1, Phase.ROLLED_BACK), []),
        (LifeState(2, Phase.APPLYING), RetryDue(1), LifeState(2, Phase.APPLYING), []),
    ],
)
def test_decision_table(state: LifeState, event: Any, next_state: LifeState, actions: list) -> None:
    assert decide(state, event) == (next_state, actions)


def test_retry_backoff_doubles_to_the_cap() -> None:
    assert [retry_delay_s(n, 10, 60) for n in (1, 2, 3, 4, 99)] == [10, 20, 40, 60, 60]


# ---- the executor, on a real store ------------------------------------------------------


def target(revision: int, version: str = "1", device_id: str = "dev-1") -> Target:
    """Return a one-service target (ready as soon as its container runs)."""
    svc = Service(name="web", image="img:1")
    release = Release(name="app", version=version, services=[svc])
    return Target(device_id=device_id, revision=revision, release=release, min_ready_s=0)


def running(t: Target) -> list[CurrentService]:
    """Return the engine state in which ``t`` runs."""
    svc = t.services()[0]
    return [
        CurrentService(
            name="web",
            container_id="c1",
            config_hash=svc.config_hash(),
            release=t.release.name,
            status=ContainerStatus.RUNNING,
            started_at=datetime.now(UTC) - timedelta(seconds=60),
        )
    ]


class Converger:
    """Records what the lifecycle asks the reconciler for."""

    def __init__(self) -> None:
        self.requested: list[Target | None] = []

    def request(self, target: Target | None) -> None:
        self.requested.append(target)

    def poke(self, reason: str) -> None:
        pass


class SlowRollbackStore(Store):
    """A store whose rollback write waits until the test lets it through."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rollback_started = asyncio.Event()
        self.release_rollback = asyncio.Event()

    async def set_target_state(self, target_id: int, state: str, *args: Any, **kw: Any) -> None:
        if state in ("rolled_back", "failed"):
            self.rollback_started.set()
            await self.release_rollback.wait()
        await super().set_target_state(target_id, state, *args, **kw)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await SlowRollbackStore(tmp_path / "agent.db").open()
    yield s
    await s.close()


async def settle(lc: Lifecycle) -> None:
    """Wait until every job the lifecycle started is done."""
    async with asyncio.timeout(10):
        while lc._jobs:
            await asyncio.gather(*list(lc._jobs), return_exceptions=True)


async def wait_for(cond: Any, attempts: int = 1000) -> None:
    for _ in range(attempts):
        if cond():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never held")


async def test_target_accepted_during_a_slow_rollback_is_applied(store: Any) -> None:
    """Item 5: a rollback that finishes after a newer target arrived must not override it."""
    looping: set[str] = set()
    conv = Converger()
    lc = Lifecycle(store, conv, device_id="dev-1", crash_looping=lambda: looping)
    t1, t2, t3 = target(1, "1"), target(2, "2"), target(3, "3")
    await lc.accept(t1, source="hub", actor="hub")
    lc.images_ready(t1)
    lc.observed(running(t1))
    await settle(lc)
    assert lc.state.phase is Phase.GOOD

    await lc.accept(t2, source="hub", actor="hub")
    lc.images_ready(t2)
    looping.add("web")
    lc.observed([])
    await store.rollback_started.wait()  # the rollback now awaits its store write
    looping.clear()
    delivery = asyncio.create_task(lc.accept(t3, source="hub", actor="hub"))
    await asyncio.sleep(0.05)
    store.release_rollback.set()
    await delivery
    await settle(lc)

    states = {t.revision: t.state for t in await store.target_history()}
    assert states == {1: "good", 2: "rolled_back", 3: "applying"}
    assert conv.requested[-1] == t3, "the rollback overrode the newer target"
    assert lc.desired == t3
    lc.images_ready(t3)
    lc.observed(running(t3))
    await settle(lc)
    assert (await store.get_target(3)).state == "good"  # type: ignore[union-attr]


async def test_pull_failure_is_recorded_as_such_and_retried(store: Any) -> None:
    """Item 6: a pull that misses its bound is a pull failure, retried with backoff."""
    store.release_rollback.set()
    conv = Converger()
    policy = LifecyclePolicy(pull_timeout_s=0.2, pull_retry_base_s=0.3, pull_retry_cap_s=1.0)
    lc = Lifecycle(store, conv, device_id="dev-1", policy=policy)
    t1 = target(1)
    await lc.accept(t1, source="hub", actor="hub")
    await asyncio.sleep(0.25)  # the pull bound passes without the images arriving
    lc.observed([])
    await settle(lc)
    stored = await store.get_target(1)
    assert stored.state == "pull_failed" and stored.reason.startswith("pull failed")
    audit = [r for r in await store.audit_log() if r["action"] == "target.fail"]
    assert audit and '"cause":"pull"' in audit[0]["detail"]
    # retried after the backoff: applying again, and this time the images arrive
    await wait_for(lambda: lc.state.phase is Phase.APPLYING)
    await settle(lc)
    assert (await store.get_target(1)).state == "applying"  # type: ignore[union-attr]
    lc.images_ready(t1)
    lc.observed(running(t1))
    await settle(lc)
    assert (await store.get_target(1)).state == "good"  # type: ignore[union-attr]


async def test_local_apply_does_not_consume_the_hub_revision_space(store: Any) -> None:
    """Item 8: a technician's revision 2^63-1 is a local sequence; hub target 1 still applies."""
    store.release_rollback.set()
    lc = Lifecycle(store, Converger(), device_id="dev-1")
    body = {"revision": 2**63 - 1, "release": target(1).release.model_dump(mode="json")}
    ref = await lc.accept(local_target(body, "dev-1"), source="local", actor="tech")
    assert (ref.stored.revision, ref.stored.local_seq) == (0, 1)
    assert await lc.hub_floor() == 0
    hub = await lc.accept(target(1, "9"), source="hub", actor="hub")
    assert hub.stored.revision == 1 and lc.desired == hub.target
    assert lc.desired.release.version == "9"
    with pytest.raises(TargetRejected):
        await lc.accept(target(1, "10"), source="hub", actor="hub")


async def test_store_wipe_does_not_reset_the_revision_floor(tmp_path: Path) -> None:
    """Item 10: the anchor beside the identity survives a wiped agent.db."""
    anchor = RevisionAnchor(tmp_path / "ident", "dev-1").load()
    s1 = await Store(tmp_path / "a.db").open()
    lc = Lifecycle(s1, Converger(), device_id="dev-1", anchor=anchor, key_id="k1")
    await lc.accept(target(5), source="hub", actor="hub")
    await s1.close()
    (tmp_path / "a.db").unlink()
    s2 = await Store(tmp_path / "a.db").open()
    try:
        fresh = RevisionAnchor(tmp_path / "ident", "dev-1").load()
        assert fresh.revision == 5 and fresh.key_id == "k1"
        lc2 = Lifecycle(s2, Converger(), device_id="dev-1", anchor=fresh, key_id="k1")
        with pytest.raises(TargetRejected, match="not newer than 5"):
            await lc2.accept(target(4), source="hub", actor="hub")
    finally:
        await s2.close()
    mode = (tmp_path / "ident" / "anchor.json").stat().st_mode & 0o777
    assert mode == 0o600


async def test_wiped_store_replay_of_an_old_signed_target_is_refused(tmp_path: Path) -> None:
    """Item 10: after agent.db is deleted, an old target signed by the hub is still a replay."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.signing import sign_target
    from edge_agent.target_gate import TargetGate

    key = Ed25519PrivateKey.generate()
    old, new = sign_target(target(3), key), sign_target(target(5), key)

    async def run(deliveries: list[Any]) -> tuple[list[int | None], list[dict[str, Any]]]:
        store = await Store(tmp_path / "agent.db").open()
        try:
            anchor = RevisionAnchor(tmp_path / "identity", "dev-1").load()
            lc = Lifecycle(store, Converger(), device_id="dev-1", anchor=anchor, key_id="k")

            async def on_target(t: Target, _signed: Any) -> None:
                await lc.accept(t, source="hub", actor="hub")

            gate = TargetGate(store, key.public_key(), "dev-1", on_target)
            await gate.load()
            results = [await gate.deliver(s, source="sync") for s in deliveries]
            return results, await store.audit_log()
        finally:
            await store.close()

    assert (await run([old, new]))[0] == [3, 5]
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"agent.db{suffix}").unlink(missing_ok=True)
    results, audit = await run([old])
    assert results == [None], "a replayed target was accepted after a store wipe"
    assert audit[0]["action"] == "target.reject" and "not newer than 5" in audit[0]["detail"]


async def test_anchor_pins_the_key_and_a_new_enrollment_starts_over(tmp_path: Path) -> None:
    anchor = RevisionAnchor(tmp_path, "dev-1").load()
    await anchor.raise_to(7, "key-a")
    same = RevisionAnchor(tmp_path, "dev-1").load()
    assert (same.revision, same.key_id) == (7, "key-a")
    with pytest.raises(ConfigError, match="signing key changed"):
        same.check_key("key-b")
    assert RevisionAnchor(tmp_path, "dev-2").load().revision == 0  # re-enrolled: new device id
    (tmp_path / "anchor.json").write_text("{not json")
    with pytest.raises(ConfigError, match="anchor"):
        RevisionAnchor(tmp_path, "dev-1").load()


class HeldWriteStore(Store):
    """A store whose target-state write of ``hold`` waits until the test lets it through."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hold: str | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def set_target_state(self, target_id: int, state: str, *args: Any, **kw: Any) -> None:
        if state == self.hold:
            self.held.set()
            await self.release.wait()
        await super().set_target_state(target_id, state, *args, **kw)


@pytest.mark.parametrize("hold", ["applying", "good"])
async def test_status_read_during_a_state_write_names_the_target_the_phase_is_about(
    tmp_path: Path, hold: str
) -> None:
    """The frozen agent once reported "good" with nothing running, mid-write."""
    store = await HeldWriteStore(tmp_path / "agent.db").open()
    try:
        lc = Lifecycle(store, Converger(), device_id="dev-1")
        t1, t2 = target(1, "1"), target(2, "2")
        await lc.accept(t1, source="hub", actor="hub")
        lc.images_ready(t1)
        lc.observed(running(t1))
        await settle(lc)
        store.hold = hold
        pending = asyncio.create_task(lc.accept(t2, source="hub", actor="hub"))
        if hold == "good":
            await pending
            lc.images_ready(t2)
            lc.observed(running(t2))
        await store.held.wait()  # the lifecycle now awaits its store write
        report = await lc.report()
        if hold == "applying":
            assert (report["rollout_state"], report["applying_revision"]) == ("applying", 2)
        else:
            assert (report["rollout_state"], report["running_revision"]) == ("good", 2)
        store.release.set()
        await pending
        await settle(lc)
    finally:
        await store.close()
