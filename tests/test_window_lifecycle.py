"""Maintenance windows in the lifecycle executor, on a real store: wait, restore, immediate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.lifecycle import Lifecycle
from edge_agent.models import MaintenanceWindow, Target
from edge_agent.rollout import Phase
from edge_agent.store import Store
from tests.test_lifecycle import Converger, running, settle, target, wait_for


def window_from_now(open_in_s: float, length_s: float = 3600) -> MaintenanceWindow:
    """Return a UTC window that opens ``open_in_s`` from now."""
    start = datetime.now(UTC) + timedelta(seconds=open_in_s)
    end = start + timedelta(seconds=length_s)
    return MaintenanceWindow(
        start=start.strftime("%H:%M:%S"), end=end.strftime("%H:%M:%S"), tz="UTC"
    )


def windowed(revision: int, version: str, window: MaintenanceWindow, **kw: object) -> Target:
    return target(revision, version).model_copy(update={"window": window, **kw})


async def test_target_waits_for_its_window_then_applies(tmp_path: Path) -> None:
    store = await Store(tmp_path / "agent.db").open()
    conv = Converger()
    lc = Lifecycle(store, conv, device_id="dev-1")
    t1 = target(1)
    await lc.accept(t1, source="hub", actor="hub")
    lc.images_ready(t1)
    lc.observed(running(t1))
    await settle(lc)
    t2 = windowed(2, "2", window_from_now(1.5))
    await lc.accept(t2, source="hub", actor="hub")
    assert lc.state.phase is Phase.WAITING_WINDOW
    assert conv.requested == [t1], "a target with a closed window was applied at once"
    assert (await store.get_target(2)).state == "pending"  # type: ignore[union-attr]
    report = await lc.report()
    assert report["rollout_state"] == "waiting_window" and report["window_opens_at"]
    assert report["running_revision"] == 1 and report["applying_revision"] == 2
    audit = [r for r in await store.audit_log() if r["object"] == "target:2"]
    assert audit and '"window"' in audit[0]["detail"]
    await wait_for(lambda: conv.requested[-1] == t2, attempts=500)
    assert lc.state.phase is Phase.APPLYING
    await lc.close()
    await store.close()


async def test_waiting_target_rearms_on_restore(tmp_path: Path) -> None:
    store = await Store(tmp_path / "agent.db").open()
    lc = Lifecycle(store, Converger(), device_id="dev-1")
    t1 = windowed(1, "1", window_from_now(2.0))
    await lc.accept(t1, source="hub", actor="hub")
    await lc.close()  # the agent stops while the target waits
    conv = Converger()
    lc = Lifecycle(store, conv, device_id="dev-1")
    await lc.restore()
    assert lc.state.phase is Phase.WAITING_WINDOW and conv.requested == []
    await wait_for(lambda: conv.requested == [t1], attempts=600)
    await lc.close()
    await store.close()


async def test_immediate_target_ignores_a_closed_window(tmp_path: Path) -> None:
    store = await Store(tmp_path / "agent.db").open()
    conv = Converger()
    lc = Lifecycle(store, conv, device_id="dev-1")
    t1 = windowed(1, "1", window_from_now(3000), immediate=True)
    await lc.accept(t1, source="hub", actor="hub")
    assert lc.state.phase is Phase.APPLYING and conv.requested == [t1]
    await lc.close()
    await store.close()
