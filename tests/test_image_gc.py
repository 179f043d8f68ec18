"""Image garbage collection: the pure decision in tables, one run on the real engine.

Issue 7 item 11: nothing ever removed an image, so the disk reserve eventually blocked
every pull. Only this device's unused images go; the current and the previous release's
stay for rollback; an image any container uses (any device's, or none's) is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from docker_env import TestImages

from edge_agent.image_gc import (
    GcPolicy,
    ImageCollector,
    TargetImages,
    images_to_remove,
    is_pullable,
    kept_refs,
)
from edge_agent.models import Release, Service, Target
from edge_agent.runtime import DockerRuntime
from edge_agent.store import Store

R = "reg.example:5000/app"
NOW = 10_000.0
POLICY = GcPolicy(keep_good=2, min_unused_s=60, max_removals_per_run=2)


def t(rev: int, state: str, *images: str) -> TargetImages:
    """Return a target's images."""
    return TargetImages(rev, state, frozenset(images))


HISTORY = [
    t(5, "applying", f"{R}:5"),
    t(4, "good", f"{R}:4"),
    t(3, "rolled_back", f"{R}:3"),
    t(2, "good", f"{R}:2"),
    t(1, "good", f"{R}:1", "local/only:1"),
]
ALL = {f"{R}:{n}": f"id{n}" for n in range(1, 6)} | {"local/only:1": "idL"}
LONG_AGO = dict.fromkeys(ALL, 0.0)


@pytest.mark.parametrize(
    ("ref", "pullable"),
    [("reg.example/app:1", True), ("127.0.0.1:5000/a:1", True), ("localhost/a", True),
     ("busybox:1", False), ("library/busybox", False), ("edgefleet-test/good:1", False)],
)  # fmt: skip
def test_only_references_with_a_registry_host_are_pullable(ref: str, pullable: bool) -> None:
    assert is_pullable(ref) is pullable


def test_keeps_active_newest_and_the_two_newest_good_targets() -> None:
    assert kept_refs(HISTORY, 2) == {f"{R}:5", f"{R}:4", f"{R}:2"}
    assert kept_refs(HISTORY, 1) == {f"{R}:5", f"{R}:4"}
    assert kept_refs([], 2) == set()


@pytest.mark.parametrize(
    ("present", "in_use", "since", "remove", "why"),
    [
        (ALL, set(), LONG_AGO, [f"{R}:1", f"{R}:3"], "old images of this device go"),
        (ALL, {"id3"}, LONG_AGO, [f"{R}:1"], "a container (any device's) uses id3"),
        (ALL, set(), {f"{R}:1": NOW - 10, f"{R}:3": 0.0}, [f"{R}:3"], "1 unused only 10 s"),
        ({f"{R}:1": "id1"}, set(), LONG_AGO, [f"{R}:1"], "absent images are skipped"),
        (ALL | {f"{R}:1": "id4"}, set(), LONG_AGO, [f"{R}:3"], "same image as a kept one"),
    ],
)
def test_images_to_remove(
    present: dict[str, str], in_use: set[str], since: dict[str, float], remove: list[str], why: str
) -> None:
    plan = images_to_remove(HISTORY, present, in_use, since, NOW, POLICY)
    assert plan.remove == remove, why
    assert "local/only:1" not in plan.remove  # cannot be pulled again


def test_removals_per_run_are_bounded_and_the_rest_deferred() -> None:
    history = [t(10, "good", f"{R}:10")] + [t(n, "failed", f"{R}:{n}") for n in range(1, 6)]
    present = {f"{R}:{n}": f"id{n}" for n in (*range(1, 6), 10)}
    plan = images_to_remove(history, present, set(), dict.fromkeys(present, 0.0), NOW, POLICY)
    assert len(plan.remove) == 2 and len(plan.deferred) == 3


# -- one run on the real engine -------------------------------------------------------


