"""Helpers for tests on the real Docker engine and the loopback registries.

The machine side is set up by ``scripts/testenv.sh`` (idempotent); this module only
checks it, runs the script when something is missing, and offers small builders and
cleanup for the tests. Fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker

from edge_agent.models import LABEL_DEVICE, LABEL_MANAGED, MANAGED_BY, Release, Service

REPO = Path(__file__).resolve().parent.parent
TESTENV_SCRIPT = REPO / "scripts" / "testenv.sh"
REGISTRY = "127.0.0.1:5000"
AUTH_REGISTRY = "127.0.0.1:5001"
AUTH_USER = "edge"
AUTH_PASSWORD = "edgepass"
# Built by testenv.sh from tests/images/<name>/Dockerfile; all pushed to REGISTRY.
IMAGE_NAMES = ("good", "crash", "unhealthy", "healthy", "slow")
AUTH_IMAGE_NAMES = ("good",)
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def local_image(name: str) -> str:
    """Return the engine-local tag of test image ``name``: ``edgefleet-test/<name>:1``."""
    return f"edgefleet-test/{name}:1"


def image_ref(name: str, registry: str = REGISTRY) -> str:
    """Return the registry tag of test image ``name``: ``<registry>/edgefleet/<name>:1``."""
    return f"{registry}/edgefleet/{name}:1"


def registry_digest(name: str, registry: str = REGISTRY, *, auth: bool = False) -> str | None:
    """Return the manifest digest the registry holds for test image ``name``, or None."""
    req = urllib.request.Request(
        f"http://{registry}/v2/edgefleet/{name}/manifests/1",
        method="HEAD",
        headers={"Accept": MANIFEST_V2},
    )
    if auth:
        token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers.get("Docker-Content-Digest")
    except (urllib.error.URLError, OSError):
        return None


@dataclass(frozen=True)
class TestImages:
    """References to the test images, by name (see IMAGE_NAMES)."""

    __test__ = False  # not a test class, despite the name

    registry: str = REGISTRY
    auth_registry: str = AUTH_REGISTRY
    digests: dict[str, str] = field(default_factory=dict)
    auth_digests: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        """Return ``127.0.0.1:5000/edgefleet/<name>:1``."""
        return image_ref(name, self.registry)

    def digest_ref(self, name: str) -> str:
        """Return ``127.0.0.1:5000/edgefleet/<name>@sha256:...``."""
        return f"{self.registry}/edgefleet/{name}@{self.digests[name]}"

    def auth_ref(self, name: str = "good") -> str:
        """Return the tag of ``name`` in the registry that needs credentials."""
        return image_ref(name, self.auth_registry)

    def local(self, name: str) -> str:
        """Return ``edgefleet-test/<name>:1`` (present on the engine, never pulled)."""
        return local_image(name)


def env_problem() -> str | None:
    """Return what is missing from the test environment, or None if it is ready."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return "Docker engine does not answer (docker version timed out)"
    if done.returncode != 0:
        return f"Docker engine not available: {done.stderr.strip() or done.stdout.strip()}"
    for name in IMAGE_NAMES:
        if registry_digest(name) is None:
            return f"image {image_ref(name)} not in the registry (or registry down)"
    for name in AUTH_IMAGE_NAMES:
        if registry_digest(name, AUTH_REGISTRY, auth=True) is None:
            return f"image {image_ref(name, AUTH_REGISTRY)} not in the auth registry"
    return None


def run_testenv(timeout_s: float = 1200) -> str | None:
    """Run scripts/testenv.sh; return None on success, else why it failed."""
    if os.geteuid() != 0:
        return f"{TESTENV_SCRIPT} needs root"
    try:
        done = subprocess.run(
            ["bash", str(TESTENV_SCRIPT)], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"{TESTENV_SCRIPT} did not finish in {timeout_s:.0f} s"
    if done.returncode != 0:
        tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-15:])
        return f"{TESTENV_SCRIPT} failed (exit {done.returncode}):\n{tail}"
    return None


def ensure_env() -> TestImages:
    """Return the test images once the environment is ready; RuntimeError if it cannot be."""
    problem = env_problem()
    if problem is not None:
        failure = run_testenv()
        problem = env_problem()
        if problem is not None:
            raise RuntimeError(f"{problem}; {failure or 'testenv.sh did not fix it'}")
    digests = {n: registry_digest(n) for n in IMAGE_NAMES}
    auth_digests = {n: registry_digest(n, AUTH_REGISTRY, auth=True) for n in AUTH_IMAGE_NAMES}
    return TestImages(
        digests={k: v for k, v in digests.items() if v},
        auth_digests={k: v for k, v in auth_digests.items() if v},
    )


def new_device_id() -> str:
    """Return a device id unique to one test: ``t-<8 hex>``."""
    return f"t-{uuid.uuid4().hex[:8]}"


def make_service(name: str, image: str, **fields: Any) -> Service:
    """Return a Service with the given fields."""
    return Service(name=name, image=image, **fields)


def make_release(services: Iterable[Service], name: str = "app", version: str = "1") -> Release:
    """Return a Release of ``services``."""
    return Release(name=name, version=version, services=list(services))


async def cleanup_device(docker: aiodocker.Docker, device_id: str) -> None:
    """Remove every container, network and volume labelled with ``device_id``."""
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_DEVICE}={device_id}"]
    filters = {"label": labels}
    for c in await docker.containers.list(all=True, filters=json.dumps(filters)):
        try:
            await c.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):
                raise
    for net in await docker.networks.list(filters=filters):
        await _ignore_missing(docker.networks.get(net["Id"]), "delete")
    volumes = (await docker.volumes.list(filters=filters)).get("Volumes") or []
    for vol in volumes:
        await _ignore_missing(docker.volumes.get(vol["Name"]), "delete")


async def _ignore_missing(getter: Any, method: str) -> None:
    try:
        obj = await getter
        await getattr(obj, method)()
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


async def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.2) -> Any:
    """Await ``predicate()`` until it returns a truthy value, which is returned."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(interval_s)


async def docker_exec(container: str, *cmd: str, timeout_s: float = 20.0) -> tuple[int, str]:
    """Run ``cmd`` in a running container (``docker exec``); return exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        container,
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout_s):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")
