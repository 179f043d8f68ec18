"""Shared fixtures: the real Docker engine, the loopback registries, per-test devices.

Tests marked ``docker`` or ``registry`` (or using any fixture below that needs the
engine) get a ready environment: ``scripts/testenv.sh`` runs once per session if
something is missing. Without one, tests are skipped locally and fail under CI=true.
Plain helpers are in ``tests/docker_env.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import aiodocker
import docker_env
import pytest
from docker_env import TestImages

from edge_agent.runtime import DockerRuntime
from hub import testing as hub_testing

NEEDS_ENGINE_MARKERS = ("docker", "registry")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give tests marked docker/registry the ``testenv`` fixture."""
    for item in items:
        if any(item.get_closest_marker(m) for m in NEEDS_ENGINE_MARKERS):
            item.fixturenames.insert(0, "testenv")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _drop_test_hub_databases() -> Iterator[None]:
    """Drop the PostgreSQL databases of the hubs a test started (EDGEFLEET_TEST_STORE=postgres)
    once the test is done; a session hub's database goes at the end of the session."""
    before = set(hub_testing.TEST_DATABASES)
    yield
    hub_testing.drop_test_databases(sorted(set(hub_testing.TEST_DATABASES) - before))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop what is left of the test hubs' PostgreSQL databases (the session's own hubs)."""
    hub_testing.drop_test_databases()


@pytest.fixture(scope="session")
def testenv() -> TestImages:
    """Return the test images once engine and registries are ready (runs testenv.sh once)."""
    try:
        return docker_env.ensure_env()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"test environment unavailable in CI: {exc}", pytrace=False)
        pytest.skip(f"test environment unavailable: {exc}")


@pytest.fixture
def images(testenv: TestImages) -> TestImages:
    """Return the test image references (tags, digests, auth registry)."""
    return testenv


@pytest.fixture
def registry(testenv: TestImages) -> str:
    """Return the open loopback registry's address, ``127.0.0.1:5000``."""
    return testenv.registry


@pytest.fixture
def auth_registry(testenv: TestImages) -> str:
    """Return the htpasswd registry's address (user ``edge``, password ``edgepass``)."""
    return testenv.auth_registry


@pytest.fixture
def device_id() -> str:
    """Return a device id unique to this test."""
    return docker_env.new_device_id()


@pytest.fixture
async def docker(testenv: TestImages) -> AsyncIterator[aiodocker.Docker]:
    """Yield a raw aiodocker client, for what a test must do behind the runtime's back."""
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def runtime_factory(
    docker: aiodocker.Docker,
) -> AsyncIterator[Callable[..., DockerRuntime]]:
    """Yield ``make(device_id, **kwargs) -> DockerRuntime``; all are cleaned up after."""
    made: list[DockerRuntime] = []

    def make(device_id: str, **kwargs: object) -> DockerRuntime:
        rt = DockerRuntime(device_id, **kwargs)  # type: ignore[arg-type]
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in made:
            await docker_env.cleanup_device(docker, rt.device_id)
            await rt.close()


@pytest.fixture
async def runtime(runtime_factory: Callable[..., DockerRuntime], device_id: str) -> DockerRuntime:
    """Return a DockerRuntime for ``device_id``; its objects are removed after the test."""
    return runtime_factory(device_id)