@pytest.fixture
async def tagged(docker: aiodocker.Docker, images: TestImages) -> AsyncIterator[list[str]]:
    """Build three distinct images (a label each) under unique pullable-looking references."""
    repo = f"127.0.0.1:5000/gc-test-{uuid.uuid4().hex[:8]}/app"
    refs = [f"{repo}:{n}" for n in (1, 2, 3)]
    for ref in refs:
        dockerfile = f"FROM {images.local('good')}\nLABEL io.edgefleet.test.gc={ref}\n"
        proc = await asyncio.create_subprocess_exec(
            "docker", "build", "-q", "-t", ref, "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate(dockerfile.encode())
        assert proc.returncode == 0, out
    yield refs
    for ref in refs:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(ref)


def target(rev: int, image: str, device_id: str) -> Target:
    """Return a one-service target."""
    release = Release(name="app", version=str(rev), services=[Service(name="web", image=image)])
    return Target(device_id=device_id, revision=rev, release=release)


@pytest.mark.docker
async def test_collect_once_removes_this_devices_old_image_keeps_rollbacks(
    tmp_path: Any, tagged: list[str], runtime: DockerRuntime, device_id: str
) -> None:
    store = Store(tmp_path / "agent.db")
    await store.open()
    try:
        for rev, ref in enumerate(tagged, start=1):
            await store.save_target(
                rev, target(rev, ref, device_id).model_dump_json(), source="hub"
            )
            await store.set_target_state(rev, "good")
        gc = ImageCollector(runtime, store, GcPolicy(keep_good=2, min_unused_s=0))
        plan = await gc.collect_once()
        assert plan.remove == [tagged[0]]
        assert await runtime.image_id(tagged[0]) is None
        assert all([await runtime.image_id(r) for r in tagged[1:]])
        assert (await store.counters())["images_removed"] == 1
        events = [json.loads(r[0]) for r in await _events(store)]
        assert any(e.get("type") == "image_gc" and e["removed"] == [tagged[0]] for e in events)
        assert (await gc.collect_once()).remove == []  # nothing more to do
    finally:
        await store.close()


async def _events(store: Store) -> list[Any]:
    async with store.db.execute("SELECT payload FROM outbox WHERE kind = 'event'") as cur:
        return list(await cur.fetchall())


@pytest.mark.docker
async def test_collect_once_never_removes_an_image_an_unlabelled_container_uses(
    tmp_path: Any, tagged: list[str], runtime: DockerRuntime, device_id: str, docker: Any
) -> None:
    other = await docker.containers.create({"Image": tagged[0], "Cmd": ["true"]})
    store = Store(tmp_path / "agent.db")
    await store.open()
    try:
        for rev, ref in enumerate(tagged, start=1):
            doc = target(rev, ref, device_id).model_dump_json()
            await store.save_target(rev, doc, source="hub")
            await store.set_target_state(rev, "good")
        plan = await ImageCollector(runtime, store, GcPolicy(min_unused_s=0)).collect_once()
        assert plan.remove == [] and plan.in_use == [tagged[0]]
        assert await runtime.image_id(tagged[0]) is not None
    finally:
        await store.close()
        await other.delete(force=True)


@pytest.mark.docker
async def test_agent_removes_the_old_image_once_a_newer_target_is_good(
    tmp_path: Any, tagged: list[str], device_id: str, docker: Any
) -> None:
    from agentproc import AgentProcess
    from docker_env import cleanup_device, wait_for

    agent = AgentProcess(
        device_id,
        tmp_path / "agent",
        image_gc={"min_unused_s": 0, "check_interval_s": 0.3},
        logs={"enabled": False},
    )
    await agent.start()
    try:
        for rev, ref in enumerate(tagged, start=1):
            release = {
                "name": "app",
                "version": str(rev),
                "services": [{"name": "web", "image": ref}],
            }
            code, body = await agent.call("POST", "/v1/apply", {"release": release})
            assert code in (200, 201, 202), body

            async def good(rev: int = rev) -> bool:
                st = await agent.status()
                # Local applies number on top of the hub revision they are based on (0 here).
                return st["running_local_seq"] == rev and st["rollout_state"] == "good"

            await wait_for(good, timeout_s=60, interval_s=0.3)

        async def removed() -> bool:
            return not await _has(docker, tagged[0])

        await wait_for(removed, timeout_s=30, interval_s=0.3)
        assert await _has(docker, tagged[1]) and await _has(docker, tagged[2])
        st = await agent.status()
        assert st["counters"]["images_removed"] == 1
        assert st["tasks"]["image-gc"]["state"] == "running"
    finally:
        await agent.stop()
        agent.cleanup()
        await cleanup_device(docker, device_id)


async def _has(docker: Any, ref: str) -> bool:
    try:
        await docker.images.inspect(ref)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True
