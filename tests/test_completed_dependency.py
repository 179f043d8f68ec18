"""Dependency condition "completed" (feature "completed_dependency") on the real engine."""

from __future__ import annotations

import pytest
from docker_env import TestImages

from edge_agent.executor import Reconciler
from edge_agent.models import Dependency, Release, Service, Target, VolumeMount
from edge_agent.protocol import AGENT_FEATURES
from edge_agent.runtime import DockerRuntime

pytestmark = pytest.mark.docker

DATA = [VolumeMount(source="shared", target="/data")]


def _target(runtime: DockerRuntime, init_exit: int) -> Target:
    # init takes a while, then leaves a file; app refuses to run (exit 3) without it.
    init = Service(
        name="init",
        image="edgefleet-test/good:1",
        command=["/bin/sh", "-c", f"sleep 1.5; touch /data/ready; exit {init_exit}"],
        restart="no",
        volumes=DATA,
    )
    app = Service(
        name="app",
        image="edgefleet-test/good:1",
        command=["/bin/sh", "-c", "test -f /data/ready || exit 3; exec sleep 600"],
        restart="no",
        volumes=DATA,
        depends_on={"init": Dependency(condition="completed")},
    )
    release = Release(name="app", version="1", services=[init, app])
    return Target(device_id=runtime.device_id, revision=1, release=release)


async def test_completed_dependency_gates_its_dependent(
    runtime: DockerRuntime, images: TestImages
) -> None:
    reconciler = Reconciler(runtime)
    reconciler.request(_target(runtime, init_exit=0))
    assert await reconciler.converge(), reconciler.last_error
    found = {c.name: c for c in await runtime.list_services()}
    init, app = found["init"], found["app"]
    assert init.exit_code == 0 and init.finished_at is not None
    assert app.is_running, "app started after init had left /data/ready"
    assert app.started_at is not None and app.started_at >= init.finished_at


async def test_dependency_exiting_nonzero_fails_the_apply(
    runtime: DockerRuntime, images: TestImages
) -> None:
    reconciler = Reconciler(runtime, max_iterations=1)
    reconciler.request(_target(runtime, init_exit=4))
    assert not await reconciler.converge()
    message = str(reconciler.last_error)
    assert "dependency init did not complete" in message and "code 4" in message, message
    app = [c for c in await runtime.list_services() if c.name == "app"]
    assert app == [], "the dependent is never created"


def test_agent_reports_the_completed_dependency_feature() -> None:
    assert "completed_dependency" in AGENT_FEATURES
