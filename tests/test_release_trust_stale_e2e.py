"""A real agent on a release whose manifest expires: the stale flag reaches the hub."""

from __future__ import annotations

from pathlib import Path

import aiodocker
from docker_env import TestImages
from fleetkit import FAST, device_of, hub_agent, running, until
from hubproc import HubProcess
from test_release_trust_e2e import converged_on, create_release, edgectl, hub

__all__ = ["hub"]  # the fixture, used by name
MANIFEST_LIFETIME = "40s"  # long enough to converge first, short enough to wait out


async def test_a_device_left_on_an_expired_manifest_is_flagged_stale_at_the_hub(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker, images: TestImages
) -> None:
    keys = [str(tmp_path / f"op{i}.pem") for i in range(2)]
    for k in keys:
        edgectl(hub, "release", "keygen", "--out", k)
    signers = [a for k in keys for a in ("--key", k)]
    members = [a for k in keys for a in ("--member", k)]
    edgectl(hub, "trust", "root", "init", *signers, "--threshold", "2", *members)
    v1 = create_release(hub, images, "1")
    edgectl(hub, "release", "sign", "app@1", *signers, "--expires", MANIFEST_LIFETIME)
    agent = hub_agent(tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=FAST)
    async with running(docker, agent):
        device = str(await until(lambda: device_of(agent), what="enrollment"))
        await until(lambda: hub.device(device).get("last_contact"), what="a first sync")
        hub.set_target(device, v1)
        await converged_on(hub, device, 1)
        await until(
            lambda: hub.device(device).get("release_trust_stale") is False, what="a fresh pin"
        )
        await until(
            lambda: hub.device(device).get("release_trust_stale") is True,
            90,
            "the stale flag at the hub",
        )
        assert hub.device(device)["applied_revision"] == 1  # it keeps running, flagged
